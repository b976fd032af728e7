"""Cache-key cost of a repeated 1080p upload, next to a perceptual hash of the same upload.

The gateway answers a repeat from the exact cache after ``cache.keys.image_digest`` (BLAKE3 of the
uploaded bytes) and ``cache.keys.cache_key`` (BLAKE3 of a canonical JSON document) and nothing else: no
decode. The baseline is what a pHash-keyed cache would pay per request: decode the JPEG and run
``imagehash.phash`` (``cache.near.phash_hex``). Goal: the exact key in at most 1 ms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cache.keys import cache_key, image_digest
from cache.near import phash_hex
from loadtest.images import photo_jpeg, prompt
from loadtest.measure import Check, checks_table, fmt, percentile, table
from worker.config import DEFAULT_MODEL
from worker.contract import SamplingParams

KEY_GOAL_MS = 1.0


def _timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm caches and lazy imports
    samples: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def _row(label: str, samples: list[float]) -> list[str]:
    return [label, fmt(percentile(samples, 50) * 1000), fmt(percentile(samples, 99) * 1000),
            fmt(min(samples) * 1000), str(len(samples))]


def run(repeat: int = 300) -> list[Check]:
    """Time both and print the table; return the goal checks."""
    data = photo_jpeg(seed=42)
    text = prompt(250, seed=1)
    sampling = SamplingParams(max_tokens=256)

    def exact_key() -> str:
        conversation = [{"role": "user", "content": [{"type": "image", "digest": image_digest(data)},
                                                     {"type": "text", "text": text}]}]
        return cache_key(scope="tenant:public", model=DEFAULT_MODEL, conversation=conversation, task="vqa",
                         response_format={"type": "text"}, sampling=sampling.model_dump(mode="json"))

    key_samples = _timed(exact_key, repeat)
    digest_samples = _timed(lambda: image_digest(data), repeat)
    phash_samples = _timed(lambda: phash_hex(data), max(20, repeat // 10))
    print(f"\n## Cache key of a repeated 1080p JPEG upload ({len(data) / 1024:.0f} KiB, 1920x1080)\n")
    print(table(["computation", "p50 ms", "p99 ms", "min ms", "runs"],
                [_row("image_digest + cache_key (exact key)", key_samples),
                 _row("  of which image_digest (BLAKE3 of the bytes)", digest_samples),
                 _row("baseline: decode + imagehash.phash", phash_samples)]))
    key_p50 = percentile(key_samples, 50) * 1000
    speedup = percentile(phash_samples, 50) / percentile(key_samples, 50)
    print(f"\nexact key is {speedup:.0f}x cheaper than decode + pHash (p50 ÷ p50)")
    return [Check("cache key of a 1080p upload, p50", key_p50, KEY_GOAL_MS, higher_is_better=False, unit=" ms")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=300)
    checks = run(parser.parse_args().repeat)
    print("\n" + checks_table(checks))


if __name__ == "__main__":
    main()
