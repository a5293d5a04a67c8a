"""Stateless clickstream benchmark: evflow vs hand-written bytewax vs a Python loop.

Workload: 1,000,000 JSON events (page views, clicks, purchases) generated
before timing; parse and validate each with pydantic (``validate_json`` on the
discriminated union), drop bots, forward purchases above 100 to one counting
sink and everything else to another.

Run: ``python bench/stateless_clickstream.py [--events N] [--rounds R]``.
The three variants run interleaved, round after round, in one process; the
medians and the ratios are printed. On a shared machine, trust the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Any, Literal

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main
from harness import interleaved, report
from pydantic import TypeAdapter

from operators import Event, RunContext, Sink, Writer, schema_adapter
from pipelines import Pipeline, sources


class View(Event):
    type: Literal["view"] = "view"
    user: str
    page: str


class Click(Event):
    type: Literal["click"] = "click"
    user: str
    page: str


class Purchase(Event):
    type: Literal["purchase"] = "purchase"
    user: str
    amount: float


SCHEMA = View | Click | Purchase


def make_lines(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        user = f"bot{rng.randrange(3)}" if rng.random() < 0.05 else f"u{rng.randrange(1000)}"
        t = f"2026-01-01T00:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}Z"
        r = rng.random()
        if r < 0.6:
            rec: dict[str, Any] = {"type": "view", "user": user, "page": "/p"}
        elif r < 0.9:
            rec = {"type": "click", "user": user, "page": "/p"}
        else:
            rec = {"type": "purchase", "user": user, "amount": round(rng.uniform(1, 300), 2)}
        rec.update(id=f"e{i}", time=t)
        lines.append(json.dumps(rec).encode())
    return lines


def not_bot(e: Any) -> bool:
    return not e.user.startswith("bot")


def is_big(e: Any) -> bool:
    return isinstance(e, Purchase) and e.amount > 100


# --- (a) evflow ---------------------------------------------------------------


class _CountWriter(Writer):
    def __init__(self, box: list[int]) -> None:
        self.box = box

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        self.box[0] += len(items)
        return []


class CountSink(Sink):
    def __init__(self, name: str) -> None:
        self.name = name
        self.box = [0]

    @property
    def label(self) -> str:
        return f"count_{self.name}"

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        return _CountWriter(self.box)


def run_evflow(lines: list[bytes], gc_tuning: bool = True) -> tuple[int, int]:
    os.environ["EVFLOW_GC_TUNING"] = "1" if gc_tuning else "0"
    big, rest = CountSink("big"), CountSink("rest")
    routes = (
        Pipeline("bench")
        .read(sources.memory(lines, schema=SCHEMA))
        .filter(not_bot)
        .forward(big=is_big, otherwise="rest")
    )
    routes.write(big=big, rest=rest).run()
    return big.box[0], rest.box[0]


# --- (b) hand-written bytewax ---------------------------------------------------


class _BwCountPart(StatelessSinkPartition[Any]):
    def __init__(self, box: list[int]) -> None:
        self.box = box

    def write_batch(self, items: list[Any]) -> None:
        self.box[0] += len(items)


class BwCountSink(DynamicSink[Any]):
    def __init__(self) -> None:
        self.box = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _BwCountPart:
        return _BwCountPart(self.box)


def run_bytewax(lines: list[bytes], adapter: TypeAdapter[Any]) -> tuple[int, int]:
    flow = Dataflow("bench_bytewax")
    raw = op.input("inp", flow, TestingSource(lines, batch_size=1000))
    events = op.map("parse", raw, adapter.validate_json)
    humans = op.filter("not_bot", events, not_bot)
    split = op.branch("big", humans, is_big)
    big, rest = BwCountSink(), BwCountSink()
    op.output("out_big", split.trues, big)
    op.output("out_rest", split.falses, rest)
    run_main(flow)
    return big.box[0], rest.box[0]


# --- (c) bare Python loop -------------------------------------------------------


def run_loop(lines: list[bytes], adapter: TypeAdapter[Any]) -> tuple[int, int]:
    parse = adapter.validate_json
    big = rest = 0
    for line in lines:
        e = parse(line)
        if not_bot(e):
            if is_big(e):
                big += 1
            else:
                rest += 1
    return big, rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lines = make_lines(args.events)
    adapter = schema_adapter(SCHEMA)
    variants = {
        "evflow": lambda: run_evflow(lines),
        "evflow no-gc-tuning": lambda: run_evflow(lines, gc_tuning=False),
        "bytewax": lambda: run_bytewax(lines, adapter),
        "python loop": lambda: run_loop(lines, adapter),
    }
    med, expected = interleaved(variants, args.rounds)
    print(f"\n{args.events} events, {args.rounds} rounds, medians (counts big/rest {expected}):")
    report(med, args.events)
    bw, loop, ev = med["bytewax"], med["python loop"], med["evflow"]
    untuned = med["evflow no-gc-tuning"]
    print(f"evflow speed vs bytewax:     {bw / ev:.2f}x  (target >= 1.5x)")
    print(f"evflow speed vs python loop: {loop / ev:.2f}x  (target >= 0.9x)")
    print(
        f"evflow with EVFLOW_GC_TUNING=0: {bw / untuned:.2f}x bytewax, {loop / untuned:.2f}x loop"
    )


if __name__ == "__main__":
    main()
