"""Crash and resume: killed at random moments, resumed, nothing lost, state exact."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import lzma
import math
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from operators import Chunk, Event, Reader, Source
from pipelines import Pipeline, PipelineHalted, sinks, sources
from tests.helpers import children

ROOT = Path(__file__).resolve().parents[2]


def load_chaos() -> Any:
    """The chaos harness of bench/chaos.py (the suite runs a small version of it)."""
    spec = importlib.util.spec_from_file_location("evflow_bench_chaos", ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_killed_at_random_and_resumed_loses_nothing(tmp_path: Path) -> None:
    # 100,000 events with keyed window state, SIGKILLed at random moments at
    # least 10 times, the worker count changing between resumes
    chaos = load_chaos().Chaos(tmp_path, events=100_000, rate=8_000)
    kills = chaos.kill_at_random(10, random.Random(4), max_attempts=40)
    assert kills == 10
    summary = chaos.finish()
    assert summary["reconciles"]
    chaos.check()


def test_a_killed_process_of_a_cluster_is_restarted_and_results_are_exact(
    tmp_path: Path,
) -> None:
    chaos = load_chaos().Chaos(tmp_path, events=60_000, rate=20_000)
    proc = subprocess.Popen(
        chaos.command("-p", "2", "--restart", "2", "--json"),
        env=chaos.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    members = children(proc.pid)
    assert len(members) == 2, "the cluster did not start"
    os.kill(members[1], signal.SIGKILL)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"the supervised run did not end: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    assert (
        "process 1 of pipeline" in stderr and "restarting from the last snapshot (1 of 2)" in stderr
    )
    summary = json.loads(stdout)
    assert summary["restarts"] == 1 and summary["reconciles"]
    chaos.check()


def test_an_unsafe_recovery_directory_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "shared_store"
    store.mkdir()
    store.chmod(0o777)
    p = Pipeline("r").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(
        PermissionError,
        match=r"recovery directory .* can be written by other users \(mode drwxrwxrwx\)"
        r".*chmod go-w",
    ):
        p.run(recovery=store)
    fresh = tmp_path / "fresh_store"
    assert p.run(recovery=fresh)["o"] == [1]
    assert fresh.stat().st_mode & 0o777 == 0o700 and list(fresh.glob("*.sqlite3"))
    for interval in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"snapshot_interval must be a positive, finite"):
            p.run(recovery=fresh, snapshot_interval=interval)
    with pytest.raises(ValueError, match=r"formation_timeout must be a positive, finite"):
        p.run(processes=2, formation_timeout=-1)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_store_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    import pickle
    import sqlite3

    from pipelines._running.store import UnsafeSnapshotError

    store = tmp_path / "store"
    p = Pipeline("t").read(sources.memory(range(10))).write(sinks.memory("o"))
    p.run(recovery=store)
    marker = tmp_path / "pwned"
    part = next(store.glob("*.sqlite3"))
    with sqlite3.connect(part) as db:
        db.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
            "VALUES ('t.read_memory', 'part0', 99, ?)",
            (pickle.dumps(_Evil(marker)),),
        )
    with pytest.raises(
        UnsafeSnapshotError,
        match=r"\(part-0.sqlite3\) holds a snapshot of step 't.read_memory' "
        r"\(key 'part0'\) that refers to the global "
        r"'(posix|os)\.system', which is not evflow state.*nothing of it was run",
    ):
        p.run(recovery=store)
    assert not marker.exists()


def test_a_store_that_is_not_a_recovery_store_is_refused(tmp_path: Path) -> None:
    from pipelines._running.store import UnsafeSnapshotError

    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / "part-0.sqlite3").write_bytes(b"not a database at all" * 100)
    p = Pipeline("t").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(
        UnsafeSnapshotError,
        match=r"part-0.sqlite3 is not a readable evflow "
        r"recovery partition",
    ):
        p.run(recovery=store)


def test_restart_needs_recovery() -> None:
    p = Pipeline("r").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(ValueError, match=r"restart=2 needs recovery"):
        p.run(restart=2)
    with pytest.raises(ValueError, match=r"restart must be an int >= 0"):
        p.run(restart=-1)


def test_a_cluster_that_keeps_failing_is_given_up_after_its_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines._running.cluster as processes
    from pipelines._running.run import Recovery

    starts: list[int] = []

    def always_dies(*args: object) -> None:
        starts.append(1)
        raise processes.ClusterError("process 1 of pipeline 'r' died (exit code -9)")

    monkeypatch.setattr(processes, "run_processes", always_dies)
    p = Pipeline("r").read(sources.memory([1])).write(sinks.memory("o"))
    store = Recovery.prepare(tmp_path / "store", 1.0)
    with pytest.raises(
        processes.ClusterError,
        match=r"died \(exit code -9\); the cluster had been restarted 2 time\(s\) before this",
    ):
        processes.run_supervised(p, 1, 2, 30.0, store, 2)
    assert len(starts) == 3


def test_a_store_keyed_by_other_bucket_names_is_refused(tmp_path: Path) -> None:
    # A window snapshot written by an evflow that grouped keys into other
    # buckets (no layout mark) would split each key's state: refused, named.
    import math
    import pickle
    import sqlite3

    from operators import agg, windows
    from tests.pipelines.test_aggregate import hit

    store = tmp_path / "store"
    p = (
        Pipeline("t")
        .read(sources.memory([hit(f"u{i % 3}", i) for i in range(100)]))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10))
        .aggregate(n=agg.count())
        .write(sinks.memory("o"))
    )
    assert len(p.run(recovery=store)["o"]) == 30
    old = {"wm": {"read_memory/part0": 50.0}, "closed": -math.inf, "wins": {}, "heap": []}
    part = next(store.glob("*.sqlite3"))
    with sqlite3.connect(part) as db:
        step = db.execute("SELECT DISTINCT step_id FROM snaps WHERE step_id LIKE '%aggregate%'")
        (step_id,) = step.fetchone()
        db.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, '5', 1, ?)",
            (step_id, pickle.dumps(old)),
        )
    from pipelines import ResumeError

    with pytest.raises(
        ResumeError,
        match=r"step 'aggregate_tumbling_10s_n': its snapshot in the recovery store was "
        r"written by an earlier evflow that grouped keys into other buckets",
    ):
        p.run(recovery=store)


def test_an_exact_sink_of_ones_own_refuses_records_as_dead_letters(tmp_path: Path) -> None:

    from operators import ExactSink, ExactWriter, RunContext, Writer

    kept: list[int] = []

    class EvensOnly(ExactWriter):
        def __init__(self, resume: int | None) -> None:
            del kept[resume or 0 :]  # undo what came after the position

        def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
            kept.extend(n for n in items if n % 2 == 0)
            return [(n, ValueError(f"odd: {n}")) for n in items if n % 2]

        def position(self) -> int:
            return len(kept)

    class Evens(ExactSink):
        @property
        def label(self) -> str:
            return "evens"

        def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
            return EvensOnly(None)

        def open_exact(self, ctx: RunContext, step: str, resume: Any | None) -> ExactWriter:
            assert step == "evens"
            return EvensOnly(resume)

    result = (
        Pipeline("exact")
        .read(sources.memory(range(100), batch_size=7))
        .write(Evens())
        .run(recovery=tmp_path / "store", workers=2)
    )
    assert kept == list(range(0, 100, 2))
    assert result.counts["evens"].dead == 50 and result.reconciles
    letter = result.dead_letters[0]
    assert (letter.step, letter.error_type, letter.function) == ("evens", "ValueError", "Evens")
    assert letter.message == f"odd: {letter.payload}"


class _AckingReader(Reader):
    """Reads 0 to 99 in chunks of 10; hears what it may acknowledge upstream."""

    def __init__(self, step: str, told: list[int], fail_at_end: bool) -> None:
        self.step = step
        self.next = 0
        self.told = told
        self.fail_at_end = fail_at_end

    def next_chunk(self) -> Chunk:
        if self.next >= 100:
            raise StopIteration
        chunk = Chunk(list(range(self.next, self.next + 10)), self.step, "p0")
        self.next += 10
        return chunk

    def position(self) -> int:
        return self.next

    def committed(self, position: Any) -> None:
        if self.fail_at_end and position == 100:
            raise ConnectionError("broker gone")
        self.told.append(position)


class _Acking(Source):
    label = "acking"

    def __init__(self, fail_at_end: bool = False) -> None:
        self.told: list[int] = []
        self.fail_at_end = fail_at_end

    def partitions(self) -> list[str]:
        return ["p0"]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        return _AckingReader(step, self.told, self.fail_at_end)


def test_a_reader_hears_its_last_position_once_the_run_has_ended_well(tmp_path: Path) -> None:
    source = _Acking()
    result = Pipeline("acks").read(source).write(sinks.memory("o")).run(recovery=tmp_path / "s")
    assert result["o"] == list(range(100)) and result.reconciles
    assert source.told[-1] == 100 and source.told == sorted(source.told)


def test_a_reader_that_cannot_acknowledge_at_the_end_is_reported_after_a_good_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    source = _Acking(fail_at_end=True)
    result = Pipeline("acks").read(source).write(sinks.memory("o")).run(recovery=tmp_path / "s")
    assert result["o"] == list(range(100)) and result.reconciles  # the run's outcome stands
    assert 100 not in source.told
    err = capfd.readouterr().err
    assert "evflow: could not acknowledge what acking read: ConnectionError: broker gone" in err


def test_a_halted_run_never_tells_its_reader_a_position_past_the_halt(tmp_path: Path) -> None:
    source = _Acking()

    def fragile(x: int) -> int:
        if x == 55:
            raise ValueError("55")
        return x

    p = Pipeline("acks").read(source).map(fragile, on_error="halt").write(sinks.memory("o"))
    with pytest.raises(PipelineHalted):
        p.run(recovery=tmp_path / "s")
    # Never past the chunk that halted (50 to 59): a resumed run reads it again.
    assert all(position <= 50 for position in source.told)


# -- a pipeline changed between a halt and its resume --------------------------


def _changed(
    tmp_path: Path, step: str, *, halt_at: int | None = None, source: str = "buys"
) -> Pipeline:
    """Purchases of three users (100 a second) through one keyed step, results to a file.

    ``step`` picks the keyed step: ``"w10"``, ``"w20"`` (10 or 20 second
    tumbling counts under their default names), ``"named10"``, ``"named20"``
    (the same, named ``counts``), ``"named_sum"`` (``counts`` with a sum too),
    ``"join"`` or ``"join2"`` (an interval join of the purchases with themselves
    under two names), ``"join_window"`` (a windowed one named ``join``),
    ``"process"`` or ``"process2"`` (a running total per user with a timer,
    under two names).
    """
    from datetime import timedelta, timezone

    from operators import agg, windows
    from tests.helpers import Purchase

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    buys = [
        Purchase(id=f"p{i}", user=f"u{i % 3}", amount=i, time=t0 + timedelta(seconds=i / 100))
        for i in range(20_000)
    ]

    def stop(e: Purchase) -> Purchase:
        if e.amount == halt_at:
            raise RuntimeError("stop")
        return e

    keyed = (
        Pipeline("changed")
        .read(sources.memory(buys, batch_size=100), name=source)
        .map(stop, on_error="halt")
        .key_by(lambda e: e.user)
    )
    out: Any
    if step.startswith(("w", "named")):
        window = windows.tumbling(seconds=20 if step.endswith("20") else 10)
        fields: dict[str, Any] = {"n": agg.count()}
        if step == "named_sum":
            fields["total"] = agg.sum("amount")
        name = "counts" if step.startswith("named") else None
        out = keyed.window(window).aggregate(name=name, **fields)
    elif step == "join_window":
        out = keyed.join(
            keyed, window=windows.tumbling(seconds=1), name="join", select=lambda a, b: a.amount
        )
    elif step.startswith("join"):
        out = keyed.join(keyed, between=(0, 0.02), name=step, select=lambda a, b: a.amount)
    else:

        def total(state: float, e: Purchase, ctx: Any) -> float:
            ctx.timer(e.time + timedelta(seconds=1))
            return state + e.amount

        def told(state: float, timer: Any, ctx: Any) -> float:
            ctx.emit((ctx.key, state))
            return state

        out = keyed.process(total, initial=float, on_timer=told, name=step)
    return out.write(sinks.jsonl(tmp_path / "out.jsonl"))


def _halted(tmp_path: Path, step: str) -> Path:
    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        _changed(tmp_path, step, halt_at=15_000).run(recovery=store, snapshot_interval=0.01)
    return store


def _counted(tmp_path: Path) -> dict[str, int]:
    """Each user's count over the windows written."""
    counts = {"u0": 0, "u1": 0, "u2": 0}
    for line in (tmp_path / "out.jsonl").read_text().splitlines():
        row = json.loads(line)
        counts[row["key"]] += row["n"]
    return counts


EVERY_USER = {"u0": 6667, "u1": 6667, "u2": 6666}


def test_a_store_another_pipeline_wrote_is_refused_by_its_name(tmp_path: Path) -> None:
    # Two pipelines of one shape given one store: the second was refused as
    # lacking steps it has ('read_memory'), since the store's are named after
    # the pipeline that wrote them. The message now says whose store it is.
    from pipelines import ResumeError

    def pipeline(name: str, values: range) -> Pipeline:
        def stop(x: int) -> int:
            if x == 900:
                raise RuntimeError("stop")
            return x

        read = sources.memory(list(values), batch_size=10)
        out = sinks.jsonl(tmp_path / f"{name}.jsonl")
        return Pipeline(name).read(read).map(stop, on_error="halt").write(out)

    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        pipeline("first", range(1000)).run(recovery=store, snapshot_interval=0.001)
    with pytest.raises(
        ResumeError,
        match=r"holds the state of pipeline\(s\) 'first', not of pipeline 'second'.*"
        r"Hint: give each pipeline a store of its own",
    ):
        pipeline("second", range(5000, 6000)).run(recovery=store)


def test_a_step_renamed_by_a_changed_window_is_refused_then_resumed_as_it_was(
    tmp_path: Path,
) -> None:
    # An aggregate's default name says its window: resumed with another, its
    # old state (the events of its open windows) would be dropped, the
    # summary reconciling. Refused, naming what it holds; resumed as it was,
    # every event counts once.
    from pipelines import ResumeError

    store = _halted(tmp_path, "w10")
    with pytest.raises(
        ResumeError,
        match=r"holds the state of step\(s\) this pipeline does not have "
        r"\('aggregate_tumbling_10s_n': \d+ open window\(s\)\): resuming would drop it.*"
        r"steps that keep state are \['buys', 'aggregate_tumbling_20s_n'\].*Hint: resume "
        r"with the pipeline as it was",
    ):
        _changed(tmp_path, "w20").run(recovery=store)
    # A renamed source would read its input again: refused too.
    with pytest.raises(ResumeError, match=r"\('buys': 1 position\(s\) in its partitions\)"):
        _changed(tmp_path, "w10", source="purchases").run(recovery=store)
    assert _changed(tmp_path, "w10").run(recovery=store).reconciles
    assert _counted(tmp_path) == EVERY_USER


@pytest.mark.parametrize(
    ("before", "after", "held"),
    [
        ("join", "join2", r"held record\(s\)"),
        ("process", "process2", r"key state\(s\), \d+ timer\(s\)"),
    ],
)
def test_a_renamed_join_or_process_step_is_refused_with_what_it_holds(
    tmp_path: Path, before: str, after: str, held: str
) -> None:
    from pipelines import ResumeError

    store = _halted(tmp_path, before)
    with pytest.raises(ResumeError, match=rf"\('{before}': \d+ {held}"):
        _changed(tmp_path, after).run(recovery=store)


@pytest.mark.parametrize(
    ("before", "changed", "name", "was", "now"),
    [
        (
            "named10",
            "named20",
            "counts",
            r"windows Tumbling\(size=10\.0\) of n=count\(\)",
            r"windows Tumbling\(size=20\.0\) of n=count\(\)",
        ),
        (
            "named10",
            "named_sum",
            "counts",
            r"windows Tumbling\(size=10\.0\) of n=count\(\)",
            r"windows Tumbling\(size=10\.0\) of n=count\(\), total=sum\(amount\)",
        ),
        (
            "join",
            "join_window",
            "join",
            r"the records of an interval join between 0\.0 and 0\.02 s",
            r"the records of a join of windows Tumbling\(size=1\.0\)",
        ),
    ],
)
def test_a_step_of_the_same_name_and_another_kind_of_state_is_refused(
    tmp_path: Path, before: str, changed: str, name: str, was: str, now: str
) -> None:
    # Another window would close what it holds as it was made but make new
    # windows that miss what the old ones held (under its default name it is
    # another step: see above); new aggregate fields would read the
    # accumulators of others, a join of another kind the records held as for
    # another. Refused; resumed as it was, the results are exact.
    from pipelines import ResumeError

    store = _halted(tmp_path, before)
    with pytest.raises(
        ResumeError,
        match=rf"step '{name}': its snapshot in the recovery store holds {was} \(\d+ \D+ in a "
        rf"key bucket\), and the step is now {now}: resuming would read that state as what it "
        r"is not, or make windows \(pairs\) that miss what it held.*Hint: remove the store",
    ):
        _changed(tmp_path, changed).run(recovery=store)
    assert _changed(tmp_path, before).run(recovery=store).reconciles
    if name == "counts":
        assert _counted(tmp_path) == EVERY_USER
    else:
        # Each purchase meets itself only: its user's next one is 0.03 s later.
        pairs = (tmp_path / "out.jsonl").read_text().splitlines()
        assert sorted(map(float, pairs)) == [float(i) for i in range(20_000)]


def test_a_step_whose_windows_have_all_closed_may_go(tmp_path: Path) -> None:
    # A run that ended closed every window: its aggregate holds nothing, and
    # a changed pipeline starts on the store (reading on from the end).
    store = tmp_path / "store"
    assert _changed(tmp_path, "w10").run(recovery=store).reconciles
    assert _counted(tmp_path) == EVERY_USER
    again = _changed(tmp_path, "w20").run(recovery=store)
    assert again.reconciles and again.counts["buys"].received == 0


@pytest.mark.parametrize("source", ["memory", "generate"])
def test_a_source_resumed_in_other_partitions_is_refused_then_exact(
    tmp_path: Path, source: str
) -> None:
    # A memory source's partitions are contiguous parts of its list, a
    # generator's each make their own share of the sequence: resumed in
    # another number of parts, the positions kept would skip records (3,333 of
    # 20,000 were lost, the summary reconciling) or make others.
    from pipelines import ResumeError

    def pipeline(parts: int, halt_at: int | None = None) -> Pipeline:
        def stop(x: int) -> int:
            if x == halt_at:
                raise RuntimeError("stop")
            return x

        src = (
            sources.memory(range(20_000), batch_size=100, partitions=parts)
            if source == "memory"
            else sources.generate(lambda rng, i: i, count=20_000, partitions=parts, batch_size=100)
        )
        return (
            Pipeline("parts")
            .read(src, name="numbers")
            .map(stop, on_error="halt")
            .write(sinks.jsonl(tmp_path / "out.jsonl"))
        )

    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        pipeline(2, halt_at=15_000).run(recovery=store, snapshot_interval=0.01)
    said = (
        r"partition 'part0' read items 0 to 10000 of the list when the recovery store was "
        r"written, and would read 0 to 6667 now \(the list has 20000 items in 3 partition\(s\)\)"
        if source == "memory"
        else r"the generator made its records in 2 partition\(s\) when the recovery store was "
        r"written, and would make them in 3 now"
    )
    with pytest.raises(ResumeError, match=rf"step 'numbers': {said}.*Hint: remove the store"):
        pipeline(3).run(recovery=store)
    assert pipeline(2).run(recovery=store).reconciles
    written = [int(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(written) == list(range(20_000))


class Reading(Event):
    n: int


@pytest.mark.parametrize("made", ["without id and time", "other numbers"])
def test_a_memory_source_whose_records_changed_before_a_resume_is_refused_then_exact(
    tmp_path: Path, made: str
) -> None:
    # A program run again makes its list again: events made without id= and time=
    # get a new random id and a new time each run, so a resume went on in the middle
    # of other records (and windows mixed times of two runs), the summary reconciling.
    from pipelines import ResumeError

    def records(again: bool) -> list[Any]:
        if made == "without id and time":
            return [Reading(n=i) for i in range(20_000)]
        return list(range(1, 20_001) if again else range(20_000))

    def pipeline(given: list[Any], halt_at: int | None = None) -> Pipeline:
        def stop(r: Any) -> Any:
            if (r.n if isinstance(r, Reading) else r) == halt_at:
                raise RuntimeError("stop")
            return r.n if isinstance(r, Reading) else r

        return (
            Pipeline("remade")
            .read(sources.memory(given, batch_size=100, partitions=2), name="readings")
            .map(stop, on_error="halt")
            .write(sinks.jsonl(tmp_path / "out.jsonl"))
        )

    store = tmp_path / "store"
    first = records(again=False)
    with pytest.raises(PipelineHalted):
        pipeline(first, halt_at=15_000).run(recovery=store, snapshot_interval=0.01)
    with pytest.raises(
        ResumeError,
        match=r"step 'readings': item \d+ of the list, the last that partition 'part\d' read "
        r"before the recovery store was written, is not what it was then \(the list has 20000 "
        r"items, as then\)",
    ):
        pipeline(records(again=True)).run(recovery=store)
    # the records of the first run, made again as they were: read on from where it halted
    assert pipeline(first).run(recovery=store).reconciles
    written = [int(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(written) == list(range(20_000))


def test_a_memory_source_of_events_with_ids_and_times_resumes_when_made_again(
    tmp_path: Path,
) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def records() -> list[Reading]:
        return [Reading(id=f"r{i}", n=i, time=t0 + timedelta(seconds=i)) for i in range(20_000)]

    def pipeline(halt_at: int | None = None) -> Pipeline:
        def stop(r: Reading) -> int:
            if r.n == halt_at:
                raise RuntimeError("stop")
            return r.n

        return (
            Pipeline("made_again")
            .read(sources.memory(records(), batch_size=100), name="readings")
            .map(stop, on_error="halt")
            .write(sinks.jsonl(tmp_path / "out.jsonl"))
        )

    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        pipeline(halt_at=15_000).run(recovery=store, snapshot_interval=0.01)
    assert pipeline().run(recovery=store).reconciles  # a new list, the same records
    written = [int(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == list(range(20_000))


@pytest.mark.parametrize("cut", ["torn", "whole"])
def test_a_last_line_read_while_it_was_written_is_read_whole_after_it(
    tmp_path: Path, cut: str
) -> None:
    # A file that grows is read on by a resumed run. Its last line, read
    # before its writer ended it, was read on from where it had stopped:
    # torn, its rest became a second dead letter and the record none (the
    # summary reconciling); whole, its newline became an empty line and every
    # later record's line and id moved on by one. The position now says that
    # the last line was open: torn, it is read again whole; whole, its newline
    # is passed over.
    from pipelines import Event

    class Num(Event):
        n: int

    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"type": "num", "n": i}) for i in range(12)]
    end = lines[10].index(":") + 2 if cut == "torn" else len(lines[10])
    path.write_text("\n".join(lines[:10]) + "\n" + lines[10][:end])

    def pipeline(out: str) -> Pipeline:
        return (
            Pipeline("growing")
            .read(sources.jsonl(path, schema=Num, batch_size=4), name="numbers")
            .write(sinks.jsonl(tmp_path / f"{out}.jsonl"))
            .dead_letters(sinks.jsonl(tmp_path / f"{out}_dead.jsonl"))
        )

    store = tmp_path / "store"
    assert pipeline("out").run(recovery=store).reconciles
    with path.open("ab") as f:  # a carriage return alone does not tell yet whether it ended
        f.write(lines[10][end:].encode() + b"\r")
    assert pipeline("out").run(recovery=store).read == (1 if cut == "torn" else 0)
    with path.open("a") as f:
        f.write("\n" + lines[11] + "\n")
    assert pipeline("out").run(recovery=store).reconciles
    assert pipeline("fresh").run().reconciles  # the whole file read at once
    got, fresh = (
        [json.loads(line) for line in (tmp_path / f"{out}.jsonl").read_text().splitlines()]
        for out in ("out", "fresh")
    )
    assert [(r["n"], r["id"]) for r in got] == [(r["n"], r["id"]) for r in fresh]
    assert [r["id"].rsplit("/", 2)[-2:] for r in got][-2:] == [
        ["in.jsonl", "10"],
        ["in.jsonl", "11"],
    ]
    dead = [json.loads(line) for line in (tmp_path / "out_dead.jsonl").read_text().splitlines()]
    # Torn, the first run read part of a line: that part, and only it, is a dead letter.
    assert [(d["payload"], d["origin"]["line"]) for d in dead] == (
        [(lines[10][:end], 11)] if cut == "torn" else []
    )


def test_a_last_csv_row_read_while_it_was_written_refuses_the_resume_saying_so(
    tmp_path: Path,
) -> None:
    # A csv row cut short is a row all the same (`c,1` of `c,15`): the record
    # made of it was cut, and a resume was refused as if the file had been
    # replaced. The refusal now says what happened.
    from pipelines import ResumeError

    path = tmp_path / "in.csv"
    path.write_text("n\n1\n2\n1")
    pipeline = Pipeline("rows").read(sources.csv(path, schema=None), name="numbers")
    pipeline = pipeline.write(sinks.jsonl(tmp_path / "out.jsonl"))
    assert pipeline.run(recovery=tmp_path / "store").reconciles
    with path.open("a") as f:
        f.write("5\n3\n")
    with pytest.raises(
        ResumeError,
        match=r"row 3 of file .* was read while its writer was still writing it: it has "
        r"grown since \(it reads '15' now\), so the record made of it then was cut short",
    ):
        pipeline.run(recovery=tmp_path / "store")


def _numbers(fmt: str, numbers: range, *, header: bool = True) -> str:
    if fmt == "csv":
        return ("n\n" if header else "") + "".join(f"{i}\n" for i in numbers)
    return "".join(json.dumps({"n": i}) + "\n" for i in numbers)


def _compressed(path: Path, kind: str, text: str) -> Path:
    """Write ``text`` to ``path`` compressed as ``kind`` (gzip, bz2 or xz)."""
    opener = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[kind]
    with opener(path, "wt") as f:
        f.write(text)
    return path


def _halting_numbers(path: Path, fmt: str, halts: set[int], out: Path) -> Pipeline:
    """Read the numbers of ``path`` (``fmt``) into ``out``, halting once at each of ``halts``."""

    def stop(record: Any) -> int:
        n = int(record["n"]) if fmt == "csv" else int(json.loads(record)["n"])
        if n in halts:
            halts.discard(n)
            raise RuntimeError("stop")
        return n

    read = sources.csv if fmt == "csv" else sources.jsonl
    return (
        Pipeline("packed")
        .read(read(path, schema=None, batch_size=100), name="numbers")
        .map(stop, on_error="halt")
        .write(sinks.jsonl(out))
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz"])
def test_a_compressed_file_halted_and_resumed_writes_each_record_once(
    tmp_path: Path, fmt: str, kind: str
) -> None:
    # Read as its compressed bytes, each line of such a file was a dead letter (or a
    # few records of garbage); it is read as what it holds, and resumed from where it was.
    path = _compressed(tmp_path / f"in.{fmt}.{kind}", kind, _numbers(fmt, range(20_000)))
    # Written compressed too: a batch a resume writes again is cut back with its stream.
    out = tmp_path / f"out.jsonl.{ {'gzip': 'gz'}.get(kind, kind) }"
    flow = _halting_numbers(path, fmt, {3_000, 11_000, 19_999}, out)
    store = tmp_path / "store"
    for _ in range(3):
        with pytest.raises(PipelineHalted):
            flow.run(recovery=store, snapshot_interval=0.01)
    assert flow.run(recovery=store).reconciles
    opener = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[kind]
    with opener(out, "rt") as f:
        written = [int(line) for line in f.read().splitlines()]
    assert sorted(written) == list(range(20_000))
    # and read back by a file source, as what it holds
    back = Pipeline("back").read(sources.jsonl(out, schema=None)).write(sinks.memory("o")).run()
    assert sorted(int(n) for n in back["o"]) == list(range(20_000))


PACKED_APP = """
import os, time
from pipelines import Pipeline, sinks, sources

def slow(n):
    time.sleep(0.0002)
    return n

pipeline = (
    Pipeline("packed")
    .read(sources.memory(range(30_000), batch_size=50))
    .map(slow)
    .write(sinks.jsonl(os.environ["OUT"]))
)
"""


def _recovering_app(tmp_path: Path, text: str) -> list[str]:
    """Write the app ``text`` and return the command that runs it with a recovery store."""
    app = tmp_path / "app.py"
    app.write_text(text)
    run = [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--quiet"]
    return [*run, "--recovery", str(tmp_path / "store"), "--snapshot-interval", "0.1"]


def test_a_compressed_output_killed_at_random_and_resumed_holds_each_record_once(
    tmp_path: Path,
) -> None:
    # A SIGKILL may cut a batch's stream in the middle: the resume cuts the file back to
    # the end of the last stream its snapshot covers, so the file stays whole.
    from tests.helpers import kill_at_random

    run = _recovering_app(tmp_path, PACKED_APP)
    out = tmp_path / "out.jsonl.gz"
    env = {**os.environ, "OUT": str(out)}
    assert kill_at_random(run, env, kills=3, seed=3, after=(1.0, 2.0)) == 3
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with gzip.open(out, "rt") as f:
        assert sorted(int(n) for n in f.read().split()) == list(range(30_000))


FOLLOW_APP = """
import json, os, time
from pipelines import Pipeline, sinks, sources

def slow(line):
    time.sleep(0.0005)
    return json.loads(line)

pipeline = (
    Pipeline("follow")
    .read(sources.jsonl(os.environ["IN"], schema=None, batch_size=20, follow=True))
    .map(slow)
    .write(sinks.jsonl(os.environ["OUT"]))
    .dead_letters(sinks.jsonl(os.environ["DEAD"]))
)
"""


def test_a_followed_file_reads_lines_as_they_are_written_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    # Without follow=True a file source ends at the end of what is written when it gets
    # there. Followed, lines appended later are read, a line is read once its writer ends
    # it (written in two parts here), and a run killed and resumed reads each line once.
    from tests.helpers import kill_at_random

    run = _recovering_app(tmp_path, FOLLOW_APP)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(3000)))
    dead = tmp_path / "dead.jsonl"
    env = {**os.environ, "IN": str(source), "OUT": str(out), "DEAD": str(dead)}
    assert kill_at_random(run, env, kills=2, seed=5, after=(0.8, 1.4)) == 2
    proc = subprocess.Popen(run, env=env, stderr=subprocess.PIPE, text=True)

    def written() -> list[int]:
        lines = out.read_text().splitlines() if out.exists() else []
        return [json.loads(line)["n"] for line in lines]

    deadline = time.monotonic() + 60
    while len(written()) < 3000 and time.monotonic() < deadline:
        time.sleep(0.05)
    with source.open("a") as f:
        f.write('{"n": 3000}\n{"n": 30')  # a whole line and the start of the next, at once
        f.flush()
        while len(written()) < 3001 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the reader has met the end of the file in the middle of a line
        f.write("01}\n")
    while len(written()) < 3002 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert sorted(written()) == list(range(3002))
    assert dead.read_text() == ""  # no line was read before its writer ended it
    # A followed file cut shorter than what was read stops the run, saying so (a resume
    # over it is refused: the bytes before its position are not what was read).
    out.unlink()
    plain = subprocess.Popen(run[:-4], env=env, stderr=subprocess.PIPE, text=True)
    while len(written()) < 3002 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    source.write_text("")
    _, err = plain.communicate(timeout=30)
    assert plain.returncode == 1 and "was cut while it was followed" in err, err[-2000:]


def test_a_followed_log_rotated_by_renaming_goes_on_to_the_new_file(tmp_path: Path) -> None:
    # A followed file renamed away (logrotate's default) was followed for ever: lines
    # written to the new file at its path were never read, and nothing said so.
    run = _recovering_app(tmp_path, FOLLOW_APP)
    source, out, dead = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(500)))
    env = {**os.environ, "IN": str(source), "OUT": str(out), "DEAD": str(dead)}
    deadline = time.monotonic() + 90

    def written(n: int) -> list[int]:
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = out.read_text().splitlines() if out.exists() else []
            if len(lines) >= n:
                break
            time.sleep(0.05)
        return sorted(json.loads(line)["n"] for line in lines)

    def lines(first: int, last: int) -> str:
        return "".join(json.dumps({"n": i}) + "\n" for i in range(first, last))

    procs: list[subprocess.Popen[Any]] = []

    def start(**streams: Any) -> subprocess.Popen[Any]:
        procs.append(subprocess.Popen(run, env=env, **streams))
        return procs[-1]

    try:
        proc = start(stderr=subprocess.DEVNULL)
        assert written(500) == list(range(500))
        with source.open("a") as f:  # renamed while its writer is in the middle of a line
            f.write(lines(500, 520) + '{"n": 5')
            f.flush()
            source.rename(tmp_path / "in.jsonl.1")
            source.write_text(lines(521, 700))  # the new file, made before the old one ends
            time.sleep(0.2)
            f.write("20}\n" + lines(700, 710))  # the writer's last lines to the old one
        assert written(710) == list(range(710))
        proc.send_signal(signal.SIGKILL)  # killed while following the new file
        proc.wait(timeout=30)
        proc = start(stderr=subprocess.PIPE, text=True)
        with source.open("a") as f:
            f.write(lines(710, 800) + '{"n": 8')
        assert written(800) == list(range(800))  # the resumed run follows the second file
        source.rename(tmp_path / "in.jsonl.2")  # no one ends that last line: a dead letter
        source.write_text(lines(900, 950))
        assert written(850) == [*range(800), *range(900, 950)]
        time.sleep(0.5)  # a snapshot holds the new file's position (not the one renamed twice)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err[-2000:]
        assert written(850) == [*range(800), *range(900, 950)]  # each line once
        [letter] = [json.loads(line) for line in dead.read_text().splitlines()]
        assert (letter["kind"], letter["payload"]) == ("user_error", '{"n": 8')
        # Rotated while the run is stopped: the file read is found under its new name in its
        # folder and read to its end, then the new one.
        with source.open("a") as f:
            f.write(lines(950, 960))
        source.rename(tmp_path / "in.jsonl.3")
        source.write_text(lines(1000, 1010))
        proc = start(stderr=subprocess.DEVNULL)
        assert written(870) == [*range(800), *range(900, 960), *range(1000, 1010)]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 130
        # Rotated and gone (compressed, deleted) while stopped: what was written to it since
        # is one `missing` dead letter, and the new file is read.
        with source.open("a") as f:
            f.write(lines(1010, 1020))
        source.rename(tmp_path / "in.jsonl.4")
        (tmp_path / "in.jsonl.4").unlink()
        source.write_text(lines(1100, 1110))
        proc = start(stderr=subprocess.DEVNULL)
        assert written(880) == [
            *range(800),
            *range(900, 960),
            *range(1000, 1010),
            *range(1100, 1110),
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 130
        _, gone = [json.loads(line) for line in dead.read_text().splitlines()]
        assert (
            gone["kind"] == "missing"
            and "was rotated while the run was stopped" in (gone["message"])
        )
        assert "read up to its line 10" in gone["message"]
    finally:
        for left in procs:  # a followed run never ends by itself
            if left.poll() is None:
                left.kill()
                left.wait()


def test_a_json_array_file_halted_and_resumed_writes_each_record_once(tmp_path: Path) -> None:
    # Its position is a count of its records and a digest of the last: a resume reads on
    # from there, and one over another array is refused.
    from pipelines import ResumeError

    path = tmp_path / "numbers.json"
    path.write_text(json.dumps([{"n": i} for i in range(20_000)], indent=2))
    out = tmp_path / "out.jsonl"
    flow = _halting_numbers(path, "jsonl", {4_000, 12_000}, out)
    store = tmp_path / "store"
    for _ in range(2):
        with pytest.raises(PipelineHalted):
            flow.run(recovery=store, snapshot_interval=0.01)
    assert flow.run(recovery=store).reconciles
    assert sorted(int(n) for n in out.read_text().split()) == list(range(20_000))
    # halted again, then the array changed under the store
    other = tmp_path / "store2"
    with pytest.raises(PipelineHalted):
        _halting_numbers(path, "jsonl", {9_000}, out).run(recovery=other, snapshot_interval=0.01)
    path.write_text(json.dumps([{"n": -i} for i in range(20_000)], indent=2))
    with pytest.raises(
        ResumeError, match=r"no longer holds what was read of it.*its JSON record \d+"
    ):
        flow.run(recovery=other)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_compressed_file_replaced_before_a_resume_is_refused(tmp_path: Path, fmt: str) -> None:
    # Its position is an offset in what it holds, checked against the bytes before it.
    from pipelines import ResumeError

    path = _compressed(tmp_path / f"in.{fmt}.gz", "gzip", _numbers(fmt, range(20_000)))
    flow = _halting_numbers(path, fmt, {15_000}, tmp_path / "out.jsonl")
    with pytest.raises(PipelineHalted):
        flow.run(recovery=tmp_path / "store", snapshot_interval=0.01)
    _compressed(path, "gzip", _numbers(fmt, range(100_000, 130_000)))
    with pytest.raises(ResumeError, match=r"no longer holds what was read of it"):
        flow.run(recovery=tmp_path / "store")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_compressed_file_cut_short_is_one_dead_letter_across_a_resume(
    tmp_path: Path, fmt: str
) -> None:
    # What a cut gzip file holds up to its cut is read, then one dead letter says the rest
    # cannot be; a run halted after it and resumed neither repeats nor drops that letter.
    whole = _compressed(tmp_path / "whole.gz", "gzip", _numbers(fmt, range(2_000))).read_bytes()
    (tmp_path / f"a.{fmt}.gz").write_bytes(whole[: len(whole) // 2])
    _compressed(tmp_path / f"b.{fmt}.gz", "gzip", _numbers(fmt, range(10_000, 30_000)))
    flow = _halting_numbers(tmp_path / f"*.{fmt}.gz", fmt, {25_000}, tmp_path / "out.jsonl")
    flow = flow.dead_letters(sinks.jsonl(tmp_path / "dead.jsonl"))
    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        flow.run(recovery=store, snapshot_interval=0.01)
    assert flow.run(recovery=store).reconciles
    letters = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [d["kind"] for d in letters] == ["parse"], letters
    assert "(gzip) cannot be read on: Compressed file ended" in letters[0]["message"]
    written = sorted(int(line) for line in (tmp_path / "out.jsonl").read_text().splitlines())
    cut = [n for n in written if n < 2_000]
    assert cut == list(range(len(cut))) and 0 < len(cut) < 2_000
    assert written[len(cut) :] == list(range(10_000, 30_000))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("change", ["appended", "replaced", "cut"])
def test_an_input_file_changed_before_a_resume_is_read_on_only_if_it_grew(
    tmp_path: Path, fmt: str, change: str
) -> None:
    # A jsonl file's position is a byte offset, a csv file's a count of rows:
    # a file replaced by a shorter one was read from beyond its end (its
    # records never read, the run reconciling), one replaced by a longer one
    # from inside a record or another row. What was read is now checked; a
    # file that only grew is read on.
    from pipelines import ResumeError

    path = tmp_path / f"in.{fmt}"
    path.write_text(_numbers(fmt, range(20_000)))

    def pipeline(halt_at: int | None = None) -> Pipeline:
        halts = set() if halt_at is None else {halt_at}
        return _halting_numbers(path, fmt, halts, tmp_path / "out.jsonl")

    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        pipeline(halt_at=15_000).run(recovery=store, snapshot_interval=0.01)
    if change == "appended":
        with path.open("a") as f:
            f.write(_numbers(fmt, range(20_000, 21_000), header=False))
        assert pipeline().run(recovery=store).reconciles
        written = [int(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert sorted(written) == list(range(21_000))
        return
    path.write_text(_numbers(fmt, range(100_000, 105_000 if change == "cut" else 130_000)))
    with pytest.raises(
        ResumeError,
        match=rf"step 'numbers': file '{path}' no longer holds what was read of it when the "
        r"recovery store was written \(up to (line \d+, byte|row) \d+\): it was replaced or cut",
    ):
        pipeline().run(recovery=store)


def test_a_rerun_on_a_finished_store_says_it_resumed_with_nothing_left(tmp_path: Path) -> None:
    # It read 0, wrote 0 and reconciled, without a word of the store it resumed from: a
    # user who meant to run the pipeline again saw nothing happen.
    out = tmp_path / "out.jsonl"
    flow = Pipeline("again").read(sources.memory(list(range(100)))).write(sinks.jsonl(out))
    first = flow.run(recovery=tmp_path / "store")
    assert first.resumed_from is None and first.written == 100 and "resumed" not in first.notes
    second = flow.run(recovery=tmp_path / "store")
    assert second.resumed_from == str(tmp_path / "store") and second.read == 0
    assert "nothing new was left to read" in second.notes and second.reconciles
    assert second.to_dict()["resumed_from"] == str(tmp_path / "store")
    assert len(out.read_text().splitlines()) == 100  # nothing lost, nothing twice
