-- Keyguard: decides one key edit atomically: the key's document changes only if it is
-- still the one the caller checked the rules against (compare-and-set), and a pending
-- change is claimed by deleting it, so of several replicas applying the same due change
-- exactly one succeeds; the others get 'gone' and have nothing written.
-- KEYS: docs hash, generation, admin event stream, pending hash, due index, the key's
-- pending ids (one slot: "{cat}").
-- ARGV: key id, expected doc ("" = leave the document alone), new doc, pending id ("" =
-- none), "1" if that pending change must still exist, channel, then the event (actor,
-- action, reason; action "" = none), then the event recorded only when the pending
-- change was deleted here (actor, action, reason).
local touch = ARGV[2] ~= ''
if touch then
  local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
  if current ~= ARGV[2] then return 'conflict' end
end
local removed = 0
if ARGV[4] ~= '' then
  removed = redis.call('HDEL', KEYS[4], ARGV[4])
  if removed == 0 and ARGV[5] == '1' then return 'gone' end
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('ZREM', KEYS[6], ARGV[4])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function event(actor, action, reason)
  if action ~= '' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'ts', now, 'actor', actor,
      'action', action, 'target', ARGV[1], 'reason', reason)
  end
end
event(ARGV[7], ARGV[8], ARGV[9])
if removed == 1 then event(ARGV[10], ARGV[11], ARGV[12]) end
if touch then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  local gen = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[6], 'key ' .. ARGV[1] .. ' ' .. gen)
end
return 'ok'
