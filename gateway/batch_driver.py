"""The batch driver: every gateway replica advances active batches, one replica per batch at a time.

Each tick (``batch_poll_s``), for each active batch whose lock it takes, one short step:
- ``validating``: the input copy is read once (lines counted, custom_ids unique; a file unusable as a
  whole fails the batch with ``errors``), then ``in_progress``;
- ``in_progress``: open lines that ended become output lines (answers) or error lines (failures), with
  ``request_counts``; then up to ``batch_step_lines`` more lines are submitted while fewer than
  ``batch_max_open_lines`` are open. A line is a chat completions body submitted through
  ``gateway.submit`` at batch priority with an idempotency key of its own, so a step that is redone after a
  crash finds the requests it already made instead of making them twice. A line that cannot be submitted
  (bad JSON, wrong url, a parameter refused) fails alone with its reason in the error file;
- past ``expires_at``, or ``cancelling``: open lines are canceled, unsubmitted ones fail with
  ``batch_expired`` / ``batch_cancelled``, and the batch ends ``expired`` / ``cancelled`` once nothing is
  open;
- when every line ended: ``finalizing``, the output and error files are written, ``completed``; the batch's
  webhook (if any) gets the batch object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from typing import Any

from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from cache.codec import as_bytes, as_text
from gateway import batches, files, results, webhooks
from gateway.backend import Backend
from gateway.batches import Batch
from gateway.errors import ApiError, UnavailableError
from gateway.openai_api import failure_error, failure_status
from gateway.openai_models import Reply, read_body, to_submission
from gateway.submit import idempotency_key, submit
from worker.constants import BATCH_LOCK_PREFIX
from worker.contract import BatchCounts, JobResult, JobState, Priority

log = logging.getLogger("vlq.gateway.batches")
# A step holds its batch this long at most; a replica that died mid-step frees the batch when it lapses.
_LOCK_S = 120
_CHUNK = 1 << 20
_STOPS = {"cancelling": ("cancelled", "batch_cancelled", "the batch was cancelled before this line ran"),
          "expired": ("expired", "batch_expired", "the batch's completion window closed before this line ran")}


@dataclasses.dataclass
class _Step:
    """What one step changes, written together at its end."""

    output: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    opened: dict[int, str] = dataclasses.field(default_factory=dict)
    closed: list[int] = dataclasses.field(default_factory=list)
    # Request ids of the lines still open once this step collected the ended ones.
    pending: list[str] = dataclasses.field(default_factory=list)
    completed: int = 0
    failed: int = 0
    # (lines read, byte offset after them) once the step read input; None if it read none.
    cursor: tuple[int, int] | None = None


class Driver:
    """Runs ticks until canceled (started in the gateway's lifespan)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except RedisError as exc:
                log.warning("batch tick skipped: %s", type(exc).__name__)
            except Exception:
                log.exception("batch tick failed")
            await asyncio.sleep(self.backend.settings.batch_poll_s)

    async def tick(self) -> None:
        """One step of each active batch this replica can lock."""
        for batch_id in await batches.active_ids(self.backend):
            token = secrets.token_hex(8)
            lock = BATCH_LOCK_PREFIX + batch_id
            if not await self.backend.aredis.set(lock, token, nx=True, ex=_LOCK_S):
                continue
            try:
                await self.step(batch_id)
            finally:
                await self.backend.ascripts.release_lock(keys=[lock], args=[token])

    async def step(self, batch_id: str) -> None:
        """Advance one batch (the caller holds its lock)."""
        batch = await batches.read(self.backend, batch_id)
        if batch is None or batch.is_final:
            async with self.backend.aredis.pipeline(transaction=True) as pipe:
                batches.retire(pipe, batch_id)
                await pipe.execute()
            return
        if batch.record.status == "validating":
            batch = await self._validate(batch)
            if batch.is_final:
                return await self._ended(batch)
        stop = "cancelling" if batch.record.status == "cancelling" else (
            "expired" if time.time() > batch.record.expires_at else None)
        step = _Step()
        await self._collect(batch, step)
        if stop is None:
            await self._submit(batch, step)
        else:
            await self._stop(batch, step, stop)
        batch = await self._save(batch, step)
        if await self._all_ended(batch):
            await self._finish(batch, _STOPS[stop][0] if stop else "completed")

    # -- validating --------------------------------------------------------------------------------------

    async def _validate(self, batch: Batch) -> Batch:
        data = as_bytes(await self.backend.aredis.get(batches.input_key(batch.batch_id)) or b"")
        total, errors = await run_in_threadpool(_scan, data)
        now = time.time()
        if errors:
            batch = await batches.update(self.backend, batch, status="failed", failed_at=now, errors=errors)
            return batch
        return await batches.update(self.backend, batch, status="in_progress", in_progress_at=now,
                                    request_counts=BatchCounts(total=total))

    # -- collecting ended lines --------------------------------------------------------------------------

    async def _collect(self, batch: Batch, step: _Step) -> None:
        redis = self.backend.aredis
        numbers = sorted(int(as_text(raw)) for raw in await redis.smembers(batches.open_key(batch.batch_id)))
        if not numbers:
            return
        entries = batches.read_entries(await redis.hmget(batches.lines_key(batch.batch_id), numbers))
        known = [(n, entry) for n, entry in zip(numbers, entries, strict=True) if entry is not None]
        ended = await results.ended_many(self.backend, [request_id for _, (_, request_id) in known])
        for (number, (custom_id, request_id)), result in zip(known, ended, strict=True):
            if result is not None:
                self._line_ended(step, number, custom_id, request_id, result)
            else:
                step.pending.append(request_id)
        step.closed.extend(n for n, entry in zip(numbers, entries, strict=True) if entry is None)

    def _line_ended(self, step: _Step, number: int, custom_id: str, request_id: str, result: JobResult) -> None:
        step.closed.append(number)
        if result.state is JobState.DONE and result.result is not None:
            reply = Reply(request_id, result.model or self.backend.settings.model, int(result.finished_at))
            step.output.append(_line(request_id, custom_id, 200, reply.completion(result.result)))
            step.completed += 1
            return
        code = result.error.code if result.error is not None else result.state.value
        message = result.error.message if result.error is not None else f"the request ended {result.state.value}"
        status, _ = failure_status(code)
        step.errors.append(_line(request_id, custom_id, status, {"error": failure_error(code, message)}))
        step.failed += 1

    # -- submitting lines ----------------------------------------------------------------------------------

    async def _submit(self, batch: Batch, step: _Step) -> None:
        settings = self.backend.settings
        room = min(settings.batch_max_open_lines - len(step.pending), settings.batch_step_lines)
        if room <= 0:
            return
        lines, size = await self._read_lines(batch, room)
        for number, text, end in lines:
            try:
                request_id, custom_id = await self._submit_line(batch, number, text)
            except _LineError as exc:
                step.errors.append(exc.line)
                step.failed += 1
            except UnavailableError:
                return  # the batch queue is full: this line and the rest wait for a later step
            else:
                step.opened[number] = batches.line_entry(custom_id, request_id)
            step.cursor = number, end
        if size is not None:
            step.cursor = (step.cursor or (batch.record.submitted, 0))[0], size

    async def _submit_line(self, batch: Batch, number: int, text: bytes) -> tuple[str, str]:
        custom_id, body = _parse_line(text, number)
        try:
            chat = read_body(body, self.backend.settings)
            if chat.stream:
                raise _LineError.refused(custom_id, 400, "invalid_parameter", "stream is not supported in a batch",
                                         "stream")
            submission = to_submission(chat, self.backend.settings)
            params = submission.params.model_copy(update={
                "priority": Priority.BATCH, "deadline_s": max(batch.record.expires_at - time.time(), 1.0)})
            submission = dataclasses.replace(submission, params=params)
            idem = idempotency_key(batch.record.tenant, f"vlq-batch:{batch.batch_id}:{number}")
            outcome = await submit(self.backend, submission, batch.record.tenant, idem, in_quota=False)
        except UnavailableError:
            raise
        except ApiError as exc:
            raise _LineError.refused(custom_id, exc.status, exc.code, exc.message, exc.param) from exc
        return outcome.request_id, custom_id

    async def _read_lines(self, batch: Batch, count: int) -> tuple[list[tuple[int, bytes, int]], int | None]:
        """Up to ``count`` non-empty lines after the cursor: (line number, text, offset after it); and the
        input's size if nothing but blank lines follows them."""
        redis = self.backend.aredis
        key = batches.input_key(batch.batch_id)
        size = int(await redis.strlen(key))
        number, offset = batch.record.submitted, batch.record.offset
        found: list[tuple[int, bytes, int]] = []
        pending = b""
        while len(found) < count and offset < size:
            chunk = as_bytes(await redis.getrange(key, offset, offset + _CHUNK - 1))
            offset += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if offset >= size:
                complete.append(pending)
                pending = b""
            consumed = offset - len(pending)
            ends = _line_ends(complete, consumed)
            for text, end in zip(complete, ends, strict=True):
                number += 1
                if text.strip() and len(found) < count:
                    found.append((number, text, end))
                elif len(found) >= count:
                    return found, None
        return found, size if offset >= size else None

    # -- stopping ------------------------------------------------------------------------------------------

    async def _stop(self, batch: Batch, step: _Step, stop: str) -> None:
        _, code, message = _STOPS[stop]
        for request_id in step.pending:
            with _quiet():
                await results.cancel(self.backend, request_id, batch.record.tenant)
        lines, size = await self._read_lines(batch, self.backend.settings.batch_step_lines)
        for number, text, end in lines:
            custom_id = _custom_id_of(text)
            step.errors.append(_line(None, custom_id, 0, None, {"code": code, "message": message}))
            step.failed += 1
            step.cursor = number, end
        if size is not None:
            step.cursor = (step.cursor or (batch.record.submitted, 0))[0], size

    # -- writing a step, finishing -------------------------------------------------------------------------

    async def _save(self, batch: Batch, step: _Step) -> Batch:
        submitted, offset = step.cursor or (batch.record.submitted, batch.record.offset)
        counts = batch.record.request_counts
        counts = BatchCounts(total=counts.total, completed=counts.completed + step.completed,
                             failed=counts.failed + step.failed)
        bid = batch.batch_id
        ttl = int(batch.record.expires_at - time.time()) + self.backend.settings.file_ttl_s

        def writes(pipe: AsyncPipeline) -> None:
            if step.output:
                pipe.rpush(batches.output_key(bid), *step.output)
            if step.errors:
                pipe.rpush(batches.errors_key(bid), *step.errors)
            if step.opened:
                pipe.hset(batches.lines_key(bid), mapping={str(n): v for n, v in step.opened.items()})
                pipe.sadd(batches.open_key(bid), *step.opened)
            if step.closed:
                pipe.srem(batches.open_key(bid), *step.closed)
            for key in (batches.output_key(bid), batches.errors_key(bid), batches.lines_key(bid),
                        batches.open_key(bid)):
                pipe.expire(key, ttl)

        return await batches.update(self.backend, batch, also=writes, request_counts=counts, submitted=submitted,
                                    offset=offset)

    async def _all_ended(self, batch: Batch) -> bool:
        redis = self.backend.aredis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.scard(batches.open_key(batch.batch_id))
            pipe.strlen(batches.input_key(batch.batch_id))
            still_open, size = await pipe.execute()
        return int(still_open) == 0 and batch.record.offset >= int(size)

    async def _finish(self, batch: Batch, final: str) -> None:
        batch = await batches.update(self.backend, batch, status="finalizing", finalizing_at=time.time())
        output_id = await self._write_file(batch, batches.output_key(batch.batch_id), "batch_output")
        error_id = await self._write_file(batch, batches.errors_key(batch.batch_id), "batch_error")
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[final]
        changes: dict[str, Any] = {"status": final, "output_file_id": output_id, "error_file_id": error_id,
                                   stamp: time.time()}
        batch = await batches.update(self.backend, batch, **changes)
        await self._ended(batch)

    async def _write_file(self, batch: Batch, key: str, purpose: str) -> str | None:
        lines = [as_bytes(raw) for raw in await self.backend.aredis.lrange(key, 0, -1)]
        if not lines:
            return None
        data = b"\n".join(lines) + b"\n"
        name = f"{batch.batch_id}_{purpose.removeprefix('batch_')}.jsonl"
        made = await files.create(self.backend, batch.record.tenant, purpose, name, data, len(lines))
        return made.file_id

    async def _ended(self, batch: Batch) -> None:
        async with self.backend.aredis.pipeline(transaction=True) as pipe:
            batches.retire(pipe, batch.batch_id)
            await pipe.execute()
        url = batch.record.webhook_url
        if url is not None:
            await webhooks.enqueue_delivery(self.backend, f"batch:{batch.batch_id}", batch.record.tenant, url,
                                            batch.body())
        log.info("batch %s ended %s (%s)", batch.batch_id, batch.record.status,
                 batch.record.request_counts.model_dump())


class _LineError(Exception):
    """A line that fails alone; ``line`` is its error-file line."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line

    @classmethod
    def refused(cls, custom_id: str | None, status: int, code: str, message: str,
                param: str | None) -> _LineError:
        error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
        return cls(_line(None, custom_id, status, {"error": error}))

    @classmethod
    def unreadable(cls, custom_id: str | None, code: str, message: str) -> _LineError:
        return cls(_line(None, custom_id, 0, None, {"code": code, "message": message}))


class _quiet:
    """Ignore an API error while stopping a line (it may have ended or expired meanwhile)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ApiError)


def _line(request_id: str | None, custom_id: str | None, status: int, body: dict[str, Any] | None,
          error: dict[str, str] | None = None) -> str:
    """One line of an output or error file, in OpenAI's shape."""
    line_id = f"batch_req_{request_id or secrets.token_urlsafe(12)}"
    response = ({"status_code": status, "request_id": request_id, "body": body} if body is not None else None)
    return json.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": error},
                      ensure_ascii=False, separators=(",", ":"))


def _line_ends(complete: list[bytes], consumed: int) -> list[int]:
    """Offsets just after each of ``complete`` (the last one ends at ``consumed``)."""
    ends: list[int] = []
    end = consumed
    for text in reversed(complete):
        ends.append(end)
        end -= len(text) + 1
    return ends[::-1]


def _parse_line(text: bytes, number: int) -> tuple[str, dict[str, Any]]:
    """(custom_id, body) of an input line, or the reason it fails alone."""
    try:
        line = json.loads(text)
    except ValueError:
        raise _LineError.unreadable(None, "invalid_json_line", f"line {number} is not valid JSON") from None
    if not isinstance(line, dict):
        raise _LineError.unreadable(None, "invalid_json_line", f"line {number} is not a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _LineError.unreadable(None, "missing_custom_id", f"line {number} has no custom_id")
    if line.get("method") != "POST":
        raise _LineError.unreadable(custom_id, "invalid_method", f"line {number}: method must be POST")
    if line.get("url") != batches.ENDPOINT:
        raise _LineError.unreadable(custom_id, "invalid_url", f"line {number}: url must be {batches.ENDPOINT}")
    body = line.get("body")
    if not isinstance(body, dict):
        raise _LineError.unreadable(custom_id, "invalid_body", f"line {number}: body must be a JSON object")
    return custom_id, body


def _custom_id_of(text: bytes) -> str | None:
    try:
        line = json.loads(text)
    except ValueError:
        return None
    value = line.get("custom_id") if isinstance(line, dict) else None
    return value if isinstance(value, str) else None


def _scan(data: bytes) -> tuple[int, list[dict[str, Any]]]:
    """(lines, errors of the file as a whole): an empty file, or a custom_id used twice. Blocking."""
    seen: dict[str, int] = {}
    total = 0
    for number, text in enumerate(data.split(b"\n"), start=1):
        if not text.strip():
            continue
        total += 1
        custom_id = _custom_id_of(text)
        if custom_id is None:
            continue  # fails alone when submitted
        if custom_id in seen:
            return total, [{"code": "duplicate_custom_id", "line": number, "param": "custom_id",
                            "message": f"custom_id {custom_id!r} is used on lines {seen[custom_id]} and {number}"}]
        seen[custom_id] = number
    if total == 0:
        return 0, [{"code": "empty_file", "line": None, "param": None, "message": "the input file has no lines"}]
    return total, []
