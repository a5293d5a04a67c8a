"""Shared by the benchmarks: interleaved rounds, results checked, medians printed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved(
    variants: dict[str, Callable[[], Any]], rounds: int
) -> tuple[dict[str, float], Any]:
    """Run every variant once per round, in turn; all must return the same result.

    Each round starts one variant further on (round 2 starts with the second,
    and so on), so that no variant always runs first or right after the same
    one. Returns the median seconds of each variant and the common result.
    """
    times: dict[str, list[float]] = {k: [] for k in variants}
    expected: Any = None
    names = list(variants)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            t0 = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t0)
            if expected is None:
                expected = got
            assert got == expected, f"{name} gave {got!r:.200}, expected {expected!r:.200}"
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    return {k: statistics.median(v) for k, v in times.items()}, expected


def report(medians: dict[str, float], events: int) -> None:
    """Print each variant's median and time per event."""
    for name, m in medians.items():
        print(f"  {name:20s} {m:6.3f}s  {m / events * 1e6:5.2f} us/event")
