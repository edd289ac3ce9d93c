-- Keyguard: accepts a TOTP code's step once across every replica: only a step newer than
-- the last accepted one, on an enabled account that is not locked.
-- KEYS[1]: the account's hash. ARGV: step, now (ms).
-- Returns 1 when accepted (the step is stored, the failure count reset), else 0.
local a = redis.call('HMGET', KEYS[1], 'disabled', 'locked_until', 'totp_last_step')
if not a[1] or a[1] ~= '0' then return 0 end
if tonumber(a[2] or '0') > tonumber(ARGV[2]) then return 0 end
if tonumber(a[3] or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'totp_last_step', ARGV[1], 'failed', '0')
return 1
