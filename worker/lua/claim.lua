-- Takes the next job id for one free slot from the first non-empty queue in the worker's order, moving it
-- to that queue's intermediate list as RQ's own LMOVE does: a worker that dies before it registers the
-- job leaves the id where the janitor finds it. One round trip whatever the number of queues.
-- KEYS[2i-1]  queue i (in the order to try)      KEYS[2i]  queue i's intermediate list
-- returns {i, job id}, or false when every queue is empty
for i = 1, #KEYS, 2 do
  local id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
  if id then return {(i + 1) / 2, id} end
end
return false
