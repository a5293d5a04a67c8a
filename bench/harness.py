"""Shared by the benchmarks: interleaved rounds, results checked, medians printed."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any


def cpu_seconds() -> float:
    """CPU time (user and system) of this process and of its children waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def interleaved(
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    cpu: dict[str, float] | None = None,
) -> tuple[dict[str, float], Any]:
    """Run every variant once per round, in turn; all must return the same result.

    Each round starts one variant further on (round 2 starts with the second,
    and so on), so that no variant always runs first or right after the same
    one. Returns the median seconds of each variant and the common result;
    ``cpu``, if given, gets the median CPU seconds of each variant (its
    processes' together).
    """
    times: dict[str, list[float]] = {k: [] for k in variants}
    used: dict[str, list[float]] = {k: [] for k in variants}
    expected: Any = None
    names = list(variants)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t0)
            used[name].append(cpu_seconds() - c0)
            if expected is None:
                expected = got
            assert got == expected, f"{name} gave {got!r:.200}, expected {expected!r:.200}"
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    if cpu is not None:
        cpu.update({k: statistics.median(v) for k, v in used.items()})
    return {k: statistics.median(v) for k, v in times.items()}, expected


def report(medians: dict[str, float], events: int) -> None:
    """Print each variant's median and time per event."""
    for name, m in medians.items():
        print(f"  {name:20s} {m:6.3f}s  {m / events * 1e6:5.2f} us/event")
