-- Deletes a media record; each of its blobs goes too when no other media record holds it.
-- KEYS[1]  the media record
-- KEYS[2k], KEYS[2k+1]  (k = 1, 2, ...)  a blob it holds, and the set of media ids holding that blob
--          (an image holds one blob; a video one per distinct sampled frame)
-- ARGV[1]  the media id
-- Returns 1 if the record existed.
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS - 1, 2 do
  redis.call('SREM', KEYS[i + 1], ARGV[1])
  if redis.call('SCARD', KEYS[i + 1]) == 0 then redis.call('DEL', KEYS[i]) end
end
return 1
