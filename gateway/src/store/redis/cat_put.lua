-- Keyguard: one change to the key catalogue, compare-and-set, announced to every replica.
-- KEYS: docs hash, generation, admin event stream, api key index (one slot: "{cat}").
-- ARGV: key id, expected current doc ("" = must not exist), new doc, api key of a new key
-- (must be unused) or "", actor, action, target, reason, channel.
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then return 'conflict' end
if ARGV[4] ~= '' and redis.call('HSETNX', KEYS[4], ARGV[4], ARGV[1]) == 0 then
  return 'duplicate'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local gen = redis.call('INCR', KEYS[2])
if ARGV[6] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'ts', now, 'actor', ARGV[5],
    'action', ARGV[6], 'target', ARGV[7], 'reason', ARGV[8])
end
redis.call('PUBLISH', ARGV[9], 'key ' .. ARGV[1] .. ' ' .. gen)
return 'ok'
