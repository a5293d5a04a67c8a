"""Shared event classes and helpers for the tests."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from operators import Event


class View(Event):
    type: Literal["view"] = "view"
    user: str
    page: str = "/"


class Purchase(Event):
    type: Literal["purchase"] = "purchase"
    user: str
    amount: float


def multiset(items: Iterable[Any]) -> Counter[Any]:
    """Compare outputs regardless of order (events by their JSON)."""
    return Counter(i.model_dump_json() if isinstance(i, Event) else repr(i) for i in items)


def line(**record: Any) -> str:
    return json.dumps(record)


def printed_under_hash_seeds(program: str, seeds: Iterable[int] = (1, 2, 3)) -> set[str]:
    """What ``program`` prints when run with each ``PYTHONHASHSEED`` (one text: the same in all)."""
    import os
    import subprocess
    import sys

    return {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in seeds
    }


def per_user_counts(source: Any, window: Any, clock: Any = None, sink: Any = None) -> Any:
    """A pipeline that counts the events ``source`` reads per user and window (into ``o``)."""
    from operators import agg
    from pipelines import Pipeline, sinks

    keyed = Pipeline("counted").read(source).key_by(lambda e: e.user)
    windowed = keyed.window(window) if clock is None else keyed.window(window, clock=clock)
    return windowed.aggregate(n=agg.count()).write(sink or sinks.memory("o"))


def counted_per_user(source: Any, window: Any, clock: Any = None, **run: Any) -> Any:
    """Run `per_user_counts` (``run``: the run's options); return the result."""
    return per_user_counts(source, window, clock).run(**run)


def children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def kill_at_random(
    command: list[str],
    env: dict[str, str],
    *,
    kills: int,
    seed: int,
    attempts: int = 12,
    after: tuple[float, float] = (0.8, 1.6),
) -> int:
    """Run ``command`` again and again, each time SIGKILLed after a random pause.

    Every other run has 2 workers (``-w``), so the worker count changes
    between resumes. Stops once ``kills`` runs were killed while running (a
    run that ended on its own is not counted); returns how many were.
    """
    import random
    import signal
    import subprocess
    import time

    rng = random.Random(seed)
    done = 0
    for attempt in range(attempts):
        proc = subprocess.Popen(
            [*command, "-w", str(1 + attempt % 2)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(*after))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            done += 1
        proc.wait(timeout=60)
        if done >= kills:
            break
    return done


class Halts:
    """A map function that halts the run once at each record whose id it holds.

    Give it to ``map(..., on_error="halt")``; `resumed_until_done` runs the
    pipeline again from its recovery store after each halt.
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids = set(ids)

    def __call__(self, record: Any) -> Any:
        if record.id in self.ids:
            self.ids.discard(record.id)
            raise RuntimeError("halted")
        return record


def resumed_until_done(
    pipeline: Any, store: Path, workers: tuple[int, ...] = (2, 1)
) -> tuple[int, Any]:
    """Run ``pipeline`` with recovery in ``store`` again after each halt until it ends.

    Run ``i`` (from 0) has ``workers[i % len(workers)]`` workers. Return how
    many runs it took and the last one's `RunResult`.
    """
    from pipelines import PipelineHalted

    runs = 0
    while True:
        runs += 1
        try:
            result = pipeline.run(
                recovery=store, snapshot_interval=0.005, workers=workers[(runs - 1) % len(workers)]
            )
            return runs, result
        except PipelineHalted:
            pass


def sorted_lines(path: Path) -> list[str]:
    """Return the lines of a file, sorted."""
    return sorted(path.read_text().splitlines())
