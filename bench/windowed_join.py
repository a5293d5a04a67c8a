"""Windowed join benchmark: evflow vs bytewax's join_window vs a Python loop with dicts.

Workload: N events (half orders, half payments, 20,000 customers, event time
advancing 100 events a second on each side) built as evflow events before
timing; both sides keyed by customer and joined in 60-second tumbling
event-time windows, inner: every (order, payment) pair of a customer and
window. Each variant's result is the number of pairs and a checksum of the
pairs' ids; all three must agree.

(b) is hand-written bytewax 0.21: ``key_on`` on each side, then
``join_window`` (``insert_mode="product"``, ``emit_mode="final"``) with an
``EventClock`` whose ``to_system_utc`` returns None, source batch size 1000.
Its clock waits 120 seconds of event time: bytewax reads the two inputs at
their own paces and keeps one watermark for both, so with no wait it calls
some on-time events late (and its pairs differ).

(c) is a bare loop: each side's events into a dict of windows per key, then
the pairs of each window (no streaming, no late events, no counts).

Run: ``python bench/windowed_join.py [--events N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from harness import interleaved, report

from operators import Event, windows
from pipelines import Pipeline, sinks, sources

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SIZE = 60.0
CUSTOMERS = 20_000


class Order(Event):
    customer: str


class Payment(Event):
    customer: str


def build(n: int) -> tuple[list[Order], list[Payment]]:
    """Make ``n`` events, half on each side, in event-time order per side."""
    rng = random.Random(1)
    half = n // 2
    orders = [
        Order(
            customer=f"c{rng.randrange(CUSTOMERS)}",
            id=f"o{i}",
            time=T0 + timedelta(seconds=i / 100),
        )
        for i in range(half)
    ]
    payments = [
        Payment(
            customer=f"c{rng.randrange(CUSTOMERS)}",
            id=f"p{i}",
            time=T0 + timedelta(seconds=i / 100 + 0.003),
        )
        for i in range(half)
    ]
    return orders, payments


def checksum(pairs: list[tuple[str, str]]) -> tuple[int, int]:
    """Count the pairs and sum a hash of their ids (order does not matter)."""
    total = 0
    for left, right in pairs:
        total = (total + int(left[1:]) * 1_000_003 + int(right[1:])) % (1 << 61)
    return len(pairs), total


def run_evflow(orders: list[Order], payments: list[Payment]) -> tuple[int, int]:
    p = Pipeline("join_bench")
    left = p.read(sources.memory(orders, batch_size=1000), name="orders").key_by(
        lambda o: o.customer, name="order_customer"
    )
    right = p.read(sources.memory(payments, batch_size=1000), name="payments").key_by(
        lambda x: x.customer, name="payment_customer"
    )
    joined = left.join(
        right, window=windows.tumbling(seconds=SIZE), select=lambda o, x: (o.id, x.id)
    )
    result = joined.write(sinks.memory("pairs")).run()
    assert result.reconciles and result.dead == 0
    return checksum(result["pairs"])


def run_bytewax(orders: list[Order], payments: list[Payment]) -> tuple[int, int]:
    flow = Dataflow("bw_join")
    o = op.key_on("ko", op.input("o", flow, TestingSource(orders, 1000)), lambda e: e.customer)
    x = op.key_on("kx", op.input("x", flow, TestingSource(payments, 1000)), lambda e: e.customer)
    clock = win.EventClock(
        lambda e: e.time,
        wait_for_system_duration=timedelta(seconds=120),
        to_system_utc=lambda t: None,
    )
    windower = win.TumblingWindower(length=timedelta(seconds=SIZE), align_to=T0)
    joined = win.join_window("join", clock, windower, o, x, insert_mode="product")
    out: list[Any] = []
    op.output("out", joined.down, TestingSink(out))
    late: list[Any] = []
    op.output("late", joined.late, TestingSink(late))
    run_main(flow)
    assert not late, f"bytewax called {len(late)} events late"
    # "final" emits the windows where one side is missing too: an inner join drops them.
    return checksum([(a.id, b.id) for _, (_, (a, b)) in out if a is not None and b is not None])


def run_loop(orders: list[Order], payments: list[Payment]) -> tuple[int, int]:
    base = T0.timestamp()
    wins: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
    for side, events in ((0, orders), (1, payments)):
        for e in events:
            slot = (e.customer, int((e.time.timestamp() - base) // SIZE))
            found = wins.get(slot)
            if found is None:
                found = wins[slot] = ([], [])
            found[side].append(e.id)
    pairs = [(a, b) for lefts, rights in wins.values() for a in lefts for b in rights]
    return checksum(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    orders, payments = build(args.events)
    medians, result = interleaved(
        {
            "evflow": lambda: run_evflow(orders, payments),
            "bytewax join_window": lambda: run_bytewax(orders, payments),
            "python loop": lambda: run_loop(orders, payments),
        },
        args.rounds,
    )
    print(f"\n{args.events} events, {result[0]} pairs, {args.rounds} rounds, medians:")
    report(medians, args.events)
    print(
        f"evflow speed vs bytewax join_window: "
        f"{medians['bytewax join_window'] / medians['evflow']:.2f}x  (target >= 3x)"
    )
    print(
        f"evflow speed vs python loop:         "
        f"{medians['python loop'] / medians['evflow']:.2f}x  (target >= 0.5x)"
    )


if __name__ == "__main__":
    main()
