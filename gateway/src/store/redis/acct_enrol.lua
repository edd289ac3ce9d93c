-- Keyguard: turns TOTP on with the pending secret the code was checked against, and
-- stores fresh recovery codes; refused when the pending secret changed meanwhile or TOTP
-- is already on (replacing a second factor is for the operator).
-- KEYS[1]: the account's hash, KEYS[2]: its recovery codes.
-- ARGV[1]: the sealed pending secret (base64), ARGV[2]: the code's step, ARGV[3..]: the
-- recovery codes' hashes. Returns 1 when enabled, else 0.
local a = redis.call('HMGET', KEYS[1], 'totp_pending', 'totp_sealed')
if not a[1] or a[1] ~= ARGV[1] or a[2] then return 0 end
redis.call('HSET', KEYS[1], 'totp_sealed', ARGV[1], 'totp_last_step', ARGV[2])
redis.call('HDEL', KEYS[1], 'totp_pending')
redis.call('DEL', KEYS[2])
for i = 3, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
