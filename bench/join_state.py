"""State of a join and of a process step over 1,000,000 keys with a ttl: freed as time passes.

(a) A table join: 1,000,000 customer rows (one per key, dated within the
first 100 seconds, ttl 60 s), then one order far later moves the watermark
past every row's ttl. (b) A process step: one event for each of 1,000,000
keys, ttl 60 s, then one event far later. Each prints the state held (rows
or key states, the step's ``open`` count, and the Python memory the state
takes, by tracemalloc) before and after the watermark passes the ttl.

Run: ``python bench/join_state.py [--keys N]``.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from typing import Any

from operators import COUNTER_FIELDS, Counters
from operators._joining import JoinLogic, JoinSpec
from operators._keying import Marked
from operators._process import Context, ProcessLogic, ProcessSpec

OPEN = COUNTER_FIELDS.index("open")
EXPIRED = COUNTER_FIELDS.index("expired")


def batch(part: str, records: list[tuple[str, float, Any]]) -> Marked:
    return Marked(part, max(r[1] for r in records), False, records)


def table_join(keys: int) -> None:
    counters = Counters(["join"])
    spec = JoinSpec(
        pipeline="bench",
        step="join",
        row=0,
        counters=counters,
        kind="table",
        partitions=["0:orders/p", "1:customers/p"],
        ttl=60.0,
    )
    logic = JoinLogic(spec, None)
    tracemalloc.start()
    rows = [(f"c{i}", float(i % 100), {"tier": "gold"}) for i in range(keys)]
    logic.on_batch([(1, batch("customers/p", rows))])
    del rows
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    row = counters.table()[0]
    print(f"table join, {keys:,} keys: {len(logic.held):,} keys held, open {row[OPEN]:,}, "
          f"{held / 2**20:,.0f} MiB")  # fmt: skip
    logic.on_batch([(0, batch("orders/p", [("c1", 1000.0, "late order")]))])
    logic.on_batch([(1, batch("customers/p", [("x", 1000.0, {"tier": "new"})]))])
    logic.on_batch([(0, batch("orders/p", [("c2", 1001.0, "order")]))])
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  after the watermark passed the ttl: {len(logic.held):,} keys held, "
          f"open {row[OPEN]:,}, {after / 2**20:,.1f} MiB")  # fmt: skip


def count(n: int, e: Any, ctx: Context[Any]) -> int:
    return n + 1


def process_step(keys: int) -> None:
    counters = Counters(["process"])
    spec = ProcessSpec(
        pipeline="bench",
        step="process",
        row=0,
        counters=counters,
        on_event=count,
        initial=int,
        partitions=["events/p"],
        ttl=60.0,
    )
    logic = ProcessLogic(spec, None)
    tracemalloc.start()
    events = [(f"k{i}", float(i % 100), None) for i in range(keys)]
    logic.on_batch([batch("events/p", events)])
    logic.on_batch([batch("events/p", [("k0", 100.0, None)])])  # delivers the first ones
    del events
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    row = counters.table()[0]
    print(f"process step, {keys:,} keys: {len(logic.states):,} states, open {row[OPEN]:,}, "
          f"{held / 2**20:,.0f} MiB")  # fmt: skip
    logic.on_batch([batch("events/p", [("k1", 1000.0, None)])])
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  after the watermark passed the ttl: {len(logic.states):,} states, "
          f"open {row[OPEN]:,}, expired {row[EXPIRED]:,}, {after / 2**20:,.1f} MiB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    table_join(args.keys)
    process_step(args.keys)


if __name__ == "__main__":
    main()
