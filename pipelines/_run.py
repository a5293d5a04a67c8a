"""Run a pipeline in this process, on one or more worker threads."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator

from bytewax.testing import cluster_main, run_main

from operators import PipelineHalted, RunContext
from pipelines._builder import Pipeline
from pipelines._compile import compile_pipeline
from pipelines._result import RunResult, StepCounts

__all__ = ["GC_THRESHOLD", "gc_tuned", "root_cause", "run"]

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
        current = current.__cause__ or current.__context__
    return innermost


def run(pipeline: Pipeline, *, workers: int = 1) -> RunResult:
    """Compile and run ``pipeline`` on ``workers`` threads; return its result."""
    if not isinstance(workers, int) or workers < 1:
        msg = f"workers must be a positive int; got {workers!r}. Hint: run(workers=2)."
        raise ValueError(msg)
    ctx = RunContext(pipeline.name)
    compiled = compile_pipeline(pipeline, ctx, workers)
    started = time.perf_counter()
    try:
        with gc_tuned():
            if workers == 1:
                run_main(compiled.flow)  # type: ignore[no-untyped-call]
            else:
                cluster_main(  # type: ignore[no-untyped-call]
                    compiled.flow, [], 0, worker_count_per_proc=workers
                )
    except Exception as exc:
        cause = root_cause(exc)
        if cause is exc:
            raise
        if isinstance(cause, PipelineHalted):
            raise cause from cause.__cause__
        raise cause from None
    finally:
        ctx.close()
    halted = compiled.counters.halted
    if isinstance(halted, PipelineHalted):
        raise halted from halted.__cause__
    if halted is not None:
        raise halted
    seconds = time.perf_counter() - started
    totals = compiled.counters.totals()
    counts = {
        step: StepCounts(
            step,
            compiled.kinds[step],
            received=row["in"],
            out=row["out"],
            filtered=row["filtered"],
            unrouted=row["unrouted"],
            dead=row["dead"],
            skipped=row["skipped"],
            created=row["created"],
            aggregated=row["aggregated"],
            open=row["open"],
        )
        for step, row in totals.items()
    }
    return RunResult(pipeline.name, ctx.outputs, ctx.dead_letters, counts, workers, seconds)
