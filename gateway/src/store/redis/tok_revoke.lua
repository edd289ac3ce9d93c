-- Keyguard: revokes an active admin API token and records who did, in one step.
-- KEYS[1]: the token's hash, KEYS[2]: the admin event stream (one slot: "{cat}").
-- ARGV: now (ms), actor, token id. Returns 1 when revoked, 0 when none was active.
if redis.call('HGET', KEYS[1], 'revoked') ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'revoked', '1')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', 'ts', ARGV[1], 'actor', ARGV[2],
  'action', 'token_revoke', 'target', ARGV[3], 'reason', 'revoked')
return 1
