"""Start a run: check what was asked, hold the store, and run here or on a cluster.

`run` is what ``Pipeline.run`` and the command line call: in this process
(`pipelines._running.run.execute`), on a cluster of processes, or supervised with
restarts (`pipelines._running.cluster`).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipelines._running.cluster import run_processes, run_supervised
from pipelines._running.compile import Compiled, check
from pipelines._running.metrics import Metrics
from pipelines._running.options import OptionError, seconds_option
from pipelines._running.run import (
    Recovery,
    check_replayable,
    execute,
    raise_error,
    result_of,
    truncate_files,
)
from pipelines._showing.result import RunResult

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline

__all__ = ["MOST", "run", "warn_split_state"]

#: The most workers a process, and processes a run, may have.
MOST = 1024


def warn_split_state(pipeline: Pipeline, copies: int) -> None:
    """Warn when a dispatch hands events to handler objects that keep state in attributes."""
    from pipelines._building.handlers import split_state

    for node in pipeline.graph:
        if node.kind != "dispatch":
            continue
        found = split_state({**node.params["table"], "default": node.params["default"]})
        if found:
            warnings.warn(
                f"step {node.name!r}: {'; '.join(found)}: each of the run's {copies} workers "
                f"holds its own copy of a handler object, so state kept in its attributes is "
                f"split among them. Hint: keep state with stateful(...) handlers on a keyed "
                f"stream.",
                RuntimeWarning,
                stacklevel=3,
            )


def run(
    pipeline: Pipeline,
    *,
    workers: int = 1,
    processes: int = 1,
    monitor: Callable[[Compiled], None] | None = None,
    formation_timeout: float = 30.0,
    recovery: str | os.PathLike[str] | None = None,
    snapshot_interval: float = 5.0,
    restart: int = 0,
    metrics: Metrics | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Run ``pipeline`` on ``workers`` threads in each of ``processes`` processes.

    ``monitor`` (one process only) sees the compiled pipeline before it runs.
    With ``restart`` (which needs ``recovery``), the run goes on child
    processes, and when one of them dies the whole cluster starts again from
    the last snapshot, up to ``restart`` times. With ``metrics``, each process
    serves Prometheus metrics while it runs (process i on ``metrics.port + i``).
    ``progress`` shows the live counts in a notebook (by default when run in a
    Jupyter kernel, in one process).
    """
    for what, value in (("workers", workers), ("processes", processes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            msg = f"{what} must be a positive int; got {value!r}. Hint: run({what}=2)."
            raise OptionError(msg)
        if value > MOST:
            # A typo (workers=1000000) would start that many threads (or
            # processes) and end in the kernel's out-of-memory killer.
            msg = (
                f"{what} must be at most {MOST} (each is a thread or a process of its own); "
                f"got {value:,}. Hint: about as many as the machine has cores "
                f"({os.cpu_count()} here)."
            )
            raise OptionError(msg)
    seconds_option("formation_timeout", formation_timeout)
    seconds_option("snapshot_interval", snapshot_interval)  # (with recovery or not)
    check(pipeline)  # before any file it writes is emptied
    if not isinstance(restart, int) or isinstance(restart, bool) or restart < 0:
        msg = f"restart must be an int >= 0; got {restart!r}."
        raise OptionError(msg)
    if workers * processes > 1:
        warn_split_state(pipeline, workers * processes)
    if restart and recovery is None:
        msg = (
            f"restart={restart} needs recovery: a restarted cluster resumes from the last "
            f"snapshot. Hint: run(recovery='state/', restart={restart})."
        )
        raise OptionError(msg)
    if recovery is not None:
        check_replayable(pipeline)
    store = None if recovery is None else Recovery.prepare(recovery, snapshot_interval)
    with contextlib.nullcontext(False) if store is None else store.held() as fresh:
        if fresh:
            truncate_files(pipeline)
        result = _run(
            pipeline,
            workers,
            processes,
            monitor,
            formation_timeout,
            store,
            restart,
            metrics,
            progress,
        )
    if store is not None and not fresh:
        result.resumed_from = str(recovery)
    return result


def _run(
    pipeline: Pipeline,
    workers: int,
    processes: int,
    monitor: Callable[[Compiled], None] | None,
    formation_timeout: float,
    store: Recovery | None,
    restart: int,
    metrics: Metrics | None,
    progress: bool | None,
) -> RunResult:
    if restart:
        assert store is not None
        return run_supervised(
            pipeline, workers, processes, formation_timeout, store, restart, metrics
        )
    if processes > 1:
        return run_processes(pipeline, workers, processes, formation_timeout, store, metrics)
    started = time.perf_counter()
    shown: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if monitor is None and progress is not False:
        from pipelines._showing.live import NotebookProgress, in_notebook

        if progress or in_notebook():
            monitor = view = NotebookProgress()
            shown = view
    with shown:
        outcome = execute(pipeline, workers, monitor=monitor, recovery=store, metrics=metrics)
    if outcome.error is not None:
        raise_error(outcome.error)
    return result_of(pipeline, [outcome], workers, 1, time.perf_counter() - started)
