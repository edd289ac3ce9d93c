-- Keyguard: queues a widening change of one key for its cool-down, unless the key changed
-- since the caller classified the change (compare-and-set on its document), the same
-- change already waits (its id is returned: asking twice does not restart the wait), or
-- the key has as many pending changes as it may.
-- KEYS: docs hash, pending hash, due index (zset), the key's pending ids (zset), id
-- sequence, admin event stream (one slot: "{cat}").
-- ARGV: key id, expected doc, kind, value, pending record JSON, effective at (ms), cap,
-- actor, event text after "#<id> ".
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then return {'conflict'} end
local ids = redis.call('ZRANGE', KEYS[4], 0, -1)
local live = 0
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    live = live + 1
    local p = cjson.decode(raw)
    if p.kind == ARGV[3] and p.value == ARGV[4] then
      return {'exists', id, tostring(redis.call('ZSCORE', KEYS[3], id) or '0')}
    end
  else
    redis.call('ZREM', KEYS[4], id)
  end
end
if live >= tonumber(ARGV[7]) then return {'full'} end
local id = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[2], id, ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[6], id)
redis.call('ZADD', KEYS[4], id, id)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', '100000', '*', 'ts', now, 'actor', ARGV[8],
  'action', 'widen_requested', 'target', ARGV[1], 'reason', '#' .. id .. ' ' .. ARGV[9])
return {'ok', tostring(id)}
