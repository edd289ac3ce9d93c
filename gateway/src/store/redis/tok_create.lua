-- Keyguard: stores a new admin API token (its hash only) and records who made it.
-- KEYS[1]: the token's hash, KEYS[2]: the token index, KEYS[3]: the admin event stream
-- (one slot: "{cat}"). ARGV: id, secret hash, scopes, label, now (ms), actor.
-- Returns 1 when stored, 0 when the id is taken.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'hash', ARGV[2], 'scopes', ARGV[3], 'label', ARGV[4],
  'created_at', ARGV[5], 'revoked', '0')
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'ts', ARGV[5], 'actor', ARGV[6],
  'action', 'token_create', 'target', ARGV[1], 'reason', ARGV[3] .. ' ' .. ARGV[4])
return 1
