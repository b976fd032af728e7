-- Releases a lock only if this holder still owns it (a holder whose lease lapsed must not free another's).
-- KEYS[1]  the lock        ARGV[1]  the holder's token
-- returns 1 if released, 0 if the lock had passed on (or lapsed)
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
