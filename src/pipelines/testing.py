"""The test seam: run a pipeline in-process on given records.

>>> from pipelines import Pipeline, sources, sinks
>>> p = (Pipeline("demo").read(sources.memory([1, 2, 3]))
...      .map(lambda x: 10 // (x - 2)).write(sinks.memory("out")))
>>> result = run(p)
>>> sorted(result.outputs["out"]), result.dead, result.reconciles
([-10, 10], 1, True)
>>> result.dead_letters[0].error_type
'ZeroDivisionError'
"""

from __future__ import annotations

from typing import Any

from operators import Schema
from pipelines._building.builder import Pipeline, Stream
from pipelines._sample import Records, check_pipeline, head, preview, replace_sources
from pipelines._showing.result import RunResult
from pipelines.sinks import memory

__all__ = [
    "Exploration",
    "Schedule",
    "ScheduleDependence",
    "explore",
    "head",
    "outputs",
    "preview",
    "replace_sources",
    "run",
]


def run(
    pipeline: Pipeline,
    records: Records | None = None,
    *,
    workers: int = 1,
    schema: Schema | None = None,
) -> RunResult:
    """Run ``pipeline`` in this process and return its `RunResult`.

    With ``records``, every source of the pipeline reads those records instead
    (parsed with the source's schema, or ``schema``); with a dict of lists by
    read step name, each source named reads its own (a join's two sides).
    """
    check_pipeline(pipeline, "testing.run")
    if records is not None:
        pipeline = replace_sources(pipeline, records, schema=schema)
    return pipeline.run(workers=workers)


def outputs(stream: Stream[Any], *, workers: int = 1) -> list[Any]:
    """Write ``stream`` to a memory sink, run, and return what reached it."""
    if not isinstance(stream, Stream):
        msg = (
            f"testing.outputs takes a stream (before .write); got {type(stream).__name__} "
            f"{stream!r:.80}. Hint: for a pipeline, testing.run(pipeline).outputs."
        )
        raise TypeError(msg)
    result = stream.write(memory("_test_output"), name="_test_output").run(workers=workers)
    return result.outputs.get("_test_output", [])


from pipelines._explore import Exploration, Schedule, ScheduleDependence, explore  # noqa: E402
