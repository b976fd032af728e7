"""Video intake through ``POST /api/media`` on real Redis: sampled frames at exact times, the hostile files
(each a 4xx in the envelope with Redis untouched), decode off the loop and within its time limit, no second
decode for a repeat, tenant-bound ids and frames released on delete."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from gateway import video
from tests.gateway.conftest import Check
from tests.gateway.test_lifecycle import media_part, user
from tests.gateway.videos import (
    audio_only_mp4,
    colour_at,
    corrupted,
    frameless_webm,
    make_video,
    png_bomb,
    vp9_claiming,
    webm_claiming,
)
from worker.constants import IMAGE_MEDIA_PREFIX, IMAGE_PREFIX, MEDIA_PREFIX, VIDEO_DECODE_PREFIX
from worker.contract import MediaRecord

CODECS = [("mp4", "libx264"), ("mov", "libx264"), ("mov", "libx265"), ("webm", "libvpx"), ("webm", "libvpx-vp9"),
          ("webm", "libsvtav1")]


def post(client: TestClient, data: bytes, name: str = "clip.mp4", fps: str | None = None,
         headers: dict[str, str] | None = None) -> Any:
    return client.post("/api/media", files={"file": (name, data, "video/mp4")},
                       data={"fps": fps} if fps is not None else None, headers=headers)


def stored(redis_client: Redis, media_id: str) -> MediaRecord:
    return MediaRecord.model_validate_json(redis_client.get(MEDIA_PREFIX + media_id))


def expected_times(rate: int, fps: Fraction, seconds: int) -> list[float]:
    """The frame shown at each k / fps: frame floor(k * rate / fps), at its own time, each once."""
    indices = sorted({int(k / fps * rate) for k in range(int(seconds * fps))})
    return [float(Fraction(index, rate)) for index in indices]


@pytest.mark.parametrize(("fmt", "codec"), CODECS)
def test_sampled_frames_are_exact_and_show_their_second(client: TestClient, redis_client: Redis, fmt: str,
                                                        codec: str) -> None:
    data = make_video(fmt, codec, seconds=4, rate=25)
    response = post(client, data, name=f"clip.{fmt}")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "video" and body["container"] == fmt
    assert body["codec"] == {"libx264": "h264", "libx265": "hevc", "libvpx": "vp8", "libvpx-vp9": "vp9",
                             "libsvtav1": "av1"}[codec]
    assert (body["width"], body["height"], body["fps"], body["sample_fps"]) == (64, 48, 25.0, 2.0)
    assert body["duration_s"] == 4.0 and body["bytes"] == len(data)
    record = stored(redis_client, body["media_id"])
    assert [frame.t for frame in record.frames] == expected_times(25, Fraction(2), 4)
    assert body["frames"] == len(record.frames) == 8
    for frame in record.frames:
        image = Image.open(io.BytesIO(redis_client.get(IMAGE_PREFIX + frame.digest)))
        assert (image.format, image.size) == ("JPEG", (frame.width, frame.height))
        centre = image.convert("RGB").getpixel((32, 24))
        assert all(abs(got - want) <= 24 for got, want in zip(centre, colour_at(frame.t), strict=True)), frame.t
    assert client.get(f"/api/media/{body['media_id']}").json() == {**body, "expires_at": pytest.approx(
        body["expires_at"], abs=2)}


@pytest.mark.parametrize(("fps", "rate"), [("1", 25), ("4", 25), ("0.5", 10), ("3", 10)])
def test_sample_rate_is_the_clients(client: TestClient, redis_client: Redis, fps: str, rate: int) -> None:
    response = post(client, make_video(seconds=4, rate=rate), fps=fps)
    assert response.status_code == 201, response.text
    record = stored(redis_client, response.json()["media_id"])
    assert record.sample_fps == float(fps)
    assert [frame.t for frame in record.frames] == expected_times(rate, Fraction(fps), 4)


def test_frames_are_shrunk_to_the_long_edge(client_factory: Callable[..., TestClient], redis_client: Redis) -> None:
    client = client_factory(video_frame_long_edge=32)
    record = stored(redis_client, post(client, make_video(seconds=1, width=128, height=72)).json()["media_id"])
    assert {(frame.width, frame.height) for frame in record.frames} == {(32, 18)}


def test_audio_is_ignored(client: TestClient) -> None:
    response = post(client, make_video(seconds=2, audio=True))
    assert response.status_code == 201 and response.json()["frames"] == 4


def _hostile() -> dict[str, tuple[Callable[[], bytes], int, str, dict[str, Any]]]:
    small = {"video_max_duration_s": 3.0}
    return {
        "truncated": (lambda: make_video(seconds=3)[:3000], 422, "truncated_video", {}),
        # The index (moov) comes first and names frames the cut took away; the cut packet does not decode.
        "truncated-faststart": (lambda: _cut(make_video(seconds=3, options={"movflags": "faststart"})), 422,
                                "corrupt_video", {}),
        "audio-only": (audio_only_mp4, 415, "no_video_stream", {}),
        "zero-frames": (frameless_webm, 422, "truncated_video", {}),
        "claims-10-hours": (lambda: webm_claiming(36_000, make_video("webm", "libvpx-vp9", seconds=2)), 413,
                            "video_too_long", {}),
        "claims-1-second-lasts-5": (lambda: webm_claiming(1, make_video("webm", "libvpx-vp9", seconds=5)), 413,
                                    "video_too_long", small),
        "16k-by-16k": (lambda: vp9_claiming(16_000, 16_000, make_video("webm", "libvpx-vp9", seconds=1)), 413,
                       "too_many_pixels", {}),
        "over-pixel-cap": (lambda: make_video(seconds=1, width=128, height=96), 413, "too_many_pixels",
                           {"video_max_pixels": 64 * 48}),
        "tiny-frames-at-1000-fps": (lambda: make_video(seconds=2, rate=1000, width=16, height=16), 413,
                                    "frame_rate_too_high", {}),
        "declared-frames-over-cap": (lambda: make_video(seconds=2, rate=50), 413, "too_many_frames",
                                     {"video_max_frames": 60}),
        "counted-frames-over-cap": (lambda: make_video("webm", "libvpx", seconds=4, rate=25), 413,
                                    "too_many_frames", {"video_max_frames": 60}),
        "too-many-samples": (lambda: make_video(seconds=4), 413, "too_many_sampled_frames",
                             {"video_max_sample_frames": 5}),
        "corrupt-packets": (lambda: corrupted(make_video(seconds=3, width=160, height=120)), 422, "corrupt_video",
                            {}),
        "mkv-with-attachment": (lambda: make_video("matroska", seconds=1, attachment=True), 415,
                                "unsupported_video_type", {}),
        "cover-art-image-bomb": (lambda: make_video(seconds=1, cover=png_bomb()), 415, "attached_picture", {}),
        "h264-in-webm-clothing": (lambda: _as_webm(make_video("matroska", seconds=1)), 415,
                                  "unsupported_video_codec", {}),
        "mpeg4-in-mp4": (lambda: make_video(codec="mpeg4", seconds=1), 415, "unsupported_video_codec", {}),
        "gif-named-mp4": (_gif, 415, "unsupported_image_type", {}),
        "html-named-mp4": (lambda: b"<!doctype html><video src=x onerror=alert(1)>", 415,
                           "unsupported_image_type", {}),
        "over-byte-cap": (lambda: make_video(seconds=2, width=160, height=120), 413, "video_too_large",
                          {"video_max_bytes": 1024}),
    }


def _cut(data: bytes) -> bytes:
    return data[:len(data) * 2 // 3]


def _as_webm(data: bytes) -> bytes:
    # The DocType "matroska" rewritten as "webm" padded with an EBML Void element, so the sizes still add up.
    return data.replace(b"\x42\x82\x88matroska", b"\x42\x82\x84webm\xec\x82\x00\x00", 1)


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "GIF")
    return buffer.getvalue()


HOSTILE = _hostile()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_video(client_factory: Callable[..., TestClient], refused: Check, name: str) -> None:
    build, status, code, overrides = HOSTILE[name]
    data = build()
    client = client_factory(**overrides)
    refused(post(client, data), status, code, "file")


@pytest.mark.parametrize(("fps", "status"), [("0", 422), ("5", 422), ("nan", 422), ("-1", 422), ("two", 422)])
def test_bad_fps(client: TestClient, refused: Check, fps: str, status: int) -> None:
    refused(post(client, make_video(seconds=1), fps=fps), status, "invalid_parameter", "fps")


def test_fps_on_an_image_is_refused(client: TestClient, refused: Check,
                                    image_factory: Callable[..., bytes]) -> None:
    refused(post(client, image_factory((1, 2, 3)), name="a.png", fps="2"), 422, "invalid_parameter", "fps")


def test_video_where_an_image_is_expected(client: TestClient, refused: Check, redis_client: Redis) -> None:
    data = make_video(seconds=1)
    inline = client.post("/api/infer", files={"image": ("v.png", data, "image/png")}, data={"prompt": "q"})
    refused(inline, 415, "unsupported_image_type")
    media_id = post(client, data).json()["media_id"]
    before = set(redis_client.keys("*"))
    response = client.post("/api/infer", json={"messages": [user(media_part(media_id), "What happens?")]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "wrong_media_kind"
    assert set(redis_client.keys("*")) == before


def test_decode_runs_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = video.sample

    def spy(*args: Any) -> video.Sampled:
        try:
            asyncio.get_running_loop()
            seen.append(False)
        except RuntimeError:
            seen.append(True)  # no loop in this thread: not the event loop's
        return real(*args)

    monkeypatch.setattr(video, "sample", spy)
    assert post(client, make_video(seconds=1)).status_code == 201
    assert seen == [True]


def test_a_slow_decode_is_refused_and_nothing_stored(client_factory: Callable[..., TestClient],
                                                     refused: Check) -> None:
    # The decode's own deadline, checked between packets.
    refused(post(client_factory(video_decode_timeout_s=1e-6), make_video(seconds=2)), 422,
            "video_decode_timeout", "file")


def test_a_decode_stuck_in_a_call_is_answered_in_time(client_factory: Callable[..., TestClient], refused: Check,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def stuck(*args: Any) -> video.Sampled:
        time.sleep(2.5)
        raise AssertionError("abandoned")

    monkeypatch.setattr(video, "sample", stuck)
    client = client_factory(video_decode_timeout_s=0.2)
    started = time.monotonic()
    refused(post(client, make_video(seconds=1)), 422, "video_decode_timeout", "file")
    assert time.monotonic() - started < 2.0


def test_repeat_upload_costs_no_second_decode(client_factory: Callable[..., TestClient], redis_client: Redis,
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from gateway.auth import hash_key

    calls: list[float] = []
    real = video.sample
    monkeypatch.setattr(video, "sample", lambda data, fps, *rest: calls.append(fps) or real(data, fps, *rest))
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"acme": [hash_key("key-acme")], "beta": [hash_key("key-beta")]}))
    client = client_factory(auth_enabled=True, api_keys_file=keys)
    acme, beta = {"Authorization": "Bearer key-acme"}, {"Authorization": "Bearer key-beta"}
    data = make_video(seconds=3)
    first, second = (post(client, data, headers=acme).json() for _ in range(2))
    assert calls == [2.0]
    assert first["media_id"] != second["media_id"]
    assert {k: v for k, v in first.items() if k not in ("media_id", "expires_at")} == \
        {k: v for k, v in second.items() if k not in ("media_id", "expires_at")}
    assert stored(redis_client, first["media_id"]).frames == stored(redis_client, second["media_id"]).frames
    post(client, data, fps="1", headers=acme)  # another rate is another decode
    assert calls == [2.0, 1.0]
    # Another tenant: its own decode (the speed of its upload tells it nothing), an id only it knows.
    theirs = post(client, data, headers=beta).json()
    assert calls == [2.0, 1.0, 2.0]
    assert client.get(f"/api/media/{first['media_id']}", headers=beta).status_code == 404
    assert client.get(f"/api/media/{theirs['media_id']}", headers=beta).status_code == 200


def test_delete_releases_frames_no_other_item_holds(client: TestClient, redis_client: Redis) -> None:
    data = make_video(seconds=3)
    one, two = (post(client, data).json()["media_id"] for _ in range(2))
    frames = {frame.digest for frame in stored(redis_client, one).frames}
    assert len(frames) == 3  # one colour a second, each a distinct JPEG stored once
    assert client.delete(f"/api/media/{one}").json() == {"media_id": one, "deleted": True}
    assert all(redis_client.exists(IMAGE_PREFIX + digest) for digest in frames)
    assert client.get(f"/api/media/{one}").status_code == 404
    client.delete(f"/api/media/{two}")
    assert not any(redis_client.exists(IMAGE_PREFIX + digest) for digest in frames)
    assert not any(redis_client.exists(IMAGE_MEDIA_PREFIX + digest) for digest in frames)
    assert not redis_client.keys(VIDEO_DECODE_PREFIX + "*")


def test_a_kept_decode_whose_frames_expired_is_decoded_again(client: TestClient, redis_client: Redis,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = video.sample
    monkeypatch.setattr(video, "sample", lambda *args: calls.append(1) or real(*args))
    data = make_video(seconds=2)
    media_id = post(client, data).json()["media_id"]
    for frame in stored(redis_client, media_id).frames:
        redis_client.delete(IMAGE_PREFIX + frame.digest)  # as their TTL would
    again = post(client, data)
    assert again.status_code == 201 and len(calls) == 2
    assert all(redis_client.exists(IMAGE_PREFIX + frame.digest)
               for frame in stored(redis_client, again.json()["media_id"]).frames)
