-- Deletes a media record; its bytes go too when no other media record holds them.
-- KEYS[1]  the media record    KEYS[2]  the bytes    KEYS[3]  set of media ids holding the bytes
-- ARGV[1]  the media id
-- Returns 1 if the record existed.
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('SCARD', KEYS[3]) == 0 then redis.call('DEL', KEYS[2]) end
return 1
