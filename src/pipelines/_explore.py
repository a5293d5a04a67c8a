"""The schedule explorer: one pipeline, one input, many schedules, one answer.

`explore` runs a pipeline under schedules drawn from a seed (batch sizes,
worker and process counts, partitions dealt to other workers, a partition
stalled past ``idle_timeout``, a crash and a resume from the store) and checks
that every run writes what the first run wrote (every sink, ``.late`` streams
included) and makes as many dead letters of each step and kind. On a
difference it shrinks the schedule to the smallest one that still shows it
and raises `ScheduleDependence` with the first differing record.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from operators import Chunk, Reader, Schema, Source
from operators.windows import EventTime
from pipelines._building.builder import Pipeline
from pipelines._building.graph import Node
from pipelines._sample import Records, check_pipeline, replace_sources
from pipelines.sinks import jsonl

__all__ = ["DIMENSIONS", "Exploration", "Schedule", "ScheduleDependence", "explore"]

#: What `explore` varies, unless told otherwise.
DIMENSIONS = ("batch", "workers", "processes", "partitions", "stall", "crash")

#: Batch sizes drawn (None: each source's own).
_BATCHES = (1, 2, 3, 7, 16, 64, 250, None)


class _Crash(Exception):
    """The failure `explore` injects into a source to crash a run."""


@dataclass(frozen=True)
class Schedule:
    """How one run is scheduled; the first run uses the default of each."""

    #: Records per chunk for every source (None: each source's own).
    batch_size: int | None = None
    workers: int = 1
    processes: int = 1
    #: Deals the partitions to workers differently (0: as the source names them).
    deal: int = 0
    #: ``(read step, partition, record index)``: the partition's reader blocks
    #: for the stall before handing on that record.
    stall: tuple[str, str, int] | None = None
    #: ``(read step, partition, record index)``: the run crashes there, then a
    #: second run resumes from the recovery store.
    crash: tuple[str, str, int] | None = None

    def describe(self) -> str:
        """Say the schedule in words (only what differs from the first run).

        >>> Schedule(batch_size=3, workers=2, crash=("read", "part0", 7)).describe()
        'batch_size=3, workers=2, crash at read/part0 record 7 then resume'
        """
        parts = []
        if self.batch_size is not None:
            parts.append(f"batch_size={self.batch_size}")
        if self.workers != 1:
            parts.append(f"workers={self.workers}")
        if self.processes != 1:
            parts.append(f"processes={self.processes}")
        if self.deal:
            parts.append(f"partitions dealt to workers anew (#{self.deal})")
        if self.stall is not None:
            step, part, at = self.stall
            parts.append(f"stall at {step}/{part} record {at}")
        if self.crash is not None:
            step, part, at = self.crash
            parts.append(f"crash at {step}/{part} record {at} then resume")
        return ", ".join(parts) or "the first run's schedule"


@dataclass
class Observed:
    """What one run wrote: each write step's records (as JSON) and dead-letter counts."""

    outputs: dict[str, Counter[str]]
    dead: Counter[tuple[str, str]]


class ScheduleDependence(AssertionError):
    """A pipeline's results depend on the schedule; says the smallest schedule that shows it."""

    def __init__(
        self, seed: int, schedule: Schedule, difference: str, arrival: Collection[str] = ()
    ) -> None:
        """Say what differs, under which schedule, from which seed.

        ``arrival``: the pipeline's steps that take each key's events in
        arrival order (see `arrival_order_steps`), named as a likely cause.
        """
        self.seed = seed
        self.schedule = schedule
        self.difference = difference
        if schedule == Schedule():
            where = (
                "a second run on the first run's own schedule differs: the pipeline depends on "
                "something besides its input (a global, the clock, randomness)"
            )
        else:
            where = f"with {schedule.describe()} (shrunk; explore seed={seed})"
        why = ""
        if arrival and schedule != Schedule():
            why = (
                f". Steps that take each key's events in arrival order, which is the "
                f"schedule's where a key's events come from several partitions: "
                f"{', '.join(arrival)}. Hint: a process step (keyed.process) takes them in "
                f"event-time order; or read each key's events from one partition."
            )
        super().__init__(f"results depend on the schedule: {where}: {difference}{why}")


def arrival_order_steps(pipeline: Pipeline) -> list[str]:
    """Name the steps that take each key's events in arrival order, with why.

    A keyed dispatch with `stateful` handlers and a count window: their
    results follow the order a key's events arrive in, which across
    partitions is the schedule's.
    """
    from operators._dispatch import Stateful
    from operators.windows import Count

    found = []
    for node in pipeline.graph:
        if node.kind == "dispatch" and node.params.get("key") is not None:
            handlers = [h for hs in node.params["table"].values() for h in hs]
            handlers += list(node.params.get("default") or ())
            if any(isinstance(h, Stateful) for h in handlers):
                found.append(f"{node.name!r} (stateful handlers)")
        elif node.kind == "aggregate" and isinstance(node.params.get("window"), Count):
            found.append(f"{node.name!r} (a count window)")
    return found


@dataclass
class Exploration:
    """The schedules a pipeline was run under, all with the first run's results."""

    seed: int
    schedules: list[Schedule] = field(default_factory=list)
    #: Records written per write step by the first run (JSON lines, counted).
    outputs: dict[str, Counter[str]] = field(default_factory=dict)
    #: Dead letters of the first run by ``(step, kind)``.
    dead: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __repr__(self) -> str:
        """Say how many schedules agreed, on how many records: not every record.

        >>> Exploration(3, [Schedule(), Schedule()], {"o": Counter({"1": 2})}, Counter())
        Exploration(seed=3, schedules=2 agreeing, records={'o': 2}, dead letters=0)
        """
        records = {name: sum(lines.values()) for name, lines in self.outputs.items()}
        return (
            f"Exploration(seed={self.seed}, schedules={len(self.schedules)} agreeing, "
            f"records={records}, dead letters={sum(self.dead.values())})"
        )


class _ScheduledReader(Reader):
    """A source partition's reader that blocks or crashes before a given record."""

    def __init__(
        self, inner: Reader, partition: str, stall: tuple[int, float] | None, crash: int | None
    ) -> None:
        self.inner = inner
        self.partition = partition
        self.stall = stall
        self.crash = crash
        self.read = 0
        self.read_ahead = inner.read_ahead

    def next_chunk(self) -> Chunk | None:
        chunk = self.inner.next_chunk()
        if chunk is None:
            return None
        if chunk.own_name is None:
            chunk.own_name = chunk.partition
        chunk.partition = self.partition  # the name this schedule deals the partition by
        end = self.read + len(chunk.items)
        if self.crash is not None and self.read <= self.crash < end:
            msg = f"explore: crash injected before record {self.crash} of {self.partition}"
            raise _Crash(msg)
        if self.stall is not None and self.read <= self.stall[0] < end:
            # Blocking, as a busy step does: the partition is slow, not idle.
            time.sleep(self.stall[1])
            self.stall = None
        self.read = end
        return chunk

    def position(self) -> Any:
        return self.inner.position()

    def next_awake(self) -> Any:
        return self.inner.next_awake()

    def close(self) -> None:
        self.inner.close()


class _ScheduledSource(Source[Any]):
    """A source read under a schedule: its batch size, partition names, stall and crash."""

    def __init__(
        self,
        inner: Source[Any],
        step: str,
        schedule: Schedule,
        stall_seconds: float,
        *,
        crashing: bool,
    ) -> None:
        self.inner = copy.copy(inner)
        if schedule.batch_size is not None:
            self.inner.batch_size = schedule.batch_size
        self.step = step
        self.schedule = schedule
        self.stall_seconds = stall_seconds
        self.crashing = crashing
        self.schema = inner.schema
        self.batch_size = self.inner.batch_size
        self.replayable = inner.replayable

    @property
    def label(self) -> str:
        return self.inner.label

    def _name(self, partition: str) -> str:
        deal = self.schedule.deal
        return partition if not deal else f"{partition}~{deal}"

    def partitions(self) -> list[str]:
        return [self._name(p) for p in self.inner.partitions()]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        original = partition.rsplit("~", 1)[0] if self.schedule.deal else partition
        reader = self.inner.open(original, step, resume)
        stall = crash = None
        s = self.schedule
        if s.stall is not None and s.stall[:2] == (self.step, original) and resume is None:
            stall = (s.stall[2], self.stall_seconds)
        if self.crashing and s.crash is not None and s.crash[:2] == (self.step, original):
            crash = s.crash[2]
        return _ScheduledReader(reader, partition, stall, crash)


@contextlib.contextmanager
def _expected_crash() -> Iterator[None]:
    """Let the planned crash end the run, keeping the engine's report of it off stderr.

    Anything else that goes wrong is raised, with what the run printed.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as printed:
        os.dup2(printed.fileno(), 2)
        try:
            yield
        except _Crash:
            pass  # crashed as planned (a crash past the end never happens)
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            printed.seek(0)
            os.write(2, printed.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _stall_seconds(pipeline: Pipeline) -> float:
    """Longer than the longest ``idle_timeout`` of the pipeline's event-time windows."""
    idle = [
        clock.idle_timeout
        for node in pipeline.graph
        for clock in (node.params.get("clock"), *node.params.get("clocks", ()))
        if node.kind in ("aggregate", "join") and isinstance(clock, EventTime)
    ]
    return max(idle, default=0.0) + 0.5


def _spot(rng: random.Random, reads: dict[str, dict[str, int]]) -> tuple[str, str, int] | None:
    """Pick a random record of a random partition: ``(read step, partition, index)``."""
    places = [(s, p, n) for s, parts in reads.items() for p, n in parts.items() if n]
    if not places:
        return None
    step, part, n = rng.choice(places)
    return (step, part, rng.randrange(n))


def _draw(rng: random.Random, vary: Collection[str], reads: dict[str, dict[str, int]]) -> Schedule:
    """One random schedule over the dimensions in ``vary``."""
    s = Schedule()
    if "batch" in vary:
        s = replace(s, batch_size=rng.choice(_BATCHES))
    if "workers" in vary:
        s = replace(s, workers=rng.choice((1, 2, 4)))
    if "processes" in vary and rng.random() < 0.25:
        s = replace(s, processes=2, workers=min(s.workers, 2))
    if "partitions" in vary:
        s = replace(s, deal=rng.randrange(1, 10_000))
    if "stall" in vary and rng.random() < 0.2:
        s = replace(s, stall=_spot(rng, reads))
    if "crash" in vary and rng.random() < 0.3:
        s = replace(s, crash=_spot(rng, reads))
    return s


def _first_schedules(
    rng: random.Random, vary: Collection[str], reads: dict[str, dict[str, int]]
) -> Iterator[Schedule]:
    """One schedule per dimension (each alone), then random mixes."""
    one = {
        "batch": lambda: Schedule(batch_size=1),
        "workers": lambda: Schedule(workers=2),
        "processes": lambda: Schedule(processes=2),
        # Dealing partitions anew shows on several workers only.
        "partitions": lambda: Schedule(workers=4, deal=rng.randrange(1, 10_000)),
        "stall": lambda: Schedule(stall=_spot(rng, reads)),
        "crash": lambda: Schedule(crash=_spot(rng, reads)),
    }
    for name in DIMENSIONS:
        if name in vary:
            schedule = one[name]()
            if schedule != Schedule():  # nothing to stall or crash in: no records
                yield schedule
    while True:
        yield _draw(rng, vary, reads)


class _Runner:
    """Runs the pipeline under schedules, writing every sink to files in a folder."""

    def __init__(self, pipeline: Pipeline, folder: Path, stall_seconds: float) -> None:
        self.pipeline = pipeline
        self.folder = folder
        self.stall_seconds = stall_seconds
        self.count = 0

    def _build(self, schedule: Schedule, out: Path, *, crashing: bool) -> Pipeline:
        def change(node: Node) -> dict[str, Any] | None:
            if node.kind == "read":
                source = _ScheduledSource(
                    node.params["source"],
                    node.name,
                    schedule,
                    self.stall_seconds,
                    crashing=crashing,
                )
                return {"source": source}
            if node.kind == "write":
                return {"sink": jsonl(out / f"{node.name}.jsonl")}
            if node.kind == "aggregate" and node.params.get("emit") == "early":
                # Early results come on the wall clock, so they differ by nature
                # from run to run: every run emits the final results alone.
                return {"emit": "final", "every": None}
            return None

        return self.pipeline.rebuilt(change, dead=jsonl(out / "_dead_letters.jsonl"))

    def observe(self, schedule: Schedule) -> Observed:
        """Run under ``schedule`` and read back what it wrote."""
        self.count += 1
        out = self.folder / f"run{self.count}"
        out.mkdir()
        options: dict[str, Any] = {"workers": schedule.workers, "progress": False}
        if schedule.processes > 1:
            options["processes"] = schedule.processes
        if schedule.crash is None:
            self._build(schedule, out, crashing=False).run(**options)
        else:
            store = out / "store"
            options.update(recovery=store, snapshot_interval=0.02)
            with _expected_crash():
                self._build(schedule, out, crashing=True).run(**options)
            self._build(schedule, out, crashing=False).run(**options)
        observed = Observed({}, Counter())
        for node in self.pipeline.graph:
            if node.kind == "write":
                path = out / f"{node.name}.jsonl"
                lines = path.read_text().splitlines() if path.exists() else []
                observed.outputs[node.name] = Counter(lines)
        dead = out / "_dead_letters.jsonl"
        for line in dead.read_text().splitlines() if dead.exists() else []:
            letter = json.loads(line)
            observed.dead[(letter["step"], letter["kind"])] += 1
        shutil.rmtree(out, ignore_errors=True)
        return observed

    def sizes(self) -> dict[str, dict[str, int]]:
        """Count the records of each partition of every read step (as a first run reads them)."""
        reads: dict[str, dict[str, int]] = {}
        for node in self.pipeline.graph:
            if node.kind != "read":
                continue
            source: Source[Any] = node.params["source"]
            parts = {}
            for part in source.partitions():
                reader = source.open(part, node.name, None)
                n = 0
                try:
                    while True:
                        chunk = reader.next_chunk()
                        if chunk is None:
                            break  # not ready now (a live source): sized as far as it went
                        n += len(chunk.items)
                except StopIteration:
                    pass
                finally:
                    reader.close()
                parts[part] = n
            reads[node.name] = parts
        return reads


def difference(first: Observed, other: Observed) -> str | None:
    r"""Say the first difference between two runs' results, or None.

    >>> a = Observed({"out": Counter(['{"x":1}'])}, Counter())
    >>> b = Observed({"out": Counter(['{"x":2}'])}, Counter())
    >>> difference(a, b)
    'write step \'out\': the first run wrote {"x":1} once, this one 0 times'
    """
    for step in sorted(first.outputs):
        want, got = first.outputs[step], other.outputs.get(step, Counter())
        if want == got:
            continue
        missing = sorted((want - got).elements())
        extra = sorted((got - want).elements())
        line = missing[0] if missing else extra[0]
        return (
            f"write step {step!r}: the first run wrote {line} "
            f"{_times(want[line])}, this one {_times(got[line])}"
        )
    if first.dead != other.dead:
        for where in sorted(set(first.dead) | set(other.dead)):
            if first.dead[where] != other.dead[where]:
                step, kind = where
                return (
                    f"dead letters of step {step!r}, kind {kind!r}: the first run made "
                    f"{first.dead[where]}, this one {other.dead[where]}"
                )
    return None


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _shrink(
    runner: _Runner, first: Observed, schedule: Schedule, found: str
) -> tuple[Schedule, str]:
    """Set each part of ``schedule`` back to the first run's while the difference remains."""
    base = Schedule()
    changed = True
    while changed:
        changed = False
        for name in ("crash", "stall", "processes", "workers", "deal", "batch_size"):
            if getattr(schedule, name) == getattr(base, name):
                continue
            trial = replace(schedule, **{name: getattr(base, name)})
            if name == "processes":
                trial = replace(trial, workers=schedule.workers)
            again = difference(first, runner.observe(trial))
            if again is not None:
                schedule, found, changed = trial, again, True
    return schedule, found


def explore(
    pipeline: Pipeline,
    records: Records | None = None,
    *,
    partitions: int = 1,
    schema: Schema | None = None,
    seed: int = 0,
    runs: int = 10,
    vary: Collection[str] = DIMENSIONS,
    stall: float | None = None,
) -> Exploration:
    """Run ``pipeline`` under ``runs`` schedules drawn from ``seed``; check they all agree.

    With ``records``, every source reads those (split into ``partitions``
    contiguous partitions, parsed with the source's schema or ``schema``; a
    dict of lists by read step name gives each source named its own);
    otherwise each source reads its own records. The first run reads each
    source as it is, with 1 worker in 1 process; the others vary what
    ``vary`` names (`DIMENSIONS`): ``batch`` (records per chunk, 1 to the
    default), ``workers`` (1, 2, 4), ``processes`` (2), ``partitions`` (dealt
    to workers anew), ``stall`` (one partition blocks for ``stall`` seconds,
    by default half a second past the longest ``idle_timeout``) and ``crash``
    (a crash at a random record, then a resume from a recovery store). Every
    sink is written to a file in a temporary folder instead (nothing reaches
    the real sinks). Aggregates with ``emit="early"`` emit their final
    results alone: early results come on the wall clock.

    Every run must write the same records to each write step (``.late``
    included), as many times, and make as many dead letters of each step and
    kind; otherwise `ScheduleDependence` says the smallest schedule that
    differs (each part set back to the first run's while the difference
    remains) and the first differing record. The same seed draws the same
    schedules.

    >>> from pipelines import Pipeline, sources, sinks
    >>> p = Pipeline("sq").read(sources.memory(range(50))).map(lambda x: x * x)
    >>> found = explore(p.write(sinks.memory("o")), runs=3, vary=("batch", "workers"))
    >>> len(found.schedules), sum(found.outputs["memory_o"].values())
    (3, 50)
    """
    if isinstance(vary, str):
        vary = (vary,)  # one dimension, not its letters
    unknown = set(vary) - set(DIMENSIONS)
    if unknown:
        msg = f"explore: vary takes {list(DIMENSIONS)}; got {sorted(unknown)}."
        raise ValueError(msg)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        msg = f"explore: runs must be a whole number of at least 1; got {runs!r}."
        raise ValueError(msg)
    check_pipeline(pipeline, "testing.explore")
    if records is not None:
        pipeline = replace_sources(pipeline, records, schema=schema, partitions=partitions)
    pause = _stall_seconds(pipeline) if stall is None else stall
    found = Exploration(seed)
    with tempfile.TemporaryDirectory(prefix="evflow-explore-") as folder:
        runner = _Runner(pipeline, Path(folder), pause)
        first = runner.observe(Schedule())
        found.outputs, found.dead = first.outputs, first.dead
        rng = random.Random(seed)
        schedules = _first_schedules(rng, vary, runner.sizes())
        for _ in range(runs):
            schedule = next(schedules)
            found.schedules.append(schedule)
            found_difference = difference(first, runner.observe(schedule))
            if found_difference is not None:
                small, what = _shrink(runner, first, schedule, found_difference)
                raise ScheduleDependence(seed, small, what, arrival_order_steps(pipeline))
    return found
