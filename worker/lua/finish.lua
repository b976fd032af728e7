-- Ends a job in one atomic step: the result document; the stream's last delta and its terminal event;
-- for a cacheable success the L1 entry (and the near-index entry); the in-flight and quota markers; the
-- ended-log entry for a job that carries webhooks; and the wake-up publish. The first writer wins: if a
-- result exists, none of these is written.
-- KEYS[1]  result document            KEYS[2]  in-flight marker (cache key -> job id)
-- KEYS[3]  L1 cache entry             KEYS[4]  near-duplicate bucket
-- KEYS[5]  tenant's in-flight set     KEYS[6]  the job's event stream
-- KEYS[7]  the job's webhook set (request ids)   KEYS[8]  the ended log (a stream gateways consume)
-- ARGV[1]  job id                     ARGV[2]  result JSON
-- ARGV[3]  result TTL s (result and stream)   ARGV[4]  terminal event type (done, failed, ...)
-- ARGV[5]  "1" to cache the result in L1, else "0"            ARGV[6]  L1 TTL s
-- ARGV[7]  "1" to add ARGV[8] to the near bucket, else "0"    ARGV[8]  near-index member
-- ARGV[9]  "1" to append ARGV[10] as a last delta first, else "0"   ARGV[10] JSON data of that delta
-- ARGV[11] stream max length          ARGV[12] now (near-index score)
-- ARGV[13] pub/sub channel            ARGV[14] message published on it
-- ARGV[15] channel of cached answers  ARGV[16] message published there when ARGV[5] == "1" (gateways keep
--          the answer in their L2 from it)
-- ARGV[17] ended log max length (approximate: entries are tiny and read within seconds)
-- ARGV[18] "1" to write first what RQ's own worker writes when a job succeeds (Execution.delete,
--          Job._handle_success, Job.cleanup, the worker's count) or, by ARGV[27], is canceled, whether or not
--          this call's result wins, as the worker did through RQ's objects in the same MULTI; "0" for none
--          (the caller writes them)
-- KEYS[9]  the job's hash             KEYS[10] its execution hash        KEYS[11] its queue's started registry
-- KEYS[12] the job's executions set   KEYS[13] its RQ results stream     KEYS[14] its queue's finished registry
-- KEYS[15] its dependents set         KEYS[16] its dependencies set      KEYS[17] the RQ worker's hash
-- ARGV[19] the started registry member (job_id:execution_id)             ARGV[20] the execution id
-- ARGV[21] now, as RQ formats a job's times   ARGV[22] now, whole seconds   ARGV[23] RQ's result TTL (s)
-- ARGV[24] the worker's name          ARGV[25] the RQ result's return_value (base64 of the result JSON)
-- ARGV[26] "1" to count the success in KEYS[17]
-- ARGV[27] (with ARGV[18] == "1") when not empty: the result JSON to end with instead, as canceled, if the
--          job's cancel flag KEYS[18] is set (the client canceled while the engine answered; checked here, in
--          the end's own step, so no cancel lands between the check and the end)
-- KEYS[18] its cancel flag   KEYS[19] its queue's deferred registry   KEYS[20] its queue's canceled registry
-- returns 1 if this call wrote the result, else 0; plus 2 if the job ended canceled by ARGV[27]
local canceled = ARGV[18] == '1' and ARGV[27] ~= '' and redis.call('EXISTS', KEYS[18]) == 1
local result, state, cache = ARGV[2], ARGV[4], ARGV[5]
if canceled then result, state, cache = ARGV[27], 'canceled', '0' end
local flag = canceled and 2 or 0
if ARGV[18] == '1' then
  local ttl = tonumber(ARGV[23])
  if ARGV[26] == '1' then
    redis.call('HINCRBY', KEYS[17], canceled and 'failed_job_count' or 'successful_job_count', 1)
  end
  redis.call('DEL', KEYS[10])
  redis.call('ZREM', KEYS[11], ARGV[19])
  redis.call('ZREM', KEYS[12], ARGV[20])
  if canceled then
    -- What RQ's objects write for a canceled end (completion._rq_bookkeeping).
    redis.call('HSET', KEYS[9], 'status', 'canceled')
    redis.call('ZREM', KEYS[19], ARGV[1])
    redis.call('ZADD', KEYS[20], tonumber(ARGV[22]), ARGV[1])
  else
    redis.call('HSET', KEYS[9], 'status', 'finished')
    redis.call('HSET', KEYS[9], 'ended_at', ARGV[21])
    redis.call('XADD', KEYS[13], 'MAXLEN', '~', 10, '*', 'type', 1, 'worker_name', ARGV[24], 'return_value', ARGV[25])
    if ttl == -1 then redis.call('PERSIST', KEYS[13]) else redis.call('EXPIRE', KEYS[13], ttl) end
    -- RQ's registry score: now + the TTL, or a negative TTL as it is (-1: forever).
    local score = ttl < 0 and ttl or tonumber(ARGV[22]) + ttl
    redis.call('ZADD', KEYS[14], score == -1 and '+inf' or score, ARGV[1])
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[9], ttl)
      redis.call('EXPIRE', KEYS[15], ttl)
      redis.call('EXPIRE', KEYS[16], ttl)
    end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return flag end
redis.call('SET', KEYS[1], result, 'EX', ARGV[3])
if ARGV[9] == '1' and not canceled then append_event(KEYS[6], 'delta', ARGV[10], ARGV[11]) end
append_event(KEYS[6], state, result, ARGV[11])
redis.call('EXPIRE', KEYS[6], ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('ZREM', KEYS[5], ARGV[1])
if cache == '1' then
  redis.call('SET', KEYS[3], result, 'EX', ARGV[6])
  redis.call('PUBLISH', ARGV[15], ARGV[16])
  if ARGV[7] == '1' then
    redis.call('ZADD', KEYS[4], ARGV[12], ARGV[8])
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -257)
    redis.call('EXPIRE', KEYS[4], ARGV[6])
  end
end
-- Durable, unlike the publish: the end reaches a webhook even if no gateway is listening right now.
if redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[17], '*', 'job', ARGV[1])
end
redis.call('PUBLISH', ARGV[13], ARGV[14])
return 1 + flag
