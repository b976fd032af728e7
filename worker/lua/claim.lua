-- Takes job ids for up to ARGV[1] free slots, each from the queue the claim rule (worker/claims.py) picks
-- for it, moving each to its queue's intermediate list as RQ's own LMOVE does: a worker that dies before it
-- registers a job leaves the id where the janitor finds it. One round trip for all the slots.
-- The rule, slot by slot: batch may take a slot while it holds fewer than its cap (ARGV[2] = slots it may
-- still take); interactive first, except that after ARGV[4] - 1 interactive claims in a row (ARGV[3] so
-- far) batch is tried first. A slot whose queues are all empty ends the claim.
-- Each job's hash comes back with it, so the worker needs no second round trip to read the jobs (their keys
-- are RQ's, named from ARGV[5]: RQ itself does not run on Redis Cluster, so neither does this).
-- KEYS[1] the interactive queue  KEYS[2] its intermediate list  KEYS[3] the batch queue  KEYS[4] its list
-- ARGV[5] RQ's job key prefix
-- returns {queue, job id, job hash (flat), queue, job id, job hash, ...} (queue 1 interactive, 2 batch; the
-- hash empty if the job is gone); empty when nothing was taken
local count, room, streak, every = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local found = {}
for _ = 1, count do
  local order
  if room <= 0 then order = {1} elseif streak >= every - 1 then order = {2, 1} else order = {1, 2} end
  local taken = false
  for _, q in ipairs(order) do
    local id = redis.call('LMOVE', KEYS[2 * q - 1], KEYS[2 * q], 'LEFT', 'RIGHT')
    if id then
      found[#found + 1] = q
      found[#found + 1] = id
      found[#found + 1] = redis.call('HGETALL', ARGV[5] .. id)
      if q == 2 then room = room - 1; streak = 0 else streak = streak + 1 end
      taken = true
      break
    end
  end
  if not taken then break end
end
return found
