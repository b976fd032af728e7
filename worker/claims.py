"""Which queue a worker's free slot is filled from: interactive first, and batch work never starves.

The rule, for each free slot (``max_inflight`` slots in all):

1. Batch jobs may hold at most ``max_inflight - interactive_reserve`` slots, so an interactive request
   arriving while a batch of thousands is queued finds a slot at once (the reserve is clamped to leave
   batch at least one slot).
2. Interactive jobs come first: the slot takes the interactive queue's head if there is one...
3. ...except that after ``batch_every - 1`` interactive claims in a row, the next claim tries the batch
   queue first. Under any interactive load, batch work thus gets at least one claim in every
   ``batch_every`` while it is queued and under its cap: it is slowed, never starved.
4. A worker with nothing it may take blocks on the interactive queue (woken the moment one arrives); a
   batch job waits at most ``idle_block_s`` longer than it would on its own queue, or ``capped_block_s``
   while batch is at its cap and a batch slot may free.

On the engine, batch requests also get a lower vLLM scheduling priority (``scheduling_policy=priority``),
so within one forward-pass budget interactive requests are scheduled first.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.contract import Priority


@dataclass(frozen=True)
class ClaimRule:
    """The rule above for one worker."""

    max_inflight: int
    interactive_reserve: int
    batch_every: int

    @property
    def batch_cap(self) -> int:
        """Slots batch jobs may hold at once."""
        reserve = min(self.interactive_reserve, self.max_inflight - 1)
        return self.max_inflight - max(reserve, 0)

    def order(self, batch_inflight: int, streak: int) -> tuple[Priority, ...]:
        """Queues to try for one free slot, in order; ``streak`` is interactive claims since the last batch."""
        if batch_inflight >= self.batch_cap:
            return (Priority.INTERACTIVE,)
        if streak >= self.batch_every - 1:
            return (Priority.BATCH, Priority.INTERACTIVE)
        return (Priority.INTERACTIVE, Priority.BATCH)
