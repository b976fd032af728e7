-- A cache hit in one round trip: read the L1 answer and, if there is one, write the request's record holding
-- it (and the request's idempotency key) in the same step.
-- KEYS[1]  the L1 entry     KEYS[2]  the request record (a hash; field doc)     KEYS[3]  the idempotency key
-- ARGV[1]  the record's JSON up to its result   ARGV[2]  the rest of it   ARGV[3]  the record's TTL s
-- ARGV[4]  "1" to set KEYS[3] (if not set) to ARGV[5], the request id, else "0"
-- Returns the answer's JSON, or false on a miss (nothing written).
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
redis.call('HSET', KEYS[2], 'doc', ARGV[1] .. raw .. ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[5], 'NX', 'EX', ARGV[3]) end
return raw
