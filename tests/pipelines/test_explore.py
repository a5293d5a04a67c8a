"""The schedule explorer: proves pipelines deterministic, finds and shrinks planted dependence."""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from operators import Event, MemorySource, Reader, agg, windows
from pipelines import Pipeline, catalog, sinks, sources, testing
from pipelines._explore import Schedule, _Runner, _shrink, difference

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Tick(Event):
    k: str
    v: int


def ticks(n: int = 400) -> list[Tick]:
    # Every eleventh event is 6 s behind: late for some windows, not for others.
    return [
        Tick(
            k="abcd"[i % 4],
            v=i % 7,
            time=T0 + timedelta(seconds=i * 0.5 - (6 if i % 11 == 5 else 0)),
            id=f"e{i}",
        )
        for i in range(n)
    ]


def planted(n: int) -> Pipeline:
    """A map that numbers its calls in a global: the numbers follow the schedule."""
    calls = itertools.count()
    return (
        Pipeline("planted")
        .read(sources.memory(range(n), partitions=2))
        .map(lambda x: (x, next(calls) % n))  # n calls a run: each run starts at 0
        .write(sinks.memory("o"))
    )


def test_explore_finds_a_planted_schedule_dependence_and_names_the_record() -> None:
    with pytest.raises(testing.ScheduleDependence) as caught:
        testing.explore(planted(400), seed=3, runs=6)
    found = caught.value
    assert found.seed == 3 and found.schedule != Schedule()
    changed = [f.name for f in fields(Schedule) if getattr(found.schedule, f.name) != f.default]
    assert len(changed) == 1, found.schedule  # nothing but what shows the difference
    assert "write step 'memory_o': the first run wrote [" in str(found)
    assert f"with {found.schedule.describe()} (shrunk; explore seed=3)" in str(found)


@pytest.mark.parametrize("kind", ["stateful", "count"])
def test_a_dependence_names_the_steps_that_take_events_in_arrival_order(kind: str) -> None:
    # Each key's events come from two partitions: a running sum kept by a stateful
    # handler, or a count window, follows their interleaving.
    from pipelines import stateful

    keyed = Pipeline("arrival").read(sources.memory([], partitions=2)).key_by(lambda t: t.k)
    if kind == "stateful":
        sums = stateful(lambda n, t: (n + t.v, (t.id, n)), initial=int)
        out = keyed.dispatch({Tick: sums}, name="sums")
        step = "'sums' (stateful handlers)"
    else:
        out = keyed.window(windows.count(3)).aggregate(all=agg.collect("v"), name="threes")
        step = "'threes' (a count window)"
    with pytest.raises(testing.ScheduleDependence) as caught:
        testing.explore(out.write(sinks.memory("o")), ticks(80), partitions=2, seed=2, runs=6)
    assert str(caught.value).endswith(
        f"Steps that take each key's events in arrival order, which is the schedule's where "
        f"a key's events come from several partitions: {step}. Hint: a process step "
        f"(keyed.process) takes them in event-time order; or read each key's events from "
        f"one partition."
    )
    # Not named where no such step is.
    with pytest.raises(testing.ScheduleDependence) as caught:
        testing.explore(planted(400), seed=3, runs=6)
    assert "arrival order" not in str(caught.value)


def test_shrinking_sets_back_what_does_not_matter() -> None:
    pipeline = planted(300)
    with tempfile.TemporaryDirectory() as folder:
        runner = _Runner(pipeline, Path(folder), 0.3)
        first = runner.observe(Schedule())
        # One worker reads the two partitions in turn, a chunk at a time: with
        # chunks of 1 the calls interleave otherwise, whatever else is changed.
        wide = Schedule(batch_size=1, deal=7, stall=("read_memory", "part1", 20))
        found = difference(first, runner.observe(wide))
        assert found is not None
        small, what = _shrink(runner, first, wide, found)
        assert small == Schedule(batch_size=1), small  # the stall and the deal set back
        assert what.startswith("write step 'memory_o': the first run wrote [")


def test_a_second_run_that_differs_on_the_same_schedule_is_said_so() -> None:
    calls = itertools.count()
    p = (
        Pipeline("clocky")
        .read(sources.memory(range(10)))
        .map(lambda x: x + next(calls))  # differs on every run, whatever the schedule
        .write(sinks.memory("o"))
    )
    with pytest.raises(testing.ScheduleDependence, match="on the first run's own schedule"):
        testing.explore(p, runs=2, vary=("batch",))


WINDOWS = {
    "tumbling": windows.tumbling(seconds=5),
    "sliding": windows.sliding(seconds=6, every=2),
    "session": windows.session(seconds=1),
    "count": windows.count(5),
}


@pytest.mark.parametrize("kind", list(WINDOWS))
def test_every_window_kind_gives_the_same_results_on_every_schedule(kind: str) -> None:
    data = ticks()
    if kind == "count":
        # Count windows fill in arrival order: one key's events from one partition.
        data = sorted(data, key=lambda t: t.k)
    clock = windows.event_time(max_delay=1, idle_timeout=0.2)
    results = (
        Pipeline("w")
        .read(sources.memory(data, partitions=2))
        .key_by(lambda e: e.k)
        .window(WINDOWS[kind], clock=clock)
        .aggregate(n=agg.count(), s=agg.sum("v"), hi=agg.max("v"))
    )
    p = results.write(sinks.memory("o")) | results.late.write(sinks.memory("late"))
    found = testing.explore(p, seed=5, runs=8)
    assert {s.describe() for s in found.schedules} >= {"batch_size=1", "processes=2"}
    assert any(s.crash for s in found.schedules) and any(s.stall for s in found.schedules)
    written = {step: sum(lines.values()) for step, lines in found.outputs.items()}
    late_step = next(step for step in written if step.endswith("_late_memory_late"))
    assert written["memory_o"] > 0
    if kind != "count":
        assert written[late_step] > 0  # late events are part of what must agree


def test_early_results_are_left_out_and_the_final_ones_must_agree() -> None:
    # Early results come on the wall clock: a run on chunks of 1 emits other
    # ones than a run on the source's chunks. explore runs without them and
    # compares the final results, which must agree.
    import json

    results = (
        Pipeline("early")
        .read(sources.memory(ticks(), partitions=2, batch_size=20))
        .key_by(lambda e: e.k)
        .window(windows.tumbling(seconds=60), clock=windows.event_time(max_delay=10))
        .aggregate(n=agg.count(), emit="early", every=0.0001)
    )
    p = results.write(sinks.memory("o"))
    assert any(not r.final for r in p.run()["o"])  # the pipeline does emit early results
    found = testing.explore(p, seed=4, runs=4, vary=("batch", "workers"))
    written = [json.loads(line) for line in found.outputs["memory_o"]]
    assert written and all(r["final"] for r in written)
    assert sum(r["n"] for r in written) + sum(found.dead.values()) == len(ticks())


@pytest.mark.parametrize("name", catalog.NAMES)
def test_every_catalog_pipeline_gives_the_same_results_on_every_schedule(name: str) -> None:
    import importlib

    module = importlib.import_module(f"pipelines.catalog.{name}")
    found = testing.explore(module.build(count=1500), seed=2, runs=7)
    assert len(found.schedules) == 7 and sum(sum(c.values()) for c in found.outputs.values())
    assert sum(found.dead.values()) > 0  # the catalog's bad records agree too


def test_the_same_seed_draws_the_same_schedules() -> None:
    p = Pipeline("sq").read(sources.memory(range(30), partitions=2)).write(sinks.memory("o"))
    one = testing.explore(p, seed=9, runs=9, vary=("batch", "workers", "partitions"))
    two = testing.explore(p, seed=9, runs=9, vary=("batch", "workers", "partitions"))
    other = testing.explore(p, seed=10, runs=9, vary=("batch", "workers", "partitions"))
    assert one.schedules == two.schedules != other.schedules


class Opened(MemorySource):
    """Records how its partitions were opened: (partition, resumed from a snapshot)."""

    opened: list[tuple[str, bool]]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        self.opened.append((partition, resume is not None))
        return super().open(partition, step, resume)


def test_a_crash_schedule_crashes_and_resumes_from_the_store() -> None:
    import time

    source = Opened(range(300), batch_size=10)
    source.opened = []

    def slow(x: int) -> int:
        time.sleep(0.001)  # long enough for snapshots to be taken meanwhile
        return x

    p = Pipeline("c").read(source).map(slow).write(sinks.memory("o"))
    found = testing.explore(p, runs=1, vary=("crash",))
    [schedule] = found.schedules
    assert schedule.crash is not None and schedule.crash[2] >= 0
    # sizes, the first run, the crashed run, its resume
    assert [resumed for _, resumed in source.opened][:2] == [False, False]
    assert len(source.opened) == 4
    assert sum(found.outputs["memory_o"].values()) == 300


def test_misuse_of_explore_is_refused() -> None:
    p = Pipeline("m").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(ValueError, match=r"vary takes \['batch', 'workers'"):
        testing.explore(p, vary=("speed",))
    for odd in (0, 2.5, True):  # 2.5 failed inside range(), True ran once
        with pytest.raises(
            ValueError, match=rf"runs must be a whole number of at least 1; got {odd}"
        ):
            testing.explore(p, runs=odd)
    # one dimension named alone is that dimension, not its letters ('b', 'a', 't', ...)
    assert len(testing.explore(p, vary="batch", runs=2).schedules) == 2
