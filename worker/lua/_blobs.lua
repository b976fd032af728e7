-- Shared by the scripts that store content-addressed bytes (prepended by worker.scripts).
-- keep_blob stores the bytes under key, or keeps the stored copy, with a TTL of at least ttl seconds; with
-- create false, bytes that are gone are not stored again (only a copy that exists is kept alive). It answers
-- nothing: no caller learns whether someone else had uploaded the same content.
local function keep_blob(key, data, ttl, create)
  local left = redis.call('TTL', key)
  if left == -2 then
    if create then redis.call('SET', key, data, 'EX', ttl) end
  elseif left < ttl then
    redis.call('EXPIRE', key, ttl)
  end
end
