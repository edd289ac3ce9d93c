-- Keyguard: a canary key was used from this network: a key seen from it recently must
-- wait out new-network probation there again (DESIGN.md §6), as in the embedded store.
-- KEYS[1]: the key's network history hash. ARGV: network, since_ms.
-- The entry stays (so the key's history is not empty and trust on first use cannot
-- apply) with "F" for usable-from; admit.lua starts probation at its next sighting.
-- Returns 1 when the network was forgotten for this key.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local first, usable, last = string.match(v, '^([^,]+),([^,]+),([^,]+)$')
if not first or usable == 'F' or tonumber(last) < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], first .. ',F,' .. last)
return 1
