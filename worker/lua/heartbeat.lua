-- Extends the lease of the jobs a worker still runs, as RQ's Execution.heartbeat does, but only for an
-- execution that still exists. The worker beats from a thread while its finisher ends jobs from another:
-- RQ's own heartbeat re-adds the execution to the job's executions set unconditionally, so a beat that
-- lands just after a job ended resurrected a ghost execution of a finished job (and its hash) until the
-- TTL. Checked and written here in one step, an ended execution stays ended.
-- KEYS, per job: its execution hash, its queue's started registry, the job's executions set
-- ARGV[1] now (seconds, float)  ARGV[2] the lease (seconds)
-- ARGV, per job from 3: the started registry member (job_id:execution_id), the execution id
-- returns how many leases were extended
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local extended = 0
for i = 1, #KEYS, 3 do
  local arg = 3 + (i - 1) / 3 * 2
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'last_heartbeat', ARGV[1])
    redis.call('EXPIRE', KEYS[i], ttl)
    redis.call('ZADD', KEYS[i + 1], 'XX', math.floor(now) + ttl, ARGV[arg])
    redis.call('ZADD', KEYS[i + 2], math.floor(now) + ttl + 60, ARGV[arg + 1])
    redis.call('EXPIRE', KEYS[i + 2], ttl + 60)
    extended = extended + 1
  end
end
return extended
