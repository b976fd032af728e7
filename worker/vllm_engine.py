"""The real engine: vLLM's ``AsyncLLM`` serving a Qwen3-VL model, behind the ``worker.engine.Engine`` protocol.

Build it once in the worker entry point with ``engine = await VllmEngine.start(settings)``. Concurrent
``generate()`` calls are batched by vLLM's scheduler (continuous batching, chunked prefill); each call
renders the prompt with the model's own chat template, decodes its images off the event loop, and returns
the final output only.

``AsyncLLM`` always runs its EngineCore in a *spawned* child process (whatever
``VLLM_ENABLE_V1_MULTIPROCESSING`` says). A spawned child re-imports the parent's ``__main__`` module, so
the program that builds this engine must do so under ``if __name__ == "__main__":`` (``python -m worker``
and pytest both qualify); otherwise the child starts another engine in turn and startup fails.

Failures reach the caller as ``EngineError`` with a client-actionable ``ErrorCode``:

    EngineError(PROMPT_TOO_LONG)   text plus image tokens exceed max_model_len
    EngineError(IMAGE_UNREADABLE)  an image's bytes do not decode
    EngineError(BAD_JOB)           more images than limit_mm_images, or a request vLLM rejects as invalid
    EngineError(CANCELED)          abort() was called for the request while it ran
    EngineError(ENGINE_OOM)        the engine ran out of (GPU or host) memory
    EngineError(ENGINE_ERROR)      anything else, the engine process dying included (see ``errored``)

Messages are one short sentence; tracebacks go to the log, never into the message.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any, cast

from PIL import Image

from worker.config import WorkerSettings
from worker.contract import ErrorCode, ImagePart, ResponseFormat, VideoPart
from worker.engine import Chunk, EngineError, EngineOutput, EngineRequest, VideoInput, generate

log = logging.getLogger(__name__)

# vLLM on CPU sizes its KV cache from this variable (GiB). Unset, it claims gpu_memory_utilization (0.8) of
# the NUMA node's memory and fails to start when other processes (a second worker, the tests) hold part of
# it. 1 GiB holds about 9k tokens of a 2B Qwen3-VL, 2M of the tiny model. An operator's own value wins.
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1"}

# vLLM's only signal that a prompt is too long is the wording of a VLLMValidationError. vllm 0.32 has four:
#   "This model's maximum context length is 4096 tokens. However, your prompt contains 30000 characters (...)"
#   "This model's maximum context length is 4096 tokens. However, your prompt contains 5003 input tokens, ..."
#   "The decoder prompt (length 4200) is longer than the maximum model length of 4096. Make sure ..."
#   "The decoder prompt (length 4096) plus the number of requested output tokens (at least 1) is longer than
#    the maximum model length of 4096. ..."
# The first two come from tokenizing the text, the last two after images were expanded to visual tokens.
_TOO_LONG_LIMIT = re.compile(r"(?:maximum context length is|longer than the maximum model length of) (\d+)")
_TOO_LONG_LENGTH = re.compile(r"(?:prompt \(length |contains )((?:at least )?\d+)(?:\)| input tokens)")

# Qwen2/3-VL's image processor refuses images more elongated than this.
MAX_ASPECT_RATIO = 200


class VllmEngine:
    """Qwen3-VL on vLLM's AsyncLLM; implements ``worker.engine.Engine``. Build with ``start()``."""

    def __init__(self, llm: Any, processor: Any, settings: WorkerSettings) -> None:
        self._llm = llm
        self._processor = processor
        self._settings = settings
        self._priorities = settings.scheduling_policy == "priority"
        self._closed = False
        # Requests between generate() entry and engine submission, and those of them abort() was called for:
        # vLLM can only abort what it has been given, so an early abort is remembered here.
        self._preparing: set[str] = set()
        self._aborted_early: set[str] = set()

    @classmethod
    async def start(cls, settings: WorkerSettings) -> VllmEngine:
        """Load the model and start the engine (a minute on a CPU; longer for a large model on a GPU).

        The blocking part runs in a thread so the caller's event loop keeps serving (health, heartbeats).
        """
        apply_cpu_env_defaults()
        llm, processor = await asyncio.to_thread(_build, settings)
        # AsyncLLM built outside the loop starts its output handler lazily; a first utility call starts it
        # now, so an engine failure before the first request is still noticed.
        await llm.get_supported_tasks()
        return cls(llm, processor, settings)

    @property
    def errored(self) -> bool:
        """True once the engine process died; every later call fails and the worker should restart."""
        return bool(self._llm.errored)

    async def stream(self, request: EngineRequest) -> AsyncIterator[Chunk]:
        """Run one request, yielding its new text as vLLM produces it (``stream_interval`` tokens at a
        time); the last chunk carries the final output. Raises ``EngineError`` (see the module docstring)."""
        self._check_request(request)
        request_id = request.request_id
        self._preparing.add(request_id)
        try:
            prompt = await asyncio.to_thread(self._render, request)
            engine_input = await self._tokenize(prompt)
        except Exception as exc:
            raise to_engine_error(exc) from exc
        finally:
            self._preparing.discard(request_id)
            aborted = request_id in self._aborted_early
            self._aborted_early.discard(request_id)
        if aborted:
            raise EngineError(ErrorCode.CANCELED, "The request was aborted.")
        async for chunk in self._run(engine_input, request):
            yield chunk

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """The whole answer of one request."""
        return await generate(self, request)

    async def abort(self, request_id: str) -> None:
        """Stop a request; its ``generate()`` call raises ``EngineError(CANCELED)``. Unknown ids are ignored."""
        if request_id in self._preparing:
            self._aborted_early.add(request_id)
        await self._llm.abort(request_id)

    def shutdown(self) -> None:
        """Stop the engine process and free its memory (takes up to about 5 s). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._llm.shutdown()
        finally:
            # AsyncLLM.__del__ calls shutdown() again. vLLM keeps import-time exception tracebacks that pin the
            # startup frame, so that happens at interpreter exit, when vLLM's module globals are already None
            # and it prints "TypeError: 'NoneType' object is not callable". Once is enough.
            self._llm.shutdown = _noop

    def _lora(self, adapter: str | None) -> Any:
        """vLLM's LoRARequest for a served adapter; its int id is its place in the settings (stable per pool)."""
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        names = list(self._settings.lora_adapters)
        return LoRARequest(adapter, names.index(adapter) + 1, self._settings.lora_adapters[adapter])

    def _check_request(self, request: EngineRequest) -> None:
        if self._closed:
            raise EngineError(ErrorCode.ENGINE_ERROR, "The engine is shut down.")
        # vLLM would reject it too, but only after every image was decoded and processed.
        limit = self._settings.limit_mm_images
        if len(request.images) > limit:
            raise EngineError(ErrorCode.BAD_JOB, f"At most {limit} images per request; got {len(request.images)}.")
        videos = self._settings.limit_mm_videos
        if len(request.videos) > videos:
            raise EngineError(ErrorCode.BAD_JOB, f"This worker takes at most {videos} videos per request "
                                                 f"(VLQ_WORKER_LIMIT_MM_VIDEOS); got {len(request.videos)}.")

    def _render(self, request: EngineRequest) -> dict[str, Any]:
        """Decode the images and videos and render the conversation with the model's chat template: CPU work,
        run in a thread. Every image and video goes where its part stands; vLLM takes them in that order."""
        images = [decode_image(data, index) for index, data in enumerate(request.images)]
        order: list[int] = []
        video_order: list[int] = []
        messages = []
        for message in request.messages:
            content: list[dict[str, str]] = []
            for part in message.content:
                if isinstance(part, ImagePart):
                    order.append(part.image)
                    content.append({"type": "image"})
                elif isinstance(part, VideoPart):
                    video_order.append(part.video)
                    content.append({"type": "video"})
                else:
                    content.append({"type": "text", "text": part.text})
            messages.append({"role": message.role.value, "content": content})
        text = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt: dict[str, Any] = {"prompt": text}
        data: dict[str, Any] = {}
        if order:
            data["image"] = [images[index] for index in order]
        if video_order:
            data["video"] = [video_input(request.videos[index]) for index in video_order]
        if data:
            prompt["multi_modal_data"] = data
        return prompt

    async def _tokenize(self, prompt: dict[str, Any]) -> Any:
        # The renderer tokenizes, checks the length and runs the image processor (which expands each
        # <|image_pad|> to its visual tokens) on its own thread pools. Calling it here rather than passing
        # the raw prompt to generate() is vLLM's documented path (the raw one logs a deprecation warning),
        # and it keeps input errors apart from engine errors.
        renderer = self._llm.renderer
        (engine_input,) = await renderer.render_cmpl_async([prompt], renderer.default_cmpl_tok_params)
        return engine_input

    async def _run(self, engine_input: Any, request: EngineRequest) -> AsyncIterator[Chunk]:
        prompt_tokens = 0
        completion_tokens = 0
        parts: list[str] = []
        try:
            async for output in self._llm.generate(engine_input, _vllm_sampling(request), request.request_id,
                                                   lora_request=self._lora(request.adapter),
                                                   priority=request.priority if self._priorities else 0):
                prompt_tokens = len(output.prompt_token_ids or ()) or prompt_tokens
                if not output.outputs:
                    continue
                completion = output.outputs[0]
                completion_tokens = _count_tokens(completion, completion_tokens, request.stream)
                if completion.finish_reason == "abort":
                    raise EngineError(ErrorCode.CANCELED, "The request was aborted.")
                text = completion.text if request.stream else completion.text[len("".join(parts)):]
                parts.append(text)
                if output.finished:
                    final = EngineOutput(text="".join(parts), prompt_tokens=prompt_tokens,
                                         completion_tokens=completion_tokens,
                                         finish_reason=completion.finish_reason)
                    yield Chunk(text=text, final=final)
                    return
                if text:
                    yield Chunk(text=text)
        except Exception as exc:
            raise to_engine_error(exc) from exc
        raise EngineError(ErrorCode.ENGINE_ERROR, "The engine returned no output.")


def _count_tokens(completion: Any, so_far: int, delta: bool) -> int:
    # DELTA outputs carry only the new token ids; FINAL_ONLY ones carry them all.
    return so_far + len(completion.token_ids) if delta else len(completion.token_ids)


def video_input(video: VideoInput) -> tuple[Any, dict[str, Any]]:
    """vLLM's ``(frames, metadata)`` for Qwen3-VL: a uint8 (T, H, W, 3) array of the sampled frames and
    metadata saying they are already sampled. ``frames_indices`` are the frames' places in the whole video
    at the sampling rate, so the ``<t seconds>`` the processor writes are absolute, window or not."""
    import numpy as np

    frames = []
    for index, data in enumerate(video.frames):
        with Image.open(io.BytesIO(data)) as image:
            frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        if frames[-1].shape != frames[0].shape:
            raise EngineError(ErrorCode.IMAGE_UNREADABLE, f"Frame {index} of a video differs in size from the first.")
    indices = [round(t * video.fps) for t in video.times]
    metadata = {"fps": video.fps, "total_num_frames": indices[-1] + 1, "duration": (indices[-1] + 1) / video.fps,
                "frames_indices": indices, "video_backend": "vlq", "do_sample_frames": False}
    return np.stack(frames), metadata


def decode_image(data: bytes, index: int = 0) -> Image.Image:
    """Decode encoded image bytes fully (``load()``: PIL is lazy) to RGB, or raise IMAGE_UNREADABLE."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL raises UnidentifiedImageError (an OSError) for unknown formats, OSError for truncated data
        # and SyntaxError/ValueError from some format plugins on corrupt headers.
        raise EngineError(ErrorCode.IMAGE_UNREADABLE, f"Image {index + 1} could not be decoded.") from exc
    # Qwen-VL's resize (smart_resize) raises a bare ValueError beyond this, deep inside vLLM's processor.
    if max(rgb.size) > MAX_ASPECT_RATIO * min(rgb.size):
        raise EngineError(ErrorCode.IMAGE_UNREADABLE,
                          f"Image {index + 1} is more than {MAX_ASPECT_RATIO} times longer than it is wide.")
    return rgb


def to_engine_error(exc: BaseException) -> EngineError:
    """Map an exception from vLLM to an EngineError whose message is safe to show a client."""
    if isinstance(exc, EngineError):
        return exc
    chain = _exception_chain(exc)
    for err in chain:
        if limit := _TOO_LONG_LIMIT.search(str(err)):
            return _too_long(limit.group(1), _TOO_LONG_LENGTH.search(str(err)))
    if any(_is_oom(err) for err in chain):
        return EngineError(ErrorCode.ENGINE_OOM, "The engine ran out of memory.")
    if any(type(err).__name__ == "EngineDeadError" for err in chain):
        return EngineError(ErrorCode.ENGINE_ERROR, "The inference engine stopped.")
    client_error = next((err for err in chain if _is_vllm_client_error(err)), None)
    if client_error is not None:
        return EngineError(ErrorCode.BAD_JOB, _first_sentence(str(client_error)))
    log.error("engine call failed", exc_info=exc)
    return EngineError(ErrorCode.ENGINE_ERROR, "The engine failed to process the request.")


def _too_long(limit: str, length: re.Match[str] | None) -> EngineError:
    size = f"{length.group(1)} tokens" if length else "too long"
    return EngineError(ErrorCode.PROMPT_TOO_LONG, f"The prompt is {size}; this model accepts at most {limit} "
                                                  "tokens of text and images together.")


def _exception_chain(exc: BaseException) -> list[BaseException]:
    # vLLM wraps failures (EngineGenerateError from ..., InputStreamError), so the cause may be a few links in.
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_oom(err: BaseException) -> bool:
    # torch.OutOfMemoryError (CUDA) and MemoryError (host); an OOM inside the engine process reaches us
    # only as text, hence the message check.
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or "out of memory" in str(err).lower())


def _is_vllm_client_error(err: BaseException) -> bool:
    return any(cls.__name__ == "VLLMClientError" for cls in type(err).__mro__)


def _first_sentence(message: str, limit: int = 200) -> str:
    first = message.strip().splitlines()[0] if message.strip() else "The engine rejected the request."
    sentence = first.split(". ")[0].rstrip(".")
    return (sentence[: limit - 1] + "…" if len(sentence) > limit else sentence) + "."


def _noop(*args: object, **kwargs: object) -> None:
    return None


def _to_output(final: Any) -> EngineOutput:
    if final is None or not final.outputs:
        raise EngineError(ErrorCode.ENGINE_ERROR, "The engine returned no output.")
    completion = final.outputs[0]
    if completion.finish_reason == "abort":
        raise EngineError(ErrorCode.CANCELED, "The request was aborted.")
    return EngineOutput(text=completion.text, prompt_tokens=len(final.prompt_token_ids or ()),
                        completion_tokens=len(completion.token_ids), finish_reason=completion.finish_reason)


def _vllm_sampling(request: EngineRequest) -> Any:
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    sampling = request.sampling
    # DELTA: each output holds only the new text (streamed to clients); FINAL_ONLY costs no per-step output.
    kind = RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY
    return VllmSamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, seed=sampling.seed, output_kind=kind,
                              structured_outputs=_structured(request.response_format))


def _structured(response_format: ResponseFormat) -> Any:
    if not response_format.is_json:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if response_format.type == "json_schema" and response_format.json_schema is not None:
        return StructuredOutputsParams(json=response_format.json_schema)
    return StructuredOutputsParams(json_object=True)


def apply_cpu_env_defaults() -> None:
    """Set vLLM's CPU variables when there is no CUDA device; must happen before the engine process spawns."""
    import torch

    if torch.cuda.is_available():
        return
    for name, value in CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def engine_args(settings: WorkerSettings) -> Any:
    """AsyncEngineArgs from the worker settings."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=settings.model,
        # A str in the settings; vLLM validates the value.
        dtype=cast(Any, settings.dtype),
        max_model_len=settings.max_model_len,
        enable_chunked_prefill=settings.enable_chunked_prefill,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_num_seqs=settings.max_num_seqs,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        # Videos per prompt (0: off). A video budget makes vLLM profile a long video at start (more memory, and
        # about 53 s instead of 40 on 2 cores), so only pools that answer videos turn it on.
        limit_mm_per_prompt={"image": settings.limit_mm_images, "video": settings.limit_mm_videos},
        # Streamed outputs every few tokens rather than every token: less front-end work per job.
        stream_interval=settings.stream_interval,
        # JSON answers (response_format, task presets). Whitespace between JSON tokens is refused on the
        # engine: per request it has no effect, and without it a weak model can emit blanks until max_tokens.
        structured_outputs_config=cast(Any, {"backend": settings.structured_outputs_backend,
                                             "disable_any_whitespace": settings.structured_outputs_disable_whitespace}),
        # Caps visual tokens per image (32x32 px each for Qwen3-VL); the processor resizes larger images.
        mm_processor_kwargs={"size": {"longest_edge": settings.max_image_pixels_for_model}},
        # vLLM caches processed images (4 GiB by default, held in both the front-end and the engine core);
        # vlq's exact cache already answers repeats before they reach a worker, so that cache mostly grows.
        mm_processor_cache_gb=settings.mm_processor_cache_gb,
        enforce_eager=settings.enforce_eager,
        # Batch-priority jobs yield to interactive ones in the scheduler (vLLM refuses priorities under fcfs).
        scheduling_policy=settings.scheduling_policy,
        enable_lora=bool(settings.lora_adapters),
        max_loras=settings.max_loras,
        max_lora_rank=cast(Any, settings.max_lora_rank),  # checked against vLLM's choices in WorkerSettings
        seed=settings.seed,
        trust_remote_code=settings.trust_remote_code,
    )


def _build(settings: WorkerSettings) -> tuple[Any, Any]:
    """Blocking: load the HF processor (for its chat template) and start the AsyncLLM."""
    from transformers import AutoProcessor
    from vllm.v1.engine.async_llm import AsyncLLM

    processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
        settings.model, trust_remote_code=settings.trust_remote_code)
    llm = AsyncLLM.from_engine_args(engine_args(settings))
    return llm, processor


def gpu_memory() -> tuple[int, int] | None:
    """(used, total) bytes of the current CUDA device, or None without one.

    Device-wide (``mem_get_info``), because the model lives in the engine's child process, not in this one.
    The first call creates a CUDA context in the calling process (a few hundred MB of GPU memory).
    """
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(total - free), int(total)
