-- Keyguard: gives a velocity reservation back after a definitive upstream failure.
-- KEYS[1]: the account's slot base. ARGV[1]: the entry (as admit.lua returned it);
-- ARGV[2..]: the buckets it was added to, as suffixes of the base.
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1] .. ARGV[i], ARGV[1])
end
return removed
