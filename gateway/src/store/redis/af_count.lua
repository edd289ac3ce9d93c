-- Keyguard: how many client networks failed authentication lately, for the bound on the
-- per-network failure records (auth_fail.lua).
-- KEYS[1]: "<prefix>:{af}". ARGV: window_ms, network, cap.
-- Returns 1 when more than `cap` networks failed within this window-long epoch and the
-- one before (a network without a record then counts towards the shared overflow), else 0.
--
-- One HyperLogLog per epoch: 12 KiB at most whatever the flood, an estimate within about
-- 1 %. A failure record expires a window after its network's last failure, so every
-- record alive now belongs to a network counted in this epoch or the previous one: the
-- two counts added are at least the records alive.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, cap = tonumber(ARGV[1]), tonumber(ARGV[3])
local epoch = math.floor(now / window)
local cur = KEYS[1] .. ':hll:' .. string.format('%d', epoch)
if redis.call('PFADD', cur, ARGV[2]) == 1 then
  redis.call('PEXPIRE', cur, 2 * window + 1000)
end
local n = redis.call('PFCOUNT', cur)
  + redis.call('PFCOUNT', KEYS[1] .. ':hll:' .. string.format('%d', epoch - 1))
if n > cap then return 1 end
return 0
