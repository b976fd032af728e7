-- Takes jobs for up to ARGV[1] free slots, each from the queue the claim rule (worker/claims.py) picks for it,
-- and registers each as started, writing what RQ's own worker writes when it starts a job (Execution.create,
-- Job.prepare_for_execution): the execution hash, the job's executions set, the queue's started registry and
-- the job's start fields. One round trip and one atomic step for all the slots: a job is never out of its
-- queue without being started, so a worker that dies here leaves nothing for the janitor to find.
-- The rule, slot by slot: batch may take a slot while it holds fewer than its cap (ARGV[2] = slots it may
-- still take); interactive first, except that after ARGV[4] - 1 interactive claims in a row (ARGV[3] so
-- far) batch is tried first. A slot whose queues are all empty ends the claim.
-- ARGV[10], when not empty, is an interactive job id the worker's blocking BLMOVE already moved to the
-- intermediate list: it is started first, in the first slot.
-- The keys of a job (ARGV[5] .. id), its execution (rq:execution:<id>:<execution id>) and its executions set
-- (rq:executions:<id>) are RQ's (RQ itself does not run on Redis Cluster, so neither does this); a test holds
-- what this writes to what RQ's own start writes.
-- KEYS[1] the interactive queue  KEYS[2] its intermediate list  KEYS[3] its started registry
-- KEYS[4] the batch queue        KEYS[5] its intermediate list  KEYS[6] its started registry
-- ARGV[5] RQ's job key prefix    ARGV[6] the worker's name
-- ARGV[7] now, seconds (float, as Execution.serialize writes it)   ARGV[8] now, as RQ formats a job's times
-- ARGV[9] the lease (heartbeat TTL, seconds)   ARGV[11], ARGV[12], ... an execution id for each slot
-- returns {queue, job id, job hash (flat, as started), execution id, ...} (queue 1 interactive, 2 batch; the
-- hash empty and the execution id '' if the job is gone: its id is dropped, as RQ drops it)
local count, room, streak, every = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local prefix, worker, now, stamp, ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
-- RQ's scores are whole seconds (current_timestamp) plus the lease.
local expires = math.floor(tonumber(now)) + ttl
local found = {}

local function start(q, id, execution)
  local job = prefix .. id
  found[#found + 1] = q
  found[#found + 1] = id
  if redis.call('EXISTS', job) == 0 then
    found[#found + 1] = {}
    found[#found + 1] = ''
    return
  end
  local composite = id .. ':' .. execution
  local record = 'rq:execution:' .. composite
  local executions = 'rq:executions:' .. id
  redis.call('HSET', record, 'id', execution, 'created_at', now, 'last_heartbeat', now, 'worker_name', worker)
  redis.call('EXPIRE', record, ttl)
  redis.call('ZADD', executions, expires + 60, execution)
  redis.call('EXPIRE', executions, ttl + 60)
  redis.call('ZADD', KEYS[3 * q], expires, composite)
  redis.call('HSET', job, 'last_heartbeat', stamp, 'status', 'started', 'started_at', stamp, 'worker_name', worker)
  found[#found + 1] = redis.call('HGETALL', job)
  found[#found + 1] = execution
end

local slot = 1
if ARGV[10] ~= '' then
  redis.call('LREM', KEYS[2], 1, ARGV[10])
  start(1, ARGV[10], ARGV[11])
  streak = streak + 1
  slot = 2
end
while slot <= count do
  local order
  if room <= 0 then order = {1} elseif streak >= every - 1 then order = {2, 1} else order = {1, 2} end
  local taken = false
  for _, q in ipairs(order) do
    local id = redis.call('LPOP', KEYS[3 * q - 2])
    if id then
      start(q, id, ARGV[10 + slot])
      if q == 2 then room = room - 1; streak = 0 else streak = streak + 1 end
      taken = true
      break
    end
  end
  if not taken then break end
  slot = slot + 1
end
return found
