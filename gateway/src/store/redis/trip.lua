-- Keyguard: a canary key was used from this network: block it for every key on every
-- replica. KEYS[1]: the network's slot base. ARGV: until_ms, network.
local until_ms = tonumber(ARGV[1])
local st = KEYS[1] .. ':st'
local current = tonumber(redis.call('HGET', st, 'tripped') or '0')
if until_ms > current then
  redis.call('HSET', st, 'tripped', until_ms)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('PEXPIRE', st, math.max(until_ms - now, redis.call('PTTL', st), 1))
  redis.call('PUBLISH', string.match(KEYS[1], '^[^:]+') .. ':events',
    'tripped ' .. ARGV[2] .. ' ' .. until_ms)
end
return math.max(until_ms, current)
