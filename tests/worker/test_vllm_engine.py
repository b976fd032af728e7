"""VllmEngine against the tiny random-weight Qwen3-VL: real vLLM, real batching, real error paths.

The ``engine``-marked tests share one engine for the whole module (startup is about a minute on a CPU). They
are plain functions that drive it through one module-long event loop, because AsyncLLM's output handler is
bound to the loop it first ran on. AsyncLLM spawns its EngineCore child; that works under pytest because
pytest's own entry points keep their work under ``if __name__ == "__main__":``.

The tiny model is built with ``initializer_range=1.0``, so greedy answers differ by image and prompt and
the tests can tell whose answer a request received. The unmarked tests at the end check the error mapping
against vLLM's exact messages without an engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image

from worker.config import WorkerSettings
from worker.contract import ErrorCode, Message, Role, SamplingParams, TextPart, VideoPart
from worker.engine import EngineError, EngineOutput, EngineRequest, VideoInput
from worker.vllm_engine import VllmEngine, decode_image, to_engine_error

ROOT = Path(__file__).resolve().parents[2]
PREBUILT = ROOT / ".cache" / "models" / "tiny-qwen3-vl"
T = TypeVar("T")
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model ``make model`` built, or a fresh build (seconds) when there is none."""
    if (PREBUILT / "config.json").exists():
        return PREBUILT
    from worker.tiny_model import build

    return build(tmp_path_factory.mktemp("models") / "tiny-qwen3-vl")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def engine(loop: asyncio.Runner, model_dir: Path) -> Iterator[VllmEngine]:
    pytest.importorskip("vllm", reason="the vLLM engine tests need the CPU worker venv (make venv)")
    settings = WorkerSettings(model=str(model_dir), max_num_seqs=8, max_num_batched_tokens=256,
                              max_model_len=4096, enforce_eager=True, limit_mm_images=2, limit_mm_videos=1)
    started = loop.run(VllmEngine.start(settings))
    yield started
    started.shutdown()


@pytest.fixture
def run(loop: asyncio.Runner) -> Any:
    def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
        return loop.run(coroutine)

    return run_coroutine


def png(color: str, size: tuple[int, int] = (224, 224)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def request(request_id: str, prompt: str, images: list[bytes],
            sampling: SamplingParams = GREEDY) -> EngineRequest:
    return EngineRequest.single(request_id, prompt, images, sampling)


def generate_error(run: Any, engine: VllmEngine, req: EngineRequest) -> EngineError:
    with pytest.raises(EngineError) as caught:
        run(engine.generate(req))
    return caught.value


@pytest.mark.engine
def test_answer_depends_on_the_image_and_repeats_for_the_same_input(engine: VllmEngine, run: Any) -> None:
    outputs = {color: run(engine.generate(request(color, "What colour is this?", [png(color)])))
               for color in ("red", "blue", "green")}
    again = run(engine.generate(request("red-again", "What colour is this?", [png("red")])))

    assert len({output.text for output in outputs.values()}) == 3
    assert again == outputs["red"]
    red = outputs["red"]
    # 224x224 is resized to 256x256: 8x8 merged 32-px tiles = 64 visual tokens, plus the chat-template text.
    assert red.prompt_tokens > 64
    assert red.completion_tokens == 16
    assert red.finish_reason == "length"


@pytest.mark.engine
def test_text_only_prompt_is_answered(engine: VllmEngine, run: Any) -> None:
    output = run(engine.generate(request("text", "Say something.", [])))

    assert output.text
    assert 0 < output.prompt_tokens < 64


@pytest.mark.engine
def test_concurrent_calls_each_get_their_own_answer(engine: VllmEngine, run: Any) -> None:
    colors = ["red", "blue", "green", "white", "black", "yellow", "purple", "orange"]
    requests = [request(f"c{i}", f"Describe picture {i}.", [png(color)]) for i, color in enumerate(colors)]
    one_by_one = [run(engine.generate(req)) for req in requests]

    async def all_at_once() -> list[EngineOutput]:
        return list(await asyncio.gather(*(engine.generate(req) for req in requests)))

    together = run(all_at_once())

    assert len({output.text for output in one_by_one}) == len(colors)
    assert [output.text for output in together] == [output.text for output in one_by_one]


@pytest.mark.engine
def test_batch_priority_requests_share_the_engine_with_interactive_ones(engine: VllmEngine, run: Any) -> None:
    # The worker runs vLLM with scheduling_policy=priority (its default): batch jobs pass priority 1.
    assert WorkerSettings.model_fields["scheduling_policy"].default == "priority"
    requests = [dataclasses.replace(request(f"p{i}", f"Describe picture {i}.", [png(color)]), priority=i % 2)
                for i, color in enumerate(["red", "blue", "green", "white"])]

    async def all_at_once() -> list[EngineOutput]:
        return list(await asyncio.gather(*(engine.generate(req) for req in requests)))

    together = run(all_at_once())
    alone = [run(engine.generate(dataclasses.replace(req, request_id=req.request_id + "-0", priority=0)))
             for req in requests]
    assert [output.text for output in together] == [output.text for output in alone]


def jpeg(color: str, size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.engine
def test_a_video_window_is_answered_with_its_absolute_times(engine: VllmEngine, run: Any) -> None:
    # Four frames sampled at 2 fps from 60 s on: a window of a longer video.
    video = VideoInput(frames=[jpeg(c) for c in ("red", "red", "blue", "blue")], times=[60.0, 60.5, 61.0, 61.5],
                       fps=2.0)
    req = EngineRequest(request_id="video", messages=[Message(role=Role.USER, content=[
        VideoPart(video=0), TextPart(text="When does it turn blue?")])], images=[], videos=[video], sampling=GREEDY)
    output = run(engine.generate(req))
    assert output.completion_tokens == 16 and output.prompt_tokens > 8
    rendered = run(engine._tokenize(engine._render(req)))
    text = engine._processor.tokenizer.decode(rendered["prompt_token_ids"])
    # Qwen3-VL prefixes each temporal patch (2 frames) with the mean of its frames' times: absolute, not
    # counted from the window's start (that would be <0.2 seconds>).
    assert "<60.2 seconds>" in text and "<61.2 seconds>" in text and "<0.2 seconds>" not in text


@pytest.mark.engine
def test_too_long_text_is_rejected_and_the_engine_keeps_serving(engine: VllmEngine, run: Any) -> None:
    before = run(engine.generate(request("before", "What colour is this?", [png("blue")])))

    error = generate_error(run, engine, request("long", "hello " * 5000, []))
    after = run(engine.generate(request("after", "What colour is this?", [png("blue")])))

    assert error.code is ErrorCode.PROMPT_TOO_LONG
    assert "4096" in error.message
    assert "Traceback" not in error.message
    assert after == before


@pytest.mark.engine
def test_text_that_fits_but_not_with_its_images_is_too_long(engine: VllmEngine, run: Any) -> None:
    # About 3,500 text tokens fit in 4096; two 1600x1600 images add about 1,950 visual tokens.
    big = [png("red", (1600, 1600)), png("blue", (1600, 1600))]

    error = generate_error(run, engine, request("long-images", "hello " * 3500, big))

    assert error.code is ErrorCode.PROMPT_TOO_LONG
    assert "4096" in error.message


@pytest.mark.engine
@pytest.mark.parametrize("data", [b"not an image at all", png("red")[:100], b""],
                         ids=["garbage", "truncated-png", "empty"])
def test_corrupt_image_is_unreadable(engine: VllmEngine, run: Any, data: bytes) -> None:
    error = generate_error(run, engine, request("corrupt", "What is this?", [data]))

    assert error.code is ErrorCode.IMAGE_UNREADABLE
    assert error.message == "Image 1 could not be decoded."


@pytest.mark.engine
def test_image_too_elongated_for_the_model_is_unreadable(engine: VllmEngine, run: Any) -> None:
    error = generate_error(run, engine, request("thin", "What is this?", [png("red", (2, 600))]))

    assert error.code is ErrorCode.IMAGE_UNREADABLE


@pytest.mark.engine
def test_more_images_than_the_limit_is_a_bad_job(engine: VllmEngine, run: Any) -> None:
    error = generate_error(run, engine, request("many", "Compare.", [png("red")] * 3))

    assert error.code is ErrorCode.BAD_JOB


@pytest.mark.engine
def test_abort_stops_a_running_request(engine: VllmEngine, run: Any) -> None:
    long_answer = SamplingParams(temperature=0.0, max_tokens=3000)

    async def start_then_abort() -> tuple[EngineError | EngineOutput, float]:
        task = asyncio.create_task(engine.generate(request("to-abort", "Talk.", [png("red")], long_answer)))
        await asyncio.sleep(0.5)
        aborted_at = time.perf_counter()
        await engine.abort("to-abort")
        try:
            return await task, 0.0
        except EngineError as exc:
            return exc, time.perf_counter() - aborted_at

    outcome, seconds = run(start_then_abort())

    assert isinstance(outcome, EngineError)
    assert outcome.code is ErrorCode.CANCELED
    assert seconds < 2.0



@pytest.mark.engine
def test_abort_before_the_engine_got_the_request_still_cancels_it(engine: VllmEngine, run: Any) -> None:
    async def abort_while_preparing() -> EngineError | EngineOutput:
        task = asyncio.create_task(engine.generate(request("early", "Talk.", [png("red", (1000, 1000))])))
        await asyncio.sleep(0)  # the task is now decoding its image in a thread
        await engine.abort("early")
        try:
            return await task
        except EngineError as exc:
            return exc

    outcome = run(abort_while_preparing())

    assert isinstance(outcome, EngineError)
    assert outcome.code is ErrorCode.CANCELED

# vllm 0.32's wording, verbatim.
TOO_LONG_MESSAGES = [
    ("This model's maximum context length is 4096 tokens. However, your prompt contains at least 4097 input "
     "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
     "prompt. (parameter=input_tokens, value=4097)", "at least 4097 tokens"),
    ("This model's maximum context length is 4096 tokens. However, your prompt contains 30000 characters (more "
     "than 24576 characters, which is the upper bound for 4096 input tokens). Please reduce the length of the "
     "input prompt.", "too long"),
    ("The decoder prompt (length 5435) is longer than the maximum model length of 4096. Make sure that "
     "`max_model_len` is no smaller than the number of text tokens plus multimodal tokens.", "5435 tokens"),
    ("The decoder prompt (length 4096) plus the number of requested output tokens (at least 1) is longer than "
     "the maximum model length of 4096. Make sure that `max_model_len` is no smaller than the number of text "
     "tokens (prompt + requested output tokens).", "4096 tokens"),
]


class VLLMClientError(Exception):
    """Stands in for vllm.exceptions.VLLMClientError, which the mapping recognises by name."""


class VLLMValidationError(VLLMClientError, ValueError):
    pass


class EngineDeadError(Exception):
    pass


@pytest.mark.parametrize(("message", "size"), TOO_LONG_MESSAGES)
def test_every_vllm_too_long_message_maps_to_prompt_too_long(message: str, size: str) -> None:
    error = to_engine_error(VLLMValidationError(message))

    assert error.code is ErrorCode.PROMPT_TOO_LONG
    assert error.message == (f"The prompt is {size}; this model accepts at most 4096 tokens of text and "
                             "images together.")


def test_too_long_is_found_behind_a_wrapper() -> None:
    try:
        try:
            raise VLLMValidationError(TOO_LONG_MESSAGES[2][0])
        except ValueError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        error = to_engine_error(outer)

    assert error.code is ErrorCode.PROMPT_TOO_LONG


@pytest.mark.parametrize("exc", [
    MemoryError(),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"),
    type("OutOfMemoryError", (RuntimeError,), {})("CUDA error"),
], ids=["host", "cuda-message", "torch-class"])
def test_out_of_memory_maps_to_engine_oom(exc: BaseException) -> None:
    assert to_engine_error(exc).code is ErrorCode.ENGINE_OOM


def test_dead_engine_maps_to_engine_error() -> None:
    error = to_engine_error(EngineDeadError("EngineCore encountered an issue. See stack trace above."))

    assert error.code is ErrorCode.ENGINE_ERROR
    assert error.message == "The inference engine stopped."


def test_other_client_errors_are_bad_jobs_with_vllms_first_sentence() -> None:
    error = to_engine_error(VLLMValidationError("At most 2 image(s) may be provided in one prompt. More text."))

    assert error.code is ErrorCode.BAD_JOB
    assert error.message == "At most 2 image(s) may be provided in one prompt."


def test_unexpected_errors_do_not_leak_their_text() -> None:
    error = to_engine_error(KeyError("Traceback (most recent call last): secret internal state"))

    assert error.code is ErrorCode.ENGINE_ERROR
    assert error.message == "The engine failed to process the request."


def test_decode_image_gives_rgb_and_refuses_what_qwen_cannot_take() -> None:
    grey = io.BytesIO()
    Image.new("L", (40, 30), 128).save(grey, format="PNG")

    assert decode_image(grey.getvalue()).mode == "RGB"
    with pytest.raises(EngineError) as garbage:
        decode_image(b"GIF89a-but-not-really", index=1)
    assert (garbage.value.code, garbage.value.message) == (ErrorCode.IMAGE_UNREADABLE,
                                                           "Image 2 could not be decoded.")
    with pytest.raises(EngineError) as thin:
        decode_image(png("red", (1, 201)))
    assert thin.value.code is ErrorCode.IMAGE_UNREADABLE
    assert decode_image(png("red", (1, 200))).size == (1, 200)
