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
-- ARGV (each "-" when the rule is off or does not apply; see admit.rs for the encoder):
--  1 parts: "both" | "acct" | "net"      2 key id        3 account       4 network
--  5 authorized: "1" run rates, nonce and velocity; "0" record sightings only
--  6 moves funds: "1" | "0"
--  7 auth-failure rule present: shadow "0" | "1"
--  8 shared-IP rule: "window,max_keys,max_accounts,block_ms,shadow"
--  9 network rate: "interval_us,burst"
-- 10 many-IPs rule: "window,max_ips,shadow"
-- 11 dormant rule: "after_ms,first_use_within_ms,created_at,stored_last_used|-,shadow"
-- 12 new-IP rule: "probation_ms,trust_first,max_per_key,shadow"
-- 13 key rates: "kind,k|a,interval_us,burst;..."
-- 14 replay: "n,<padded nonce>" | "s,<fingerprint hex>,<expires ms>"
-- 15 velocity: "kind,asset,amount|-,longest_ms,entry_id" then ";subject,window,max_amount|-,max_count|-"...
--    (the entry id comes from the caller, so it can give back an entry whose reply it lost)
-- 16 failure overflow banned (auth_fail.lua: more networks failed than are tracked, and
--    the overflow they share is banned): the auth-failure rule's shadow "0" | "1"
--
-- Returns {status, would_deny, suspend, learned, detail, reservation}:
--  status: "ok" or a deny code; would_deny: a shadow rule's code or "";
--  suspend: "1" when the many-IPs rule suspends the key; learned: "first,usable" when a
--  network was learned; detail: "kind,wait_ms" for rate_limited; reservation: the
--  velocity entry's member or "".

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)

local parts, key_id, account, net = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local authorized, moves = ARGV[5] == '1', ARGV[6] == '1'
local A, N = KEYS[1], KEYS[2]
local do_net = parts ~= 'acct'
local do_acct = parts ~= 'net'

local function split(s, sep)
  local out = {}
  for field in string.gmatch(s, '([^' .. sep .. ']+)') do out[#out + 1] = field end
  return out
end

local would = ''
local function verdict(code, shadow)
  if shadow == '1' then
    if would == '' then would = code end
    return nil
  end
  return code
end
local function done(status, extra)
  extra = extra or {}
  return {status, would, extra.suspend or '0', extra.learned or '', extra.detail or '',
          extra.reservation or ''}
end

-- Records `member` in the window set `zkey` and counts the members seen within `window`.
-- Members last seen before the window are trimmed only when the raw count is over `max`
-- (stale members can only raise the count, so a raw count within `max` is a true one).
-- The TTL is refreshed when it has fallen more than a second (half the window, if that is
-- shorter) below `window`, not on every
-- sighting: the set may then expire up to a second early, forgetting a sighting that
-- was a second short of leaving the window anyway.
local function sighting(zkey, member, window, max)
  redis.call('ZADD', zkey, now, member)
  local n = redis.call('ZCARD', zkey)
  if n > max then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - window)
    n = redis.call('ZCARD', zkey)
  end
  local ttl = redis.call('PTTL', zkey)
  if ttl < 0 or ttl < window - math.min(1000, window / 2) then
    redis.call('PEXPIRE', zkey, window)
  end
  return n
end

-- GCRA: the new theoretical arrival time if a request conforms now, else nil and the wait.
local function gcra(rkey, interval, burst)
  local tat = tonumber(redis.call('GET', rkey) or '0')
  local new_tat = math.max(tat, now_us) + interval
  local excess = new_tat - now_us - interval * burst
  if excess > 0 then return nil, math.ceil(excess / 1000) end
  return new_tat, 0
end

-- Fixed-width digit strings (see admit.rs: 48 digits, 18 of them after the point).
local function dadd(a, b)
  local out, carry = {}, 0
  for i = #a, 1, -1 do
    local s = a:byte(i) + b:byte(i) - 96 + carry
    if s >= 10 then s, carry = s - 10, 1 else carry = 0 end
    out[i] = string.char(s + 48)
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
  local st = redis.call('HMGET', N .. ':st', 'banned', 'blocked', 'tripped')
  local banned, blocked, tripped = tonumber(st[1] or '0'), tonumber(st[2] or '0'),
    tonumber(st[3] or '0')
  if tripped > now then return done('ip_blocked') end
  local shared = ARGV[8] ~= '-' and split(ARGV[8], ',') or nil
  if banned > now and ARGV[7] ~= '-' then
    local c = verdict('ip_banned', ARGV[7]); if c then return done(c) end
  end
  if blocked > now and shared then
    local c = verdict('ip_blocked', shared[5]); if c then return done(c) end
  end
  -- While a flood shares the failure overflow's ban, a network with no state of its own
  -- (no failures, no recent signed request, no rate cell) is part of the flood as far
  -- as anyone can tell: refused, as the embedded store refuses its untracked networks.
  if ARGV[16] ~= '-' and redis.call('EXISTS', N .. ':af', N .. ':pk', N .. ':rate') == 0 then
    local c = verdict('ip_banned', ARGV[16]); if c then return done(c) end
  end
  if ARGV[9] ~= '-' and authorized then
    local r = split(ARGV[9], ',')
    local tat, wait = gcra(N .. ':rate', tonumber(r[1]), tonumber(r[2]))
    if not tat then return done('rate_limited', {detail = 'ip,' .. wait}) end
    -- Held RATE_HOLD_MS like the account's, so a busy network keeps one key.
    redis.call('SET', N .. ':rate', string.format('%d', tat), 'PX',
      math.max(math.ceil((tat - now_us) / 1000) + 1, RATE_HOLD_MS))
  end
  if shared then
    local window, max_keys, max_accts, block_ms = tonumber(shared[1]), tonumber(shared[2]),
      tonumber(shared[3]), tonumber(shared[4])
    local pk, pa = N .. ':pk', N .. ':pa'
    local keys_n = sighting(pk, key_id, window, max_keys)
    local accts_n = sighting(pa, account, window, max_accts)
    if keys_n > max_keys or accts_n > max_accts then
      local until_ms = now + block_ms
      if until_ms > blocked then
        redis.call('HSET', N .. ':st', 'blocked', until_ms)
        redis.call('PEXPIRE', N .. ':st', math.max(block_ms, redis.call('PTTL', N .. ':st')))
        redis.call('PUBLISH', string.match(N, '^[^:]+') .. ':events',
          'blocked ' .. net .. ' ' .. until_ms)
      end
      blocked = until_ms
    end
    if blocked > now then
      local c = verdict('ip_blocked', shared[5]); if c then return done(c) end
    end
  end
end

if not do_acct then return done('ok') end

-- One key from many networks.
if ARGV[10] ~= '-' then
  local r = split(ARGV[10], ',')
  local window, max_ips = tonumber(r[1]), tonumber(r[2])
  local sk = A .. ':seen:' .. key_id
  local n = sighting(sk, net, window, max_ips)
  -- Bounded: only the newest max_ips + 1 networks can matter.
  if n > max_ips + 1 then redis.call('ZREMRANGEBYRANK', sk, 0, n - max_ips - 2) end
  if n > max_ips then
    local c = verdict('too_many_ips', r[3])
    if c then return done(c, {suspend = '1'}) end
  end
end

-- Dormancy, from the last use any replica recorded.
local touch = true
local lu_key = A .. ':lu:' .. key_id
local last_used = tonumber(redis.call('GET', lu_key) or '-1')
if ARGV[11] ~= '-' then
  local r = split(ARGV[11], ',')
  local after, first_within, created = tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
  if r[4] ~= '-' then last_used = math.max(last_used, tonumber(r[4])) end
  local dormant
  if last_used >= 0 then
    dormant = now >= math.max(last_used, created) + after
  else
    dormant = now >= created + math.min(first_within, after)
  end
  if dormant then
    if moves then
      local c = verdict('key_dormant', r[5]); if c then return done(c) end
    else
      touch = false
    end
  end
end

-- New-network probation, with trust on first use.
if ARGV[12] ~= '-' then
  local r = split(ARGV[12], ',')
  local probation, trust_first, max_per_key = tonumber(r[1]), r[2] == '1', tonumber(r[3])
  local hk = A .. ':hist:' .. key_id
  local known = redis.call('HGET', hk, net)
  local usable
  if known then
    local f = split(known, ',')
    if f[2] == 'F' then
      -- Forgotten after a canary (forget.lua): seen "for the first time" again, with the
      -- key's other networks still known, so on probation.
      usable = now + probation
      redis.call('HSET', hk, net, now .. ',' .. usable .. ',' .. now)
      learned = now .. ',' .. usable
    else
      usable = tonumber(f[2])
      redis.call('HSET', hk, net, f[1] .. ',' .. f[2] .. ',' .. now)
    end
  else
    if trust_first and redis.call('HLEN', hk) == 0 then usable = now else usable = now + probation end
    redis.call('HSET', hk, net, now .. ',' .. usable .. ',' .. now)
    learned = now .. ',' .. usable
    -- Bounded per key: the network seen least recently goes first.
    if redis.call('HLEN', hk) > max_per_key then
      local all = redis.call('HGETALL', hk)
      local oldest, oldest_at = nil, nil
      for i = 1, #all, 2 do
        local at = tonumber(split(all[i + 1], ',')[3])
        if all[i] ~= net and (not oldest_at or at < oldest_at) then oldest, oldest_at = all[i], at end
      end
      if oldest then redis.call('HDEL', hk, oldest) end
    end
  end
  if moves and now < usable then
    local c = verdict('new_ip_probation', r[4])
    if c then return done(c, {learned = learned}) end
  end
end

if not authorized then return done('ok', {learned = learned}) end

-- Per-key, per-account and per-action rates: all checked before any is spent. The
-- account's theoretical arrival times share one hash (one read, one write), kept at least
-- RATE_HOLD_MS so a busy account does not create and expire a key per request.
if ARGV[13] ~= '-' then
  local rk = A .. ':rt'
  local fields, rates = {}, {}
  for spec in string.gmatch(ARGV[13], '[^;]+') do
    local kind, scope, interval, burst = string.match(spec, '^([^,]+),([ka]),(%d+),(%d+)$')
    fields[#fields + 1] = kind .. ':' .. (scope == 'a' and '' or key_id)
    rates[#rates + 1] = {kind, tonumber(interval), tonumber(burst)}
  end
  local tats = redis.call('HMGET', rk, unpack(fields))
  local args, latest = {}, now_us
  for i, r in ipairs(rates) do
    local interval = r[2]
    local new_tat = math.max(tonumber(tats[i]) or 0, now_us) + interval
    local excess = new_tat - now_us - interval * r[3]
    if excess > 0 then
      return done('rate_limited', {learned = learned, detail = r[1] .. ',' .. math.ceil(excess / 1000)})
    end
    args[#args + 1] = fields[i]
    args[#args + 1] = string.format('%d', new_tat)
    if new_tat > latest then latest = new_tat end
  end
  redis.call('HSET', rk, unpack(args))
  -- Refreshed only when it would run out before the latest arrival time, or within
  -- half the hold: one PEXPIRE every RATE_HOLD_MS / 2 for a busy account.
  local need = math.ceil((latest - now_us) / 1000) + 1
  local hold = math.max(need, RATE_HOLD_MS)
  if redis.call('PTTL', rk) < math.max(need, RATE_HOLD_MS / 2) then
    redis.call('PEXPIRE', rk, hold)
  end
end

-- Replay: the nonce strictly increases; a signature is accepted once inside its window.
if ARGV[14] ~= '-' then
  local r = split(ARGV[14], ',')
  if r[1] == 'n' then
    local nk = A .. ':nonce:' .. key_id
    local last = redis.call('GET', nk)
    if last and r[2] <= last then return done('invalid_nonce', {learned = learned}) end
    redis.call('SET', nk, r[2])
  else
    local ttl = math.max(tonumber(r[3]) - now, 1)
    local ok = redis.call('SET', A .. ':sig:' .. key_id .. ':' .. r[2], '1', 'PX', ttl, 'NX')
    if not ok then return done('replay', {learned = learned}) end
  end
end

-- Velocity: every applicable rule of the key and of the account, then one entry in each.
local reservation = ''
if ARGV[15] ~= '-' then
  local specs = split(ARGV[15], ';')
  local head = split(specs[1], ',')
  local kind, asset, amount, longest = head[1], head[2], head[3], tonumber(head[4])
  local buckets = {}
  for i = 2, #specs do
    local r = split(specs[i], ',')
    local subject, window = r[1], tonumber(r[2])
    local bk = A .. ':vel:' .. kind .. ':' .. asset .. ':' .. (subject == 'a' and '' or key_id)
    if not buckets[bk] then
      redis.call('ZREMRANGEBYSCORE', bk, '-inf', now - longest)
      buckets[bk] = true
    end
    local entries = redis.call('ZRANGEBYSCORE', bk, '(' .. (now - window), '+inf')
    local count = #entries
    if r[4] ~= '-' and count >= tonumber(r[4]) then
      return done(kind .. '_limit', {learned = learned})
    end
    if r[3] ~= '-' then
      if amount == '-' then return done('invalid_field', {learned = learned}) end
      local sum = amount
      for _, e in ipairs(entries) do
        sum = dadd(sum, string.sub(e, -#amount))
        if not sum then return done(kind .. '_limit', {learned = learned}) end
      end
      if sum > r[3] then return done(kind .. '_limit', {learned = learned}) end
    end
  end
  reservation = head[5] .. ':' .. (amount == '-' and string.rep('0', 48) or amount)
  for bk, _ in pairs(buckets) do
    redis.call('ZADD', bk, now, reservation)
    redis.call('PEXPIRE', bk, longest)
  end
end

if touch and (last_used < 0 or now - last_used >= 1000) then
  redis.call('SET', lu_key, now)
end
return done('ok', {learned = learned, reservation = reservation})
