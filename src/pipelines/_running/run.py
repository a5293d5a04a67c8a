"""Run a pipeline: in this process on worker threads, or on several processes."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

from operators import (
    COUNTER_FIELDS,
    DEAD_LETTERS_KEPT,
    DeadLetter,
    JsonlSink,
    PipelineHalted,
    ResumeError,
    RunContext,
)
from operators._keying import BUCKETS, bucket_count
from pipelines._running.compile import Compiled, compile_pipeline
from pipelines._running.metrics import Metrics
from pipelines._running.options import OptionError, seconds_option
from pipelines._running.panics import quiet_panics
from pipelines._running.store import (
    check_partitions,
    check_permissions,
    check_steps,
    check_store,
    lock_store,
)
from pipelines._showing.result import RunResult, StepCounts

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline

__all__ = [
    "GC_THRESHOLD",
    "Outcome",
    "check_replayable",
    "execute",
    "gc_tuned",
    "raise_error",
    "result_of",
    "root_cause",
    "truncate_files",
]

#: The garbage collector's first threshold while a pipeline runs.
GC_THRESHOLD = 50_000


@contextlib.contextmanager
def gc_tuned() -> Iterator[None]:
    """Keep the garbage collector out of the hot path while a pipeline runs.

    A stage keeps a chunk's records alive until its packet is written, so with
    CPython's default threshold (700 net allocations) nearly every record is
    promoted and full collections come often; each one walks every object
    already in memory (a large input list included). During the run, objects
    that existed before it are frozen (``gc.freeze``) and the first threshold
    is raised above a chunk's working set; both are restored afterwards.
    Set ``EVFLOW_GC_TUNING=0`` to leave the collector alone.
    """
    if os.environ.get("EVFLOW_GC_TUNING", "1") == "0":
        yield
        return
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], GC_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def root_cause(exc: BaseException) -> BaseException:
    """Find the exception that matters under the engine's wrappers.

    A `PipelineHalted` anywhere in the chain wins; otherwise the innermost
    cause (the user's or the source's own exception).
    """
    seen = set()
    current: BaseException | None = exc
    innermost = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PipelineHalted):
            return current
        innermost = current
        # An exception raised ``from None`` says it all: what it replaced is no cause.
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    return innermost


@dataclass(frozen=True)
class Recovery:
    """Where snapshots go and how often: the run resumes from the last one."""

    directory: Path
    snapshot_interval: float = 5.0

    @classmethod
    def prepare(cls, directory: str | os.PathLike[str], snapshot_interval: float) -> Recovery:
        """Create the store (private to this user) on first use; refuse an unsafe one.

        A store others can write to could hold snapshots that run code on
        resume, so evflow refuses it. The store is locked, made and its
        snapshots checked by `held`, for the whole run.
        """
        seconds_option("snapshot_interval", snapshot_interval)
        if str(directory) == "":
            msg = (
                f"recovery needs a directory; got {str(directory)!r}, which would make the "
                f"current directory the store. Hint: recovery='state/' (or recovery=None for "
                f"a run without recovery)."
            )
            raise OptionError(msg)
        path = Path(directory)
        if path.exists() and not path.is_dir():
            msg = (
                f"recovery store {str(path)!r} is not a directory. Hint: give recovery "
                f"a directory (evflow makes it, private to this user, on first use)."
            )
            raise OptionError(msg)
        if path.is_dir() and not any(path.glob("*.sqlite3")):
            # Not a store yet: evflow makes one where nothing else lives, so that a
            # store's files and the user's never mix (a typo of recovery=".").
            others = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
            if others:
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                msg = (
                    f"recovery store {str(path)!r} holds other files ({shown}) and no store: "
                    f"evflow makes its store in a new or empty directory. Hint: recovery="
                    f"{str(path / 'state')!r}."
                )
                raise OptionError(msg)
        if not path.exists():
            try:
                path.mkdir(parents=True, mode=0o700)
            except OSError as exc:
                msg = (
                    f"recovery store {str(path)!r} cannot be made: {exc.strerror}. Hint: "
                    f"give recovery a directory this user can create."
                )
                raise OptionError(msg) from None
        check_permissions(path)
        return cls(path, snapshot_interval)

    @contextlib.contextmanager
    def held(self, member: int | None = None) -> Iterator[bool]:
        """Hold the store for a run: locked, checked, and made on first use.

        Yields whether the store is fresh (the run starts from nothing).
        ``member`` is the process id of a cluster member started by hand (the
        members of one cluster share the store). A second run on a held store
        is refused at once (`StoreInUseError`).
        """
        path = self.directory
        with lock_store(path, member):
            check_permissions(path)
            fresh = not any(path.glob("*.sqlite3"))
            if fresh:
                # Made aside, then moved in whole: a run killed while the store
                # is being made leaves no half-made partition behind.
                with tempfile.TemporaryDirectory(dir=path, prefix=".init-") as made:
                    init_db_dir(Path(made), 1)  # type: ignore[no-untyped-call]
                    for part in Path(made).glob("*.sqlite3"):
                        os.replace(part, path / part.name)
            else:
                check_store(path)
            yield fresh


def truncate_files(pipeline: Pipeline) -> None:
    """Empty the jsonl files a run writes, before its processes append to them.

    Dead letters written to a file included. One process empties them before
    the cluster forms (the parent of ``-p``, member 0 of a cluster started by
    hand), and every process appends its own records; with recovery, only a
    run on a fresh store does, and a resumed run appends to them.
    """
    sinks = [node.params.get("sink") for node in pipeline.graph if node.kind == "write"]
    for sink in [*sinks, pipeline.dead_letter_sink]:
        if isinstance(sink, JsonlSink):
            parent = os.path.dirname(sink.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            open(sink.path, "w").close()


def check_replayable(pipeline: Pipeline) -> None:
    """Refuse recovery for a pipeline that reads a source it cannot read again.

    A resumed run reads each source from its last snapshot's position; a
    source that cannot go back there (standard input) would lose or repeat
    records while the run says it resumed.
    """
    for node in pipeline.graph:
        source = node.params.get("source") if node.kind == "read" else None
        if source is not None and not source.replayable:
            msg = (
                f"pipeline {pipeline.name!r}: step {node.name!r} reads {source.label}, which "
                f"cannot be read again from a snapshot's position, so a run with recovery "
                f"could not resume it exactly. Hint: save the input to a file and read it "
                f"with sources.jsonl(...), or run without recovery."
            )
            raise ValueError(msg)


@dataclass
class Outcome:
    """What one process of a run produced (sent to the parent when several run)."""

    outputs: dict[str, list[Any]]
    dead_letters: list[DeadLetter]
    totals: dict[str, dict[str, int]]
    kinds: dict[str, str]
    error: BaseException | None = None
    #: Exact dead-letter counts by ``(step, kind)`` (``dead_letters`` is a sample).
    dead_counts: dict[tuple[str, str], int] = field(default_factory=dict)


def execute(
    pipeline: Pipeline,
    workers: int,
    addresses: list[str] | None = None,
    proc_id: int = 0,
    *,
    append_files: bool = False,
    monitor: Callable[[Compiled], None] | None = None,
    recovery: Recovery | None = None,
    metrics: Metrics | None = None,
) -> Outcome:
    """Compile and run ``pipeline`` in this process (one process of a cluster).

    ``monitor`` is called with the compiled pipeline before it runs; its
    counters fill up while it runs (the live view reads them).
    """
    # With recovery, files are emptied once for a fresh store, then appended to.
    ctx = RunContext(pipeline.name, append_files=append_files or recovery is not None)
    processes = max(1, len(addresses or ()))
    durable = None
    if recovery is not None:
        from pipelines._running.store import DurableStates, store_created

        durable = DurableStates(recovery.directory)
        ctx.store_created = store_created(recovery.directory)
    # Without a store, a bucket per worker; with one, the buckets it can resume over.
    buckets = BUCKETS if recovery is not None else bucket_count(processes * workers)
    compiled = compile_pipeline(
        pipeline,
        ctx,
        processes,
        exact_files=recovery is not None,
        durable=durable,
        buckets=buckets,
    )
    if recovery is not None:
        check_partitions(recovery.directory, compiled.partitions)
        check_steps(recovery.directory, step_ids(compiled.flow.substeps), stateful_steps(pipeline))
    if monitor is not None:
        monitor(compiled)
    server = None
    if metrics is not None:
        from pipelines._running.metrics import serve_metrics

        server = serve_metrics(metrics, pipeline.name, compiled, proc_id)
    error: BaseException | None = None
    ran_through = False
    options: dict[str, Any] = {}
    if recovery is not None:
        options = {
            "recovery_config": RecoveryConfig(recovery.directory),  # type: ignore[no-untyped-call]
            "epoch_interval": timedelta(seconds=recovery.snapshot_interval),
        }
    try:
        with gc_tuned(), quiet_panics():
            if not addresses and workers == 1:
                run_main(compiled.flow, **options)  # type: ignore[no-untyped-call]
            else:
                cluster_main(  # type: ignore[no-untyped-call]
                    compiled.flow,
                    addresses or [],
                    proc_id,
                    worker_count_per_proc=workers,
                    **options,
                )
        ran_through = True
    except BaseException as exc:
        # The engine's panics (pyo3's PanicException) are BaseExceptions too;
        # Ctrl-C and exits go on unless the run had halted first.
        if compiled.counters.halted is None and not _engine_error(exc):
            raise
        error = exc if isinstance(exc, KeyboardInterrupt) else root_cause(exc)
    finally:
        ended_well = ran_through and compiled.counters.halted is None
        for engine_source in compiled.sources:
            try:
                engine_source.finish(ended_well)
            except Exception as exc:  # noqa: BLE001 - the run's own outcome comes first
                # Left unacknowledged upstream: a later run acknowledges them.
                print(
                    f"evflow: could not acknowledge what {engine_source.source.label} read: "
                    f"{type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )
        if durable is not None:
            durable.close()
        ctx.close()
        if server is not None:
            server.close()
    if compiled.counters.halted is not None:
        error = compiled.counters.halted
    if isinstance(error, ResumeError) and recovery is not None:
        files = ", ".join(sorted(p.name for p in recovery.directory.glob("*.sqlite3")))
        error = ResumeError(
            f"recovery store {str(recovery.directory)!r} ({files}): {error}. Hint: remove "
            f"the store and the outputs written with it to start over."
        )
    return Outcome(
        ctx.outputs,
        ctx.dead_letters,
        compiled.counters.totals(),
        compiled.kinds,
        error,
        ctx.dead_counts,
    )


def step_ids(operators: list[Any]) -> set[str]:
    """Return the engine step ids of ``operators`` and of all their inner steps."""
    found: set[str] = set()
    for operator in operators:
        found.add(operator.step_id)
        found |= step_ids(operator.substeps)
    return found


def stateful_steps(pipeline: Pipeline) -> list[str]:
    """Return the names of the steps of ``pipeline`` that keep state in the snapshots."""
    return [
        node.name
        for node in pipeline.graph
        if node.kind in ("read", "aggregate", "join", "process")
        or (node.kind == "dispatch" and node.params.get("key") is not None)
    ]


def _engine_error(exc: BaseException) -> bool:
    """Whether ``exc`` ends the run with an outcome (Ctrl-C included), not at once."""
    return isinstance(exc, Exception | KeyboardInterrupt) or type(exc).__name__ == "PanicException"


def raise_error(error: BaseException) -> NoReturn:
    """Raise a run's error: a halt with the user's exception as its cause."""
    if isinstance(error, PipelineHalted):
        raise error from error.__cause__
    raise error


def result_of(
    pipeline: Pipeline, outcomes: list[Outcome], workers: int, processes: int, seconds: float
) -> RunResult:
    """Sum the outcomes of a run's processes into one `RunResult`."""
    kinds = outcomes[0].kinds
    totals = {step: dict.fromkeys(COUNTER_FIELDS, 0) for step in kinds}
    outputs: dict[str, list[Any]] = {}
    dead: list[DeadLetter] = []
    dead_counts: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        for step, row in outcome.totals.items():
            for field_name, value in row.items():
                totals[step][field_name] += value
        for name, items in outcome.outputs.items():
            outputs.setdefault(name, []).extend(items)
        dead.extend(outcome.dead_letters[: max(0, DEAD_LETTERS_KEPT - len(dead))])
        for where, n in outcome.dead_counts.items():
            dead_counts[where] = dead_counts.get(where, 0) + n
    counts = counts_of(totals, kinds)
    return RunResult(
        pipeline.name, outputs, dead, counts, workers, seconds, processes, dead_counts=dead_counts
    )


def counts_of(totals: dict[str, dict[str, int]], kinds: dict[str, str]) -> dict[str, StepCounts]:
    """Turn counter totals into `StepCounts` by step."""
    return {
        step: StepCounts(
            step,
            kinds[step],
            received=row["in"],
            out=row["out"],
            filtered=row["filtered"],
            unrouted=row["unrouted"],
            dead=row["dead"],
            skipped=row["skipped"],
            created=row["created"],
            aggregated=row["aggregated"],
            open=row["open"],
            handled=row["handled"],
            late=row["late"],
            expired=row["expired"],
            unfired=row["unfired"],
            early=row["early"],
            copies=row["copies"],
        )
        for step, row in totals.items()
    }
