#!lua name=ssehub
-- The `ssehub` Redis Function library (protocol 7), loaded with FUNCTION LOAD REPLACE by the
-- writer on every connect. It owns id assignment: every id is issued here, atomically, as
-- max(last + 1, Redis TIME in µs, the publishing node's clock in µs), so ids are the same on
-- every node, still >= Unix µs, and never go backwards when a failover lands on a server
-- whose clock is behind (one right clock among Redis's and the nodes' is enough).
-- Every entry carries the data set's epoch (field `x`); a publish that names another epoch
-- than the stored one is refused (`epoch changed`): the data set was replaced under it.
-- Key layout and the calling convention are in src/cluster/keys.rs; nothing else writes
-- these keys.
--
-- Numbers: Redis Lua numbers are doubles, exact for integers up to 2^53 (about 9e15);
-- ids are about 1.8e15, so arithmetic on them is exact. They are always written with
-- '%d' (a C long here: 64 bits; never tostring, which may choose an exponent form).

local function id_string(n)
  return string.format('%d', n)
end

-- The <ms> part of a stream id '<ms>-<seq>' (ours are always '<id>-0'); 0 if none.
local function id_of_stream_id(stream_id)
  local ms = string.match(stream_id, '^(%d+)%-%d+$')
  return tonumber(ms) or 0
end

-- The id of the stream's last entry, 0 when it holds none.
local function stream_tail(stream)
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #top == 0 then
    return 0
  end
  return id_of_stream_id(top[1][1])
end

local function stored_number(key)
  return tonumber(redis.call('GET', key) or '0') or 0
end

-- Marks and keys expire with the history they protect (history.max_age).
local function remember(key, value, max_age_ms)
  if max_age_ms > 0 then
    redis.call('SET', key, value, 'PX', id_string(max_age_ms))
  else
    redis.call('SET', key, value)
  end
end

-- Whether the flat layout below adds up (checked before anything is written). It walks
-- the events the way publish_batch does, without building anything.
local function layout_ok(keys, args)
  local a, k = 5, 3
  while a <= #args do
    local n = tonumber(args[a + 4])
    if not n or a + 4 + n > #args then
      return false
    end
    if args[a + 1] == '1' then
      k = k + 1
    end
    a = a + 5 + n
    k = k + n
  end
  return k == #keys
end

-- KEYS: stream, last, epoch, then for each event in order: its idempotency key (only when
--       it has one), its final:<topic> keys (one per topic).
-- ARGV: max_age_ms, max_stream_events, node_now_us, epoch, then for each event in order:
--       is_final (0/1), has_key (0/1), event ('' = none), data, n (topic count), n topics.
-- Returns an error reply for the whole call ('epoch changed': nothing stored), or an array
-- with one element per event, in order: its id as a string, or an error reply refusing
-- that event alone ('topic <name> is final', 'key used for a different event').
--
-- The epoch, `last`, the stream's tail and TIME are read once per call, each topic's final
-- mark once per call (and remembered when an event of the call makes it final), the stream trimmed
-- once (MINID ~ on the first XADD, XTRIM MAXLEN ~ after the last); each event's id is
-- max(previous id + 1, TIME, node_now_us), so the ids of one call are increasing and each
-- entry's `p` names the entry before it. Atomicity: a Lua error aborts a script but keeps
-- what it already wrote, so nothing here may raise once the first XADD has run. Each
-- event's work runs under pcall; an unexpected error (WRONGTYPE on a key someone else
-- wrote, …) ends the loop: that event and every later one get the error as their element
-- (the writer then reconnects, as for any error that is not a refusal of the event), and
-- `last` is still SET to the last id stored. `last` is written once, after the loop; the
-- next call takes max(`last`, the tail's id) anyway, so no outcome can reuse an id.
local function publish_batch(keys, args)
  local stream, last_key, epoch_key = keys[1], keys[2], keys[3]
  local max_age_ms = tonumber(args[1]) or 0
  local max_events = tonumber(args[2]) or 0
  local node_now_us = tonumber(args[3]) or 0
  local epoch = args[4]

  if redis.call('GET', epoch_key) ~= epoch then
    return redis.error_reply('epoch changed')
  end
  if not layout_ok(keys, args) then
    return redis.error_reply('malformed batch')
  end

  local time = redis.call('TIME')
  local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local published_ms = id_string(math.floor(now_us / 1000))
  local last = stored_number(last_key)
  local tail = stream_tail(stream)
  if tail > last then
    last = tail
  end
  local last_before = last
  local last_s = id_string(last)
  -- Final marks seen in this call (mark key -> true/false): one EXISTS per topic per call.
  local finals = {}
  -- Trimming by age, once per call: MINID on the first XADD that runs.
  local min_id = nil
  if max_age_ms > 0 then
    min_id = now_us - max_age_ms * 1000
    if min_id < 0 then
      min_id = 0
    end
  end

  -- The event whose fields start at args[a] and whose keys follow keys[k]; n topics.
  local function store(a, k, n)
    local is_final = args[a] == '1'
    local has_key = args[a + 1] == '1'
    local event = args[a + 2]
    local data = args[a + 3]
    local first_topic = a + 5
    local topic_list = table.concat(args, ' ', first_topic, first_topic + n - 1)
    local idem_key = nil
    if has_key then
      k = k + 1
      idem_key = keys[k]
    end
    -- What the idempotency key stands for: the event's whole content.
    local digest = ''
    if has_key then
      digest = redis.sha1hex(topic_list .. '\n' .. event .. '\n' .. args[a] .. '\n' .. data)
      -- A retry of a publish that was stored: the same id, nothing appended. The same key
      -- with another event is refused rather than answered with the first event's id.
      local seen = redis.call('GET', idem_key)
      if seen then
        local id_s, seen_digest = string.match(seen, '^(%d+) (%x+)$')
        if not id_s then
          return seen
        end
        if seen_digest ~= digest then
          return redis.error_reply('key used for a different event')
        end
        return id_s
      end
    end
    for i = 1, n do
      local mark = keys[k + i]
      local final = finals[mark]
      if final == nil then
        final = redis.call('EXISTS', mark) == 1
        finals[mark] = final
      end
      if final then
        return redis.error_reply('topic ' .. args[first_topic + i - 1] .. ' is final')
      end
    end

    local id = last + 1
    if now_us > id then
      id = now_us
    end
    if node_now_us > id then
      id = node_now_us
    end
    local id_s = id_string(id)
    local xadd = { 'XADD', stream }
    if min_id then
      xadd[3], xadd[4], xadd[5] = 'MINID', '~', id_string(min_id)
      min_id = nil
    end
    local x = #xadd
    xadd[x + 1], xadd[x + 2], xadd[x + 3], xadd[x + 4] = id_s .. '-0', 'p', last_s, 't'
    xadd[x + 5] = topic_list
    x = x + 5
    if event ~= '' then
      xadd[x + 1], xadd[x + 2] = 'e', event
      x = x + 2
    end
    xadd[x + 1], xadd[x + 2] = 'd', data
    x = x + 2
    if is_final then
      xadd[x + 1], xadd[x + 2] = 'f', '1'
      x = x + 2
    end
    xadd[x + 1], xadd[x + 2], xadd[x + 3], xadd[x + 4] = 'm', published_ms, 'x', epoch
    redis.call(unpack(xadd))
    last, last_s = id, id_s

    if is_final then
      for i = 1, n do
        remember(keys[k + i], id_s, max_age_ms)
        finals[keys[k + i]] = true
      end
    end
    if has_key then
      remember(idem_key, id_s .. ' ' .. digest, max_age_ms)
    end
    return id_s
  end

  local results = {}
  local failure = nil
  local a, k, i = 5, 3, 0
  while a <= #args do
    i = i + 1
    local n = tonumber(args[a + 4])
    if not failure then
      local ok, result = pcall(store, a, k, n)
      if ok then
        results[i] = result
      elseif type(result) == 'table' and result.err then
        failure = result
      else
        failure = redis.error_reply(tostring(result))
      end
    end
    if failure then
      results[i] = failure
    end
    if args[a + 1] == '1' then
      k = k + 1
    end
    a = a + 5 + n
    k = k + n
  end

  if last > last_before then
    redis.call('SET', last_key, id_string(last))
    -- Trimming by count, once per call; best effort (redis.pcall: an error here changes no
    -- answer).
    if max_events > 0 then
      redis.pcall('XTRIM', stream, 'MAXLEN', '~', id_string(max_events))
    end
  end
  return results
end

-- The one-event form of protocol 7 as first published (kept for nodes of that version
-- and for redis-benchmark), a wrapper around publish_batch:
-- KEYS: stream, last, idempotency key (or a dummy key under the tag), epoch,
--       final:<topic>...
-- ARGV: max_age_ms, max_stream_events, is_final (0/1), event ('' = none), data,
--       has_key (0/1), node_now_us, epoch, topic...
-- Returns the id as a string, or an error reply: 'topic <name> is final', 'key used for a
-- different event', 'epoch changed'.
local function publish(keys, args)
  local has_key = args[6] == '1'
  local topic_count = #args - 8
  local batch_keys = { keys[1], keys[2], keys[4] }
  if has_key then
    batch_keys[#batch_keys + 1] = keys[3]
  end
  local batch_args = { args[1], args[2], args[7], args[8], args[3], args[6], args[4], args[5],
    tostring(topic_count) }
  for i = 1, topic_count do
    batch_keys[#batch_keys + 1] = keys[4 + i]
    batch_args[#batch_args + 1] = args[8 + i]
  end
  local results = publish_batch(batch_keys, batch_args)
  if results.err then
    return results
  end
  return results[1]
end

-- KEYS: last. ARGV: id. Raises last to at least id; returns the stored value.
local function raise(keys, args)
  local current = stored_number(keys[1])
  local wanted = tonumber(args[1]) or 0
  if wanted > current then
    redis.call('SET', keys[1], id_string(wanted))
    current = wanted
  end
  return id_string(current)
end

redis.register_function('ssehub_publish', publish)
redis.register_function('ssehub_publish_batch', publish_batch)
redis.register_function('ssehub_raise', raise)
