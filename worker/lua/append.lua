-- Appends events (running, deltas) to one job's stream, in order, unless it already ended.
-- KEYS[1]  the job's event stream
-- ARGV[1]  stream max length (approximate trim)
-- ARGV[2]  TTL in seconds, set only when the stream has none (a stream is never left without one)
-- ARGV[3], ARGV[4], ...  pairs of (event type, JSON data)
-- Returns the sequence number of the last event appended (0 if the stream had ended).
local stream = KEYS[1]
local appended = 0
for i = 3, #ARGV, 2 do
  appended = append_event(stream, ARGV[i], ARGV[i + 1], ARGV[1])
  if appended == 0 then break end
end
keep_ttl(stream, ARGV[2])
return appended
