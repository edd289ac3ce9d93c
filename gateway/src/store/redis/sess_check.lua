-- Keyguard: checks a web session: present, of the stage asked for, of the account's
-- current session epoch, the account enabled, before its expiry and absolute limit.
-- Renews it (the key's expiry too, never past the limit) when asked and past half its
-- lifetime.
-- KEYS[1]: the session, KEYS[2]: the account's hash. ARGV: stage, now (ms), ttl_ms,
-- "1" to renew. Returns {csrf, expires_at, 1 if renewed} or false.
local s = redis.call('HMGET', KEYS[1], 'stage', 'csrf', 'expires_at', 'max_until', 'epoch')
if not s[1] then return false end
local a = redis.call('HMGET', KEYS[2], 'disabled', 'epoch')
if not a[1] or a[1] ~= '0' or (a[2] or '0') ~= s[5] or s[1] ~= ARGV[1] then return false end
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local exp, max = tonumber(s[3]), tonumber(s[4])
if exp <= now or max <= now then return false end
local renewed = 0
if ARGV[4] == '1' and exp - now < ttl / 2 then
  exp = math.min(now + ttl, max)
  local e = string.format('%d', exp)
  redis.call('HSET', KEYS[1], 'expires_at', e)
  redis.call('PEXPIREAT', KEYS[1], e)
  renewed = 1
end
return {s[2], string.format('%d', exp), renewed}
