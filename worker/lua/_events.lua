-- Shared by the scripts that append to a job's event stream (prepended by worker.scripts).
-- Stream ids are 0-1, 0-2, ...: the sequence number is the SSE event id a client resumes from.
-- An event is two fields: e (type) and d (JSON data). Nothing is appended after a terminal event.
local TERMINAL = {done = true, failed = true, canceled = true, expired = true}

local function last_event(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last == 0 then return 0, nil end
  local seq = tonumber(string.match(last[1][1], '%-(%d+)$'))
  local fields = last[1][2]
  local kind = nil
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then kind = fields[i + 1] end
  end
  return seq, kind
end

-- Appends one event unless the stream already ended; returns its sequence number, or 0.
local function append_event(stream, kind, data, maxlen)
  local seq, last_kind = last_event(stream)
  if last_kind ~= nil and TERMINAL[last_kind] then return 0 end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '0-' .. (seq + 1), 'e', kind, 'd', data)
  return seq + 1
end

-- A stream is never left without a TTL: gives it one only where it has none (the gateway's own stays).
local function keep_ttl(stream, ttl)
  if redis.call('TTL', stream) < 0 then redis.call('EXPIRE', stream, ttl) end
end
