"""Depth check benchmark: the time to find the nesting depth of hostile bodies (the best of
three runs each), the figures docs/security.md quotes.

    .venv/bin/python -m benchmarks.depth_check
"""

import time

from adapter.security.json_depth import json_depth

BODIES = {
    "48 KB of escaped quotes": b'"' + b'\\"' * 24_000,
    "4 MB of escaped quotes": b'"' + b'\\"' * 2_000_000,
    "4 MB of brackets": b"[" * 2_000_000 + b"]" * 2_000_000,
}


def _best_of_three(body: bytes) -> float:
    times = []
    for _ in range(3):
        began = time.perf_counter()
        json_depth(body)
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    for label, body in BODIES.items():
        print(f"{label}: {_best_of_three(body) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
