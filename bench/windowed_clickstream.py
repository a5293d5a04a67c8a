"""Windowed clickstream benchmark: evflow vs hand-written bytewax vs a Python loop.

Workload: 1,000,000 JSON events (about 1,000 users, event time advancing about
1,000 events per second, 0.5% malformed) generated before timing; parse and
validate with pydantic, drop page views, key by user, 10-second tumbling
event-time windows, count and sum of amount per user and window.

(b) is the strongest hand-written bytewax: ``key_on`` then ``fold_window``
with an ``EventClock`` whose ``to_system_utc`` returns None (so replayed
timestamps fire no notifications), source batch size 1000. Its clock waits 5
seconds of system time: with no wait, bytewax moves each key's watermark on
with system time and calls some on-time events late (its results then differ).

(c) is what a compiler could emit by hand: one ``flat_map_batch`` that parses,
filters and keys each batch, then a ``stateful_batch`` whose per-key logic
holds that user's tumbling windows and closes those its newest event time has
passed (no late events, no dead letters, no counts: none of evflow's
guarantees).

evflow also runs on 2 processes (the input split in 2 partitions) to show
what a second process brings on this machine.

Run: ``python bench/windowed_clickstream.py [--events N] [--rounds R]``.
All three must produce the same results; the medians and ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, run_main
from harness import interleaved, report

from operators import Event, agg, schema_adapter, windows
from pipelines import Pipeline, sinks, sources

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SIZE = 10.0


class View(Event):
    type: Literal["view"] = "view"
    user: str
    page: str


class Purchase(Event):
    type: Literal["purchase"] = "purchase"
    user: str
    amount: float


SCHEMA = View | Purchase


def make_lines(n: int, seed: int = 2) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        user = f"u{rng.randrange(1000)}"
        t = (T0 + timedelta(milliseconds=i)).isoformat()
        if rng.random() < 0.6:
            rec: dict[str, Any] = {"type": "view", "user": user, "page": "/p"}
        else:
            rec = {"type": "purchase", "user": user, "amount": round(rng.uniform(1, 300), 2)}
        rec.update(id=f"e{i}", time=t)
        line = json.dumps(rec)
        if rng.random() < 0.005:
            line = line[:-9]
        lines.append(line.encode())
    return lines


Row = tuple[str, float, int, float]


def windowed_from(name: str, source: Any) -> Any:
    """The evflow pipeline of this workload on ``source``, up to its results (no sink yet)."""
    return (
        Pipeline(name)
        .read(source)
        .filter(Purchase)
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=SIZE), clock=windows.event_time("time"))
        .aggregate(n=agg.count(), total=agg.sum("amount"))
    )


def windowed(name: str, lines: list[bytes], partitions: int) -> Any:
    """The evflow pipeline of this workload on ``lines`` in memory."""
    return windowed_from(name, sources.memory(lines, schema=SCHEMA, partitions=partitions))


def rows_of(results: Any, processes: int = 1) -> list[Row]:
    """Run ``results`` into memory; return its rows, sorted."""
    out = results.write(sinks.memory("out")).run(processes=processes)
    return sorted((r.key, r.start.timestamp(), r.n, round(r.total, 6)) for r in out["out"])


def run_evflow(lines: list[bytes], processes: int = 1) -> list[Row]:
    return rows_of(windowed("bench_windows", lines, processes), processes)


def bytewax_flow(source: Any, got: list[Any], wait: float = 5.0) -> Dataflow:
    """The hand-written bytewax dataflow: results go to ``got``.

    ``wait`` is the event clock's system-time wait (see the module docstring).
    """
    adapter = schema_adapter(SCHEMA)
    parse = adapter.validate_json

    def parse_or_none(line: bytes) -> Any:
        try:
            return parse(line)
        except ValueError:
            return None

    flow = Dataflow("bench_bytewax_windows")
    raw = op.input("inp", flow, source)
    events = op.filter_map("parse", raw, parse_or_none)
    buys = op.filter("purchases", events, lambda e: isinstance(e, Purchase))
    keyed = op.key_on("user", buys, lambda e: e.user)
    # bytewax's event clock moves a key's watermark on with system time between
    # its events; with no wait, a pause (a garbage collection, a slow batch)
    # calls on-time events late. A few seconds of wait keeps results exact.
    clock = win.EventClock(
        ts_getter=lambda e: e.time,
        wait_for_system_duration=timedelta(seconds=wait),
        to_system_utc=lambda dt: None,
    )
    windower = win.TumblingWindower(length=timedelta(seconds=SIZE), align_to=T0)
    folded = win.fold_window(
        "fold",
        keyed,
        clock,
        windower,
        lambda: [0, 0.0],
        lambda acc, e: [acc[0] + 1, acc[1] + e.amount],
        lambda a, b: [a[0] + b[0], a[1] + b[1]],
    )
    op.output("out", folded.down, TestingSink(got))
    return flow


def bytewax_rows(got: list[Any]) -> list[Row]:
    """Turn bytewax's ``(key, (window id, acc))`` results into sorted rows."""
    base = T0.timestamp()  # tumbling window ids count windows from align_to
    return sorted((k, base + wid * SIZE, acc[0], round(acc[1], 6)) for k, (wid, acc) in got)


def run_bytewax(lines: list[bytes]) -> list[Row]:
    got: list[Any] = []
    run_main(bytewax_flow(TestingSource(lines, batch_size=1000), got))
    return bytewax_rows(got)


class UserWindows(StatefulBatchLogic[tuple[float, float], tuple[float, list[Any]], Any]):
    """One user's tumbling windows: ``start -> [count, total]``."""

    def __init__(self, state: Any = None) -> None:
        self.wins: dict[float, list[Any]] = {} if state is None else state[0]
        self.newest = -math.inf if state is None else state[1]

    def on_batch(self, values: list[tuple[float, float]]) -> tuple[list[Any], bool]:
        wins = self.wins
        newest = self.newest
        for ts, amount in values:
            start = ts - ts % SIZE
            slot = wins.get(start)
            if slot is None:
                wins[start] = [1, amount]
            else:
                slot[0] += 1
                slot[1] += amount
            if ts > newest:
                newest = ts
        self.newest = newest
        done = [s for s in wins if s + SIZE <= newest]
        return [(s, wins.pop(s)) for s in done], False

    def on_eof(self) -> tuple[list[Any], bool]:
        out = list(self.wins.items())
        self.wins = {}
        return out, True

    def snapshot(self) -> Any:
        return (self.wins, self.newest)


def run_fused(lines: list[bytes]) -> list[Row]:
    """Hand-written bytewax, fused: parse, filter and key per batch; per-key windows."""
    parse = schema_adapter(SCHEMA).validate_json

    def parse_batch(batch: list[bytes]) -> list[tuple[str, tuple[float, float]]]:
        out = []
        for line in batch:
            try:
                e = parse(line)
            except ValueError:
                continue
            if isinstance(e, Purchase):
                out.append((e.user, (e.time.timestamp(), e.amount)))
        return out

    got: list[Any] = []
    flow = Dataflow("bench_bytewax_fused")
    raw = op.input("inp", flow, TestingSource(lines, batch_size=1000))
    keyed = op.flat_map_batch("parse_filter_key", raw, parse_batch)
    folded = op.stateful_batch("windows", keyed, UserWindows)
    op.output("out", folded, TestingSink(got))
    run_main(flow)
    return sorted((k, s, acc[0], round(acc[1], 6)) for k, (s, acc) in got)


def fold_purchases(
    acc: dict[tuple[str, float], list[Any]], parse: Any, lines: Iterable[bytes]
) -> None:
    """The bare loop's body: parse each line, keep purchases, add them to ``acc``'s windows.

    Called once per batch of lines (once in all here; once per broker read in
    bench/broker_throughput.py), so the loop itself stays a plain loop.
    """
    for line in lines:
        try:
            e = parse(line)
        except ValueError:
            continue
        if not isinstance(e, Purchase):
            continue
        ts = e.time.timestamp()
        key = (e.user, ts - ts % SIZE)
        slot = acc.get(key)
        if slot is None:
            acc[key] = [1, e.amount]
        else:
            slot[0] += 1
            slot[1] += e.amount


def loop_rows(acc: dict[tuple[str, float], list[Any]]) -> list[Row]:
    """The windows of the bare loop, as sorted rows."""
    return sorted((u, s, a[0], round(a[1], 6)) for (u, s), a in acc.items())


def run_loop(lines: list[bytes]) -> list[Row]:
    acc: dict[tuple[str, float], list[Any]] = {}
    fold_purchases(acc, schema_adapter(SCHEMA).validate_json, lines)
    return loop_rows(acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lines = make_lines(args.events)
    variants = {
        "evflow": lambda: run_evflow(lines),
        "evflow 2 processes": lambda: run_evflow(lines, processes=2),
        "bytewax": lambda: run_bytewax(lines),
        "bytewax fused": lambda: run_fused(lines),
        "python loop": lambda: run_loop(lines),
    }
    med, expected = interleaved(variants, args.rounds)
    print(f"\n{args.events} events, {args.rounds} rounds, {len(expected)} windows, medians:")
    report(med, args.events)
    print(f"evflow speed vs bytewax:     {med['bytewax'] / med['evflow']:.2f}x  (target >= 3x)")
    print(
        f"evflow speed vs python loop: {med['python loop'] / med['evflow']:.2f}x  (target >= 0.6x)"
    )
    print(
        f"evflow speed vs fused bytewax: {med['bytewax fused'] / med['evflow']:.2f}x  "
        f"(target >= 1.0x)"
    )
    print(f"evflow on 2 processes vs 1:  {med['evflow'] / med['evflow 2 processes']:.2f}x")


if __name__ == "__main__":
    main()
