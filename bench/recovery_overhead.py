"""Recovery overhead: the windowed clickstream with and without snapshots.

Workload (as in windowed_clickstream.py): N JSON events generated before
timing; parse and validate, keep purchases, key by user, 10-second tumbling
event-time windows, count and sum per user and window, results written to a
jsonl file (exactly once when recovery is on). Variants, one process:

- evflow without recovery, and with ``recovery=DIR, snapshot_interval=5``;
- the hand-written bytewax dataflow without recovery, and with bytewax's
  recovery (a snapshot every 5 seconds).

Each recovery run starts from a fresh store. All variants must produce the
same windows. Printed: medians and the throughput cost of recovery.

Run: ``python bench/recovery_overhead.py [--events N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main
from harness import interleaved
from scaling import run_evflow
from windowed_clickstream import Row, bytewax_flow, bytewax_rows, make_lines

INTERVAL = 5.0


def run_bytewax(lines: list[bytes], store: Path | None) -> list[Row]:
    got: list[Any] = []
    flow = bytewax_flow(TestingSource(lines, batch_size=1000), got)
    if store is None:
        run_main(flow)
    else:
        store.mkdir()
        init_db_dir(store, 1)
        run_main(
            flow,
            epoch_interval=timedelta(seconds=INTERVAL),
            recovery_config=RecoveryConfig(str(store)),
        )
    return bytewax_rows(got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lines = make_lines(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stores = iter(range(10**6))

        def fresh() -> Path:
            return work / f"store{next(stores)}"

        variants = {
            "evflow": lambda: run_evflow(lines, 1, work),
            "evflow recovery": lambda: run_evflow(lines, 1, work, recovery=fresh()),
            "bytewax": lambda: run_bytewax(lines, None),
            "bytewax recovery": lambda: run_bytewax(lines, fresh()),
        }
        med, expected = interleaved(variants, args.rounds)
    print(f"\n{args.events} events, {args.rounds} rounds, {len(expected)} windows, medians:")
    for name, m in med.items():
        print(f"  {name:18s} {m:7.3f}s")
    for name in ("evflow", "bytewax"):
        cost = med[f"{name} recovery"] / med[name] - 1
        print(f"{name} with snapshots every {INTERVAL:g} s: {cost * 100:+.1f}% time")
    cost = (med["evflow recovery"] / med["evflow"] - 1) * 100
    print(f"evflow recovery cost (target <= 10%): {cost:+.1f}%")


if __name__ == "__main__":
    main()
