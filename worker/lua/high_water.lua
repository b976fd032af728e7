-- Raises a stored high-water mark only if the new value is higher.
-- KEYS[1]  the counter        ARGV[1]  the new value
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
