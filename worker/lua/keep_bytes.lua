-- Stores content-addressed bytes, or keeps the stored copy, with a TTL of at least ARGV[2].
-- The reply is the same whether the bytes were there or not: no caller learns that someone else
-- uploaded the same content.
-- KEYS[1]  the bytes' key     ARGV[1]  the bytes     ARGV[2]  TTL s
local ttl = redis.call('TTL', KEYS[1])
if ttl == -2 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
elseif ttl < tonumber(ARGV[2]) then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
