-- One window of a long video ended: count it on the merge job waiting for it and stream the progress.
-- Counted once per window (its field is removed), so a second call for the same end changes nothing.
-- KEYS[1]  the merge job's progress hash (total, done, w:<window job id> -> span JSON)
-- KEYS[2]  the merge job's event stream
-- ARGV[1]  the window job's id     ARGV[2]  how it ended (done, failed, ...)     ARGV[3]  stream max length
-- Returns how many windows have ended, or 0 if this one was already counted (or is not one of them).
local field = 'w:' .. ARGV[1]
local span = redis.call('HGET', KEYS[1], field)
if not span then return 0 end
redis.call('HDEL', KEYS[1], field)
local done = redis.call('HINCRBY', KEYS[1], 'done', 1)
local total = redis.call('HGET', KEYS[1], 'total')
local data = '{"done":' .. done .. ',"total":' .. total .. ',"state":' .. cjson.encode(ARGV[2]) ..
  ',"window":' .. span .. '}'
append_event(KEYS[2], 'progress', data, ARGV[3])
return done
