-- Keyguard: counts a failed authentication of a client network; bans it once more than
-- the rule allows fall inside the window, and tells every replica.
-- KEYS[1]: the network's slot base. ARGV: window_ms, max_failures, ban_ms, network.
-- Returns {ban end or 0, 1 if this failure started the ban}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, max_failures, ban_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fk = KEYS[1] .. ':fail'
local seq = redis.call('INCR', KEYS[1] .. ':fseq')
redis.call('PEXPIRE', KEYS[1] .. ':fseq', window)
redis.call('ZADD', fk, now, seq)
redis.call('ZREMRANGEBYSCORE', fk, '-inf', now - window)
local n = redis.call('ZCARD', fk)
-- Bounded: only the newest max_failures + 1 can matter.
if n > max_failures + 1 then redis.call('ZREMRANGEBYRANK', fk, 0, n - max_failures - 2) end
redis.call('PEXPIRE', fk, window)
local banned = tonumber(redis.call('HGET', KEYS[1] .. ':st', 'banned') or '0')
local new_ban = 0
if n > max_failures and banned <= now then
  new_ban = 1
  banned = now + ban_ms
  redis.call('HSET', KEYS[1] .. ':st', 'banned', banned)
  redis.call('PEXPIRE', KEYS[1] .. ':st', math.max(ban_ms, redis.call('PTTL', KEYS[1] .. ':st')))
  redis.call('PUBLISH', string.match(KEYS[1], '^[^:]+') .. ':events',
    'banned ' .. ARGV[4] .. ' ' .. banned)
end
-- {ban end or 0, 1 when this failure started the ban}
if banned > now then return {banned, new_ban} end
return {0, 0}
