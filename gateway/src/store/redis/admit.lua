-- Keyguard: every check-and-update of one authenticated request, atomically.
--
-- KEYS[1]: the account's slot base, "<prefix>:{a:<account>}" (keys, rates, nonces,
--          velocity and history of the account's keys all share its hash tag)
-- KEYS[2]: the client network's slot base, "<prefix>:{n:<net>}" (bans, blocks, shared-IP
--          sets, the network's rate); in cluster mode the network part runs as its own
--          call to its own node (ARGV[1] says which parts run here).
-- Derived names append a suffix to a base, so they hash to the base's slot. An account's
-- rate cells are one hash, "<A>:rt", field "<kind>:<key id>" (empty key id for account
-- scope): one HMGET and one HSET for all of a request's rates.
--
-- ARGV comes split into single values (admit.rs encodes it): this script runs once per
-- request and Lua 5.1 string splitting costs more than the Redis commands it runs.
--  1 parts: "both" | "acct" | "net"      2 key id        3 account       4 network
--  5 authorized: "1" run rates, nonce and velocity; "0" record sightings only
--  6 moves funds: "1" | "0"
--  7 auth-failure rule present: shadow "0" | "1", or "-"
--  8 failure overflow banned (auth_fail.lua: more networks failed than are tracked, and
--    the overflow they share is banned): the auth-failure rule's shadow, or "-"
--  9 sightings fresh: "1" when this replica had this key's sighting from this network
--    recorded within the last second (or 1/20 of the shorter window): the shared-IP and
--    many-IPs sets are left alone (a block or suspension they caused is already stored)
-- Then one section after another, each a single "-" when the rule is off or does not
-- apply, else its values:
--  shared-IP:  window, max_keys, max_accounts, block_ms, shadow
--  network rate: interval_us, burst
--  many-IPs:   window, max_ips, shadow
--  dormant:    after_ms, first_use_within_ms, created_at, stored_last_used | "-", shadow
--  new-IP:     probation_ms, trust_first, max_per_key, shadow
--  key rates:  count, then per rate: field ("<kind>:<key id or empty>"), interval_us, burst
--  replay:     "n", padded nonce | "s", fingerprint hex, expires_ms
--  velocity:   kind, asset, amount | "-", longest_ms, entry id, bucket count, then per
--              bucket: name suffix, rule count, then per rule: window, max_amount | "-",
--              max_count | "-"
--    (the entry id comes from the caller, so it can give back an entry whose reply it lost)
--
-- Returns {status, would_deny, suspend, learned, detail, reservation}:
--  status: "ok" or a deny code; would_deny: a shadow rule's code or "";
--  suspend: "1" when the many-IPs rule suspends the key; learned: "first,usable" when a
--  network was learned; detail: "kind,wait_ms" for rate_limited; reservation: the
--  velocity entry's member or "".

local call, tonumber, max, min, ceil = redis.call, tonumber, math.max, math.min, math.ceil
local t = call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
-- Converted once: a number's conversion to text is among the dearest things Lua 5.1 does.
local now_s = string.format('%d', now)

local a = ARGV
local parts, key_id, account, net = a[1], a[2], a[3], a[4]
local authorized, moves = a[5] == '1', a[6] == '1'
local A, N = KEYS[1], KEYS[2]
local do_net = parts ~= 'acct'
local do_acct = parts ~= 'net'

-- The sections' positions.
local fresh = a[9] == '1'
local i = 10
local function section(n)
  local at = i
  if a[i] == '-' then i = i + 1; return nil end
  i = i + n
  return at
end
local s_shared = section(5)
local s_iprate = section(2)
local s_many = section(3)
local s_dormant = section(5)
local s_newip = section(4)
local s_rates = nil
if a[i] == '-' then i = i + 1 else s_rates = i; i = i + 1 + 3 * tonumber(a[i]) end
local s_replay = nil
if a[i] == '-' then i = i + 1 else s_replay = i; i = i + (a[i] == 'n' and 2 or 3) end
local s_vel = a[i] ~= '-' and i or nil

local would = ''
local function verdict(code, shadow)
  if shadow == '1' then
    if would == '' then would = code end
    return nil
  end
  return code
end
local function done(status, learned, suspend, detail, reservation)
  return {status, would, suspend or '0', learned or '', detail or '', reservation or ''}
end

-- Records `member` in the window set `zkey` and counts the members seen within `window`.
-- Members last seen before the window are trimmed only when the raw count is over `limit`
-- (stale members can only raise the count, so a raw count within `max` is a true one).
-- The TTL is refreshed when it has fallen more than a second (half the window, if that is
-- shorter) below `window`, not on every sighting: the set may then expire up to a second
-- early, forgetting a sighting that was a second short of leaving the window anyway.
local function sighting(zkey, member, window, limit)
  call('ZADD', zkey, now_s, member)
  local n = call('ZCARD', zkey)
  if n > limit then
    call('ZREMRANGEBYSCORE', zkey, '-inf', now - window)
    n = call('ZCARD', zkey)
  end
  local ttl = call('PTTL', zkey)
  if ttl < 0 or ttl < window - min(1000, window / 2) then
    call('PEXPIRE', zkey, window)
  end
  return n
end

-- Fixed-width digit strings (see admit.rs: 48 digits, 18 of them after the point).
local function dadd(x, y)
  local out, carry = {}, 0
  for j = #x, 1, -1 do
    local s = x:byte(j) + y:byte(j) - 96 + carry
    if s >= 10 then s, carry = s - 10, 1 else carry = 0 end
    out[j] = string.char(s + 48)
  end
  if carry == 1 then return nil end
  return table.concat(out)
end

local learned, suspend = '', '0'
-- How long rate state outlives its last request: a key created and expired per request
-- (what a generous rate gives: its state lasts a millisecond) costs Redis more than the
-- check itself; a minute of a few dozen bytes per active account or network does not.
local RATE_HOLD_MS = 60000

if do_net then
  -- Bans and blocks in force (a canary's block whatever the other rules say).
  local st = call('HMGET', N .. ':st', 'banned', 'blocked', 'tripped')
  local banned, blocked, tripped = tonumber(st[1] or '0'), tonumber(st[2] or '0'),
    tonumber(st[3] or '0')
  if tripped > now then return done('ip_blocked') end
  if banned > now and a[7] ~= '-' then
    local c = verdict('ip_banned', a[7]); if c then return done(c) end
  end
  if blocked > now and s_shared then
    local c = verdict('ip_blocked', a[s_shared + 4]); if c then return done(c) end
  end
  -- While a flood shares the failure overflow's ban, a network with no state of its own
  -- (no failures, no recent signed request, no rate cell) is part of the flood as far
  -- as anyone can tell: refused, as the embedded store refuses its untracked networks.
  if a[8] ~= '-' and call('EXISTS', N .. ':af', N .. ':pk', N .. ':rate') == 0 then
    local c = verdict('ip_banned', a[8]); if c then return done(c) end
  end
  if s_iprate and authorized then
    local rkey = N .. ':rate'
    local interval = tonumber(a[s_iprate])
    local tat = tonumber(call('GET', rkey) or '0')
    local new_tat = max(tat, now_us) + interval
    local excess = new_tat - now_us - interval * tonumber(a[s_iprate + 1])
    if excess > 0 then return done('rate_limited', nil, nil, 'ip,' .. ceil(excess / 1000)) end
    -- Held RATE_HOLD_MS like the account's, so a busy network keeps one key.
    call('SET', rkey, string.format('%d', new_tat), 'PX',
      max(ceil((new_tat - now_us) / 1000) + 1, RATE_HOLD_MS))
  end
  if s_shared and not fresh then
    local window, max_keys, max_accts = tonumber(a[s_shared]), tonumber(a[s_shared + 1]),
      tonumber(a[s_shared + 2])
    local keys_n = sighting(N .. ':pk', key_id, window, max_keys)
    local accts_n = sighting(N .. ':pa', account, window, max_accts)
    if keys_n > max_keys or accts_n > max_accts then
      local block_ms = tonumber(a[s_shared + 3])
      local until_ms = now + block_ms
      if until_ms > blocked then
        local sk = N .. ':st'
        call('HSET', sk, 'blocked', until_ms)
        call('PEXPIRE', sk, max(block_ms, call('PTTL', sk)))
        call('PUBLISH', string.match(N, '^[^:]+') .. ':events',
          'blocked ' .. net .. ' ' .. until_ms)
      end
      blocked = until_ms
    end
    if blocked > now then
      local c = verdict('ip_blocked', a[s_shared + 4]); if c then return done(c) end
    end
  end
end

if not do_acct then return done('ok') end

-- One key from many networks.
if s_many and not fresh then
  local window, max_ips = tonumber(a[s_many]), tonumber(a[s_many + 1])
  local sk = A .. ':seen:' .. key_id
  local n = sighting(sk, net, window, max_ips)
  -- Bounded: only the newest max_ips + 1 networks can matter.
  if n > max_ips + 1 then call('ZREMRANGEBYRANK', sk, 0, n - max_ips - 2) end
  if n > max_ips then
    local c = verdict('too_many_ips', a[s_many + 2])
    if c then return done(c, nil, '1') end
  end
end

-- Dormancy, from the last use any replica recorded.
local touch = true
local lu_key = A .. ':lu:' .. key_id
local last_used = tonumber(call('GET', lu_key) or '-1')
if s_dormant then
  local after, first_within, created = tonumber(a[s_dormant]), tonumber(a[s_dormant + 1]),
    tonumber(a[s_dormant + 2])
  if a[s_dormant + 3] ~= '-' then last_used = max(last_used, tonumber(a[s_dormant + 3])) end
  local dormant
  if last_used >= 0 then
    dormant = now >= max(last_used, created) + after
  else
    dormant = now >= created + min(first_within, after)
  end
  if dormant then
    if moves then
      local c = verdict('key_dormant', a[s_dormant + 4]); if c then return done(c) end
    else
      touch = false
    end
  end
end

-- New-network probation, with trust on first use.
if s_newip then
  local probation, trust_first, max_per_key = tonumber(a[s_newip]), a[s_newip + 1] == '1',
    tonumber(a[s_newip + 2])
  local hk = A .. ':hist:' .. key_id
  local known = call('HGET', hk, net)
  local usable
  if known then
    local first, from, last = string.match(known, '^([^,]+),([^,]+),([^,]+)$')
    if from == 'F' then
      -- Forgotten after a canary (forget.lua): seen "for the first time" again, with the
      -- key's other networks still known, so on probation.
      usable = now + probation
      learned = now_s .. ',' .. string.format('%d', usable)
      call('HSET', hk, net, learned .. ',' .. now_s)
    else
      usable = tonumber(from)
      -- The last sighting feeds only eviction and forget.lua's "seen since": a second's
      -- precision saves a write per request.
      if now - tonumber(last) >= 1000 then call('HSET', hk, net, first .. ',' .. from .. ',' .. now_s) end
    end
  else
    if trust_first and call('HLEN', hk) == 0 then usable = now else usable = now + probation end
    learned = now_s .. ',' .. string.format('%d', usable)
    call('HSET', hk, net, learned .. ',' .. now_s)
    -- Bounded per key: the network seen least recently goes first.
    if call('HLEN', hk) > max_per_key then
      local all = call('HGETALL', hk)
      local oldest, oldest_at = nil, nil
      for j = 1, #all, 2 do
        local at = tonumber(string.match(all[j + 1], '([^,]+)$'))
        if all[j] ~= net and (not oldest_at or at < oldest_at) then oldest, oldest_at = all[j], at end
      end
      if oldest then call('HDEL', hk, oldest) end
    end
  end
  if moves and now < usable then
    local c = verdict('new_ip_probation', a[s_newip + 3])
    if c then return done(c, learned) end
  end
end

if not authorized then return done('ok', learned) end

-- Per-key, per-account and per-action rates: all checked before any is spent. The
-- account's theoretical arrival times share one hash (one read, one write), kept at least
-- RATE_HOLD_MS so a busy account does not create and expire a key per request.
if s_rates then
  local rk = A .. ':rt'
  local n = tonumber(a[s_rates])
  local fields = {}
  for j = 1, n do fields[j] = a[s_rates + 3 * j - 2] end
  local tats = call('HMGET', rk, unpack(fields))
  local args, latest = {}, now_us
  for j = 1, n do
    local at = s_rates + 3 * j - 2
    local interval = tonumber(a[at + 1])
    local new_tat = max(tonumber(tats[j]) or 0, now_us) + interval
    local excess = new_tat - now_us - interval * tonumber(a[at + 2])
    if excess > 0 then
      return done('rate_limited', learned, nil,
        string.match(fields[j], '^[^:]*') .. ',' .. ceil(excess / 1000))
    end
    args[2 * j - 1] = fields[j]
    args[2 * j] = string.format('%d', new_tat)
    if new_tat > latest then latest = new_tat end
  end
  call('HSET', rk, unpack(args))
  -- Refreshed only when it would run out before the latest arrival time, or within
  -- half the hold: one PEXPIRE every RATE_HOLD_MS / 2 for a busy account.
  local need = ceil((latest - now_us) / 1000) + 1
  if call('PTTL', rk) < max(need, RATE_HOLD_MS / 2) then
    call('PEXPIRE', rk, max(need, RATE_HOLD_MS))
  end
end

-- Replay: the nonce strictly increases; a signature is accepted once inside its window.
if s_replay then
  if a[s_replay] == 'n' then
    local nk = A .. ':nonce:' .. key_id
    local last = call('GET', nk)
    if last and a[s_replay + 1] <= last then return done('invalid_nonce', learned) end
    call('SET', nk, a[s_replay + 1])
  else
    local ttl = max(tonumber(a[s_replay + 2]) - now, 1)
    local ok = call('SET', A .. ':sig:' .. key_id .. ':' .. a[s_replay + 1], '1', 'PX', ttl, 'NX')
    if not ok then return done('replay', learned) end
  end
end

-- Velocity: every applicable rule of the key and of the account, then one entry in each.
local reservation = ''
if s_vel then
  local v = s_vel
  local kind, amount, longest = a[v], a[v + 2], tonumber(a[v + 3])
  local limited = kind .. '_limit'
  local buckets = {}
  local j = v + 6
  for _ = 1, tonumber(a[v + 5]) do
    local bk = A .. a[j]
    buckets[#buckets + 1] = bk
    call('ZREMRANGEBYSCORE', bk, '-inf', now - longest)
    local rules = tonumber(a[j + 1])
    j = j + 2
    for _ = 1, rules do
      local window, max_amount, max_count = tonumber(a[j]), a[j + 1], a[j + 2]
      j = j + 3
      local entries = call('ZRANGEBYSCORE', bk, '(' .. (now - window), '+inf')
      if max_count ~= '-' and #entries >= tonumber(max_count) then
        return done(limited, learned)
      end
      if max_amount ~= '-' then
        if amount == '-' then return done('invalid_field', learned) end
        local sum = amount
        for _, e in ipairs(entries) do
          sum = dadd(sum, string.sub(e, -#amount))
          if not sum then return done(limited, learned) end
        end
        if sum > max_amount then return done(limited, learned) end
      end
    end
  end
  reservation = a[v + 4] .. ':' .. (amount == '-' and string.rep('0', 48) or amount)
  for _, bk in ipairs(buckets) do
    call('ZADD', bk, now_s, reservation)
    call('PEXPIRE', bk, longest)
  end
end

if touch and (last_used < 0 or now - last_used >= 1000) then
  call('SET', lu_key, now_s)
end
return done('ok', learned, nil, nil, reservation)
