-- Keyguard: creates a web UI account unless the name is taken.
-- KEYS[1]: the account's hash. ARGV: field, value pairs.
-- Returns 1 when created, 0 when the name exists.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
