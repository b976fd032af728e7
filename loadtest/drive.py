"""A client process for benchmarks: submit distinct requests to a gateway, long-poll them, print JSON stats.

Run in its own process so that a benchmark which also hosts an engine (``loadtest.bench_engine``) does not
share its event loop or GIL with the client. Images and prompts are generated before the clock starts.

    python -m loadtest.drive --port 8000 --count 64 --concurrency 16 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from loadtest.client import infer_request, submit_and_wait
from loadtest.images import FULL_HD, DistinctPhotos, Upload, prompt
from loadtest.measure import closed_loop
from loadtest.rawhttp import Connection
from loadtest.stack import LOOPBACK


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> (1920, 1080)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def requests_for(count: int, seed: int, size: tuple[int, int], words: int) -> list[tuple[bytes, str]]:
    """``count`` (image, prompt) pairs, pixel-distinct, repeatable for a seed; the direct arm uses the same."""
    photos = DistinctPhotos(seed=seed, size=size)
    return [(photos.next(), prompt(words, seed=seed * 100_003 + index)) for index in range(count)]


async def drive(opts: argparse.Namespace) -> dict[str, object]:
    host = f"{LOOPBACK}:{opts.port}"
    raws = [infer_request(host, [Upload(image)], text, max_tokens=str(opts.max_tokens), cache=opts.cache)
            for image, text in requests_for(opts.count, opts.seed, parse_size(opts.size), opts.prompt_words)]
    conns = [Connection(LOOPBACK, opts.port) for _ in range(opts.concurrency)]

    async def task(index: int, slot: int) -> float:
        return (await submit_and_wait(conns[slot], raws[index], wait_s=30)).latency_s

    result = await closed_loop(task, opts.concurrency, count=opts.count)
    await asyncio.gather(*(conn.close() for conn in conns))
    return {"latencies": result.latencies, "wall_s": result.wall_s, "errors": result.errors[:20],
            "concurrency": opts.concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="gateway port on 127.0.0.1")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default=f"{FULL_HD[0]}x{FULL_HD[1]}")
    parser.add_argument("--prompt-words", type=int, default=250)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--cache", default="exact", choices=["exact", "near", "off"])
    json.dump(asyncio.run(drive(parser.parse_args())), sys.stdout)


if __name__ == "__main__":
    main()
