"""Sliding windows benchmark: evflow vs hand-written bytewax vs a Python loop.

Workload: events of 100 keys, event time advancing 1 ms per event, made before
timing; key by key, sliding event-time windows of 60 seconds every second (each
event is in 60 windows), count and sum of an amount per key and window.

evflow adds each event once, to the second of time it is in, and merges a
window's 60 panes when it closes (`docs/windows.md`). The bytewax version is
``key_on`` then ``fold_window`` with a ``SlidingWindower`` and an
``EventClock`` whose ``to_system_utc`` returns None (replayed timestamps fire
no notifications), waiting 60 seconds of system time so that no on-time event
is called late. The loop adds each event to each of its 60 windows in a dict.

Run: ``python bench/sliding_windows.py [--events N] [--rounds R]``.
All three must produce the same results; the medians and ratios are printed.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from harness import interleaved, report

from operators import Event, agg, windows
from pipelines import Pipeline, sinks, sources

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SIZE, EVERY = 60, 1
Row = tuple[str, float, int, int]


class Sale(Event):
    shop: str
    amount: int


def make(n: int) -> list[Sale]:
    return [
        Sale(
            id=f"s{i}",
            time=T0 + timedelta(milliseconds=i),
            shop=f"shop{i * 7919 % 100}",
            amount=i % 97,
        )
        for i in range(n)
    ]


def run_evflow(events: list[Sale]) -> list[Row]:
    result = (
        Pipeline("bench_sliding")
        .read(sources.memory(events, batch_size=1000))
        .key_by(lambda s: s.shop)
        .window(windows.sliding(seconds=SIZE, every=EVERY))
        .aggregate(n=agg.count(), total=agg.sum("amount"))
        .write(sinks.memory("out"))
        .run()
    )
    assert result.reconciles and not result.dead_letters
    return sorted((r.key, r.start.timestamp(), r.n, int(r.total)) for r in result["out"])


def run_bytewax(events: list[Sale]) -> list[Row]:
    flow = Dataflow("bench_sliding_bytewax")
    keyed = op.key_on("shop", op.input("inp", flow, TestingSource(events, 1000)), lambda s: s.shop)
    clock = win.EventClock(
        lambda s: s.time,
        wait_for_system_duration=timedelta(seconds=60),
        to_system_utc=lambda t: None,
    )
    windower = win.SlidingWindower(
        length=timedelta(seconds=SIZE), offset=timedelta(seconds=EVERY), align_to=T0
    )

    def add(acc: list[int], s: Sale) -> list[int]:
        return [acc[0] + 1, acc[1] + s.amount]

    folded = win.fold_window(
        "sums", keyed, clock, windower, lambda: [0, 0], add, lambda a, b: [a[0] + b[0], a[1] + b[1]]
    )
    got: list[Any] = []
    op.output("out", folded.down, TestingSink(got))
    run_main(flow)
    base = T0.timestamp()
    return sorted((k, base + wid * EVERY, acc[0], acc[1]) for k, (wid, acc) in got)


def run_loop(events: list[Sale]) -> list[Row]:
    wins: dict[tuple[str, int], list[int]] = {}
    base = T0.timestamp()
    for s in events:
        ms = round((s.time.timestamp() - base) * 1000)
        last = ms // (EVERY * 1000) * EVERY  # the latest window's start, in seconds
        for start in range(last, last - SIZE, -EVERY):
            slot = wins.get((s.shop, start))
            if slot is None:
                wins[(s.shop, start)] = [1, s.amount]
            else:
                slot[0] += 1
                slot[1] += s.amount
    return sorted((k, base + start, n, total) for (k, start), (n, total) in wins.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    events = make(args.events)
    variants = {
        "evflow": lambda: run_evflow(events),
        "bytewax": lambda: run_bytewax(events),
        "python loop": lambda: run_loop(events),
    }
    med, expected = interleaved(variants, args.rounds)
    print(f"\n{args.events} events, {args.rounds} rounds, {len(expected)} windows, medians:")
    report(med, args.events)
    print(f"evflow speed vs bytewax:     {med['bytewax'] / med['evflow']:.2f}x")
    print(f"evflow speed vs python loop: {med['python loop'] / med['evflow']:.2f}x")


if __name__ == "__main__":
    main()
