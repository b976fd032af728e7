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
-- ARGV[9] the lease (heartbeat TTL, seconds)
-- A job whose RQ meta holds the gateway's start entry (ARGV[11], worker.contract.START_META: its media's
-- digests and its stream's TTL) is started here too: its cancel flag and its media's bytes are read and its
-- ``running`` event appended, so that it needs no second round trip. Another job (a merge job, or one an
-- older gateway enqueued) is started by the worker with one more read.
-- ARGV[12] the cancel flag prefix  ARGV[13] the media bytes prefix  ARGV[14] the event stream prefix
-- ARGV[15] the stream's max length  ARGV[16], ARGV[17], ... an execution id for each slot
-- returns per job {queue, job id, job hash (flat, as started), execution id, started, canceled, media}:
-- queue 1 interactive, 2 batch; the hash empty and the execution id '' if the job is gone (its id is dropped,
-- as RQ drops it); started 1 if the start entry was read (then canceled is 1 or 0 and media the bytes of
-- each digest in order, false where one expired), else 0
local count, room, streak, every = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local prefix, worker, now, stamp, ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
-- RQ's scores are whole seconds (current_timestamp) plus the lease.
local expires = math.floor(tonumber(now)) + ttl
local found = {}
local EXECUTIONS = 16

-- The gateway's start entry of a job hash's meta, or nil (none, or meta that is not what the gateway writes).
local function start_entry(meta)
  if not meta then return nil end
  local ok, decoded = pcall(cjson.decode, meta)
  if not ok or type(decoded) ~= 'table' then return nil end
  local entry = decoded[ARGV[11]]
  if type(entry) ~= 'table' or type(entry.media) ~= 'table' or type(entry.ttl) ~= 'number' then return nil end
  return entry
end

local function begin(id, entry)
  local media = {}
  -- In chunks: unpack() of a long video's frames would overflow Lua's stack.
  for first = 1, #entry.media, 256 do
    local keys = {}
    for i = first, math.min(first + 255, #entry.media) do keys[#keys + 1] = ARGV[13] .. entry.media[i] end
    for _, blob in ipairs(redis.call('MGET', unpack(keys))) do media[#media + 1] = blob end
  end
  local stream = ARGV[14] .. id
  append_event(stream, 'running', '{}', ARGV[15])
  keep_ttl(stream, entry.ttl)
  found[#found + 1] = 1
  found[#found + 1] = redis.call('EXISTS', ARGV[12] .. id)
  found[#found + 1] = media
end

local function start(q, id, execution)
  local job = prefix .. id
  found[#found + 1] = q
  found[#found + 1] = id
  if redis.call('EXISTS', job) == 0 then
    found[#found + 1] = {}
    found[#found + 1] = ''
    found[#found + 1] = 0
    found[#found + 1] = 0
    found[#found + 1] = {}
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
  local entry = start_entry(redis.call('HGET', job, 'meta'))
  if entry then
    begin(id, entry)
  else
    found[#found + 1] = 0
    found[#found + 1] = 0
    found[#found + 1] = {}
  end
end

local slot = 1
if ARGV[10] ~= '' then
  redis.call('LREM', KEYS[2], 1, ARGV[10])
  start(1, ARGV[10], ARGV[EXECUTIONS])
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
      start(q, id, ARGV[EXECUTIONS - 1 + slot])
      if q == 2 then room = room - 1; streak = 0 else streak = streak + 1 end
      taken = true
      break
    end
  end
  if not taken then break end
  slot = slot + 1
end
return found
