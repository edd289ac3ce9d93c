-- Keyguard: stores a new web session of an enabled account, tagged with the account's
-- session epoch (a password change, disable or TOTP reset moves it on, ending every
-- session at once), expiring with the session; ends the session it replaces.
-- KEYS[1]: the new session, KEYS[2]: the account's hash, KEYS[3] (optional): the
-- replaced session. ARGV: stage, csrf, created_at, expires_at, max_until, client ip.
-- Returns 1 when stored, 0 when the account is gone or disabled.
local a = redis.call('HMGET', KEYS[2], 'disabled', 'epoch')
if not a[1] or a[1] ~= '0' then return 0 end
if KEYS[3] then redis.call('DEL', KEYS[3]) end
redis.call('HSET', KEYS[1], 'stage', ARGV[1], 'csrf', ARGV[2], 'created_at', ARGV[3],
  'expires_at', ARGV[4], 'max_until', ARGV[5], 'ip', ARGV[6], 'epoch', a[2] or '0')
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
