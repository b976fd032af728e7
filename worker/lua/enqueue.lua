-- A new request's enqueue in one step (gateway/enqueue.py, enqueue_at_once): decide as the WATCH transaction
-- of enqueue_or_attach decides, then write the images and run the writes the gateway composed for the new
-- job (its request record, stream, quota entry, idempotency key, in-flight marker and RQ's own enqueue of the
-- job: the same commands the transaction sends), all atomically, in one round trip. The writes name keys
-- that are not in KEYS: RQ itself does not run on Redis Cluster, so neither does this (as claim.lua).
-- KEYS[1] the idempotency key (or any key when ARGV[1] is "0")  KEYS[2] the L1 entry  KEYS[3] the in-flight
-- marker  KEYS[4] the tenant's in-flight set  KEYS[5] the job's queue  KEYS[6..] the request's image blobs
-- ARGV[1] "1" to honour the idempotency key  ARGV[2] "1" to coalesce (L1 and in-flight checked)
-- ARGV[3] the tenant's in-flight limit (0: none)  ARGV[4] RQ's job key prefix  ARGV[5] the images' TTL (s)
-- ARGV[6] the queue's cap (the backlog, exact however many gateways enqueue)
-- ARGV[7..6+#images] each image's bytes, or "" when they are stored already (then only kept alive)
-- ARGV[7+#images..] the writes: each a count n, then a command of n words
-- returns {"replayed", request id} | {"cached", L1 document} | {"live", job id} (nothing written: attach to
-- it under WATCH) | {"quota", in flight} | {"backlog"} | {"queued"}
if ARGV[1] == '1' then
  local replayed = redis.call('GET', KEYS[1])
  if replayed then return {'replayed', replayed} end
end
if ARGV[2] == '1' then
  -- The worker's finish script fills L1 and clears the marker atomically: one of them is seen, or neither.
  local cached = redis.call('GET', KEYS[2])
  if cached then return {'cached', cached} end
  local job_id = redis.call('GET', KEYS[3])
  if job_id then
    local status = redis.call('HGET', ARGV[4] .. job_id, 'status')
    -- RQ's pending states, as gateway/enqueue.py's _PENDING_RQ_STATES.
    if status == 'queued' or status == 'started' or status == 'scheduled' or status == 'deferred' then
      return {'live', job_id}
    end
  end
end
local limit = tonumber(ARGV[3])
if limit > 0 then
  local inflight = redis.call('ZCARD', KEYS[4])
  if inflight >= limit then return {'quota', inflight} end
end
if redis.call('LLEN', KEYS[5]) >= tonumber(ARGV[6]) then return {'backlog'} end
local ttl = tonumber(ARGV[5])
local images = #KEYS - 5
for i = 1, images do
  -- Stored bytes ("") that expired since the gateway looked are not brought back: the worker answers
  -- image_expired for them, as it does for the transaction's EXPIRE GT.
  local data = ARGV[6 + i]
  keep_blob(KEYS[5 + i], data, ttl, data ~= '')
end
local i = 7 + images
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return {'queued'}
