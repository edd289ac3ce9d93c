-- Keyguard: changes an existing web UI account, never creating one (a flood of made-up
-- names writes nothing).
-- KEYS[1]: the account's hash, KEYS[2]: its recovery codes.
-- ARGV[1]: "1" ends every session (the session epoch moves on), ARGV[2]: "1" drops the
-- recovery codes, ARGV[3]: how many fields to delete, then those fields, then field,
-- value pairs to set. Returns 1 when changed, 0 when there is no such account.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ndel = tonumber(ARGV[3])
for i = 4, 3 + ndel do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 4 + ndel, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[1], 'epoch', 1) end
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
return 1
