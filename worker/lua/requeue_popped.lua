-- Puts a job id a dead worker popped back at the front of the queue, only if it is still in the
-- intermediate list (atomic, so two janitors cannot both requeue it).
-- KEYS[1]  RQ's intermediate list     KEYS[2]  the queue        ARGV[1]  job id
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[1]) return 1 end
return 0
