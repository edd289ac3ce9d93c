-- Keyguard: freezes (ARGV[2] = "1") or unfreezes withdrawals for one scope, announced to
-- every replica. KEYS: freezes hash, generation, admin event stream (one slot).
-- ARGV: scope:target, frozen, record JSON, actor, reason, channel.
local changed
if ARGV[2] == '1' then
  changed = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[1])
end
if changed == 0 then return 0 end
local gen = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'ts', now, 'actor', ARGV[4],
  'action', ARGV[2] == '1' and 'freeze' or 'unfreeze', 'target', ARGV[1], 'reason', ARGV[5])
redis.call('PUBLISH', ARGV[6], 'freeze ' .. ARGV[1] .. ' ' .. gen)
return 1
