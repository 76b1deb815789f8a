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
-- '%.0f' (never tostring, which may choose an exponent form).

local function id_string(n)
  return string.format('%.0f', n)
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

-- KEYS: stream, last, idempotency key (or a dummy key under the tag), epoch,
--       final:<topic>...
-- ARGV: max_age_ms, max_stream_events, is_final (0/1), event ('' = none), data,
--       has_key (0/1), node_now_us, epoch, topic...
-- Returns the id as a string, or an error reply: 'topic <name> is final', 'key used for a
-- different event', 'epoch changed'.
local function publish(keys, args)
  local stream, last_key, idem_key, epoch_key = keys[1], keys[2], keys[3], keys[4]
  local max_age_ms = tonumber(args[1]) or 0
  local max_events = tonumber(args[2]) or 0
  local is_final = args[3] == '1'
  local event = args[4]
  local data = args[5]
  local has_key = args[6] == '1'
  local node_now_us = tonumber(args[7]) or 0
  local epoch = args[8]
  local topic_count = #args - 8

  if redis.call('GET', epoch_key) ~= epoch then
    return redis.error_reply('epoch changed')
  end

  local topics = {}
  for i = 1, topic_count do
    topics[i] = args[8 + i]
  end
  -- What the idempotency key stands for: the event's whole content.
  local digest = ''
  if has_key then
    digest = redis.sha1hex(table.concat(topics, ' ') .. '\n' .. event .. '\n' ..
      args[3] .. '\n' .. data)
  end

  -- A retry of a publish that was stored: the same id, nothing appended. The same key with
  -- another event is refused rather than answered with the first event's id.
  if has_key then
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

  for i = 1, topic_count do
    if redis.call('EXISTS', keys[4 + i]) == 1 then
      return redis.error_reply('topic ' .. topics[i] .. ' is final')
    end
  end

  local time = redis.call('TIME')
  local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local last = stored_number(last_key)
  local tail = stream_tail(stream)
  if tail > last then
    last = tail
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
  if max_age_ms > 0 then
    local min_id = now_us - max_age_ms * 1000
    if min_id < 0 then
      min_id = 0
    end
    table.insert(xadd, 'MINID')
    table.insert(xadd, '~')
    table.insert(xadd, id_string(min_id))
  end
  table.insert(xadd, id_s .. '-0')
  table.insert(xadd, 'p')
  table.insert(xadd, id_string(last))
  table.insert(xadd, 't')
  table.insert(xadd, table.concat(topics, ' '))
  if event ~= '' then
    table.insert(xadd, 'e')
    table.insert(xadd, event)
  end
  table.insert(xadd, 'd')
  table.insert(xadd, data)
  if is_final then
    table.insert(xadd, 'f')
    table.insert(xadd, '1')
  end
  table.insert(xadd, 'm')
  table.insert(xadd, id_string(math.floor(now_us / 1000)))
  table.insert(xadd, 'x')
  table.insert(xadd, epoch)
  redis.call(unpack(xadd))

  if max_events > 0 then
    redis.call('XTRIM', stream, 'MAXLEN', '~', id_string(max_events))
  end
  redis.call('SET', last_key, id_s)

  -- Marks and keys expire with the history they protect (history.max_age).
  local function remember(key, value)
    if max_age_ms > 0 then
      redis.call('SET', key, value, 'PX', id_string(max_age_ms))
    else
      redis.call('SET', key, value)
    end
  end
  if is_final then
    for i = 1, topic_count do
      remember(keys[4 + i], id_s)
    end
  end
  if has_key then
    remember(idem_key, id_s .. ' ' .. digest)
  end
  return id_s
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
redis.register_function('ssehub_raise', raise)
