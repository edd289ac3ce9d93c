-- Keyguard: counts one failed login step of an existing account, and locks it with
-- exponential backoff once `after` failures came in a row, whichever replica saw them.
-- KEYS[1]: the account's hash. ARGV: now (ms), after, base_ms, max_ms.
-- Returns {failures in a row, locked until (ms) or 0}; {0, 0} for no such account.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local n = redis.call('HINCRBY', KEYS[1], 'failed', 1)
local after = tonumber(ARGV[2])
if n < after then return {n, 0} end
local doublings = math.min(n - after, 20)
local lock = math.min(tonumber(ARGV[3]) * (2 ^ doublings), tonumber(ARGV[4]))
local locked = string.format('%d', tonumber(ARGV[1]) + lock)
redis.call('HSET', KEYS[1], 'locked_until', locked)
return {n, tonumber(locked)}
