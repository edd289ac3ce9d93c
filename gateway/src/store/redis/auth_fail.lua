-- Keyguard: counts a failed authentication of a client network; bans it once more than
-- the rule allows fall inside the window, and tells every replica.
-- KEYS[1]: the network's slot base. ARGV: window_ms, max_failures, ban_ms, network,
-- may_create ("1"; "0" when more networks failed than are tracked: af_count.lua).
-- Returns {ban end or 0, 1 if this failure started the ban, 1 if counted here}; with
-- may_create "0" and no record, nothing is written and the caller counts the failure on
-- the shared overflow record instead.
--
-- The failures are one string per network, `:af`: the times (ms) of its newest failures
-- inside the window, comma-separated, expiring with the window. A flood of random keys
-- from ever new addresses writes one key per network, and a network's first failure is a
-- plain integer, which Redis keeps without a string allocation: about 130 bytes per
-- network for one window, where a sorted set and a sequence key for its unique members
-- took about 280. Repeated times need no unique members: each entry is one failure.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, max_failures, ban_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fk = KEYS[1] .. ':af'
local times = {}
local old = redis.call('GET', fk)
if not old and ARGV[5] == '0' then
  local banned = tonumber(redis.call('HGET', KEYS[1] .. ':st', 'banned') or '0')
  if banned > now then return {banned, 0, 0} end
  return {0, 0, 0}
end
if old then
  for at in string.gmatch(old, '%d+') do
    if tonumber(at) > now - window then times[#times + 1] = at end
  end
end
times[#times + 1] = string.format('%d', now)
-- Bounded: only the newest max_failures + 1 can matter.
while #times > max_failures + 1 do table.remove(times, 1) end
local n = #times
redis.call('SET', fk, table.concat(times, ','), 'PX', window)
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
if banned > now then return {banned, new_ban, 1} end
return {0, 0, 1}
