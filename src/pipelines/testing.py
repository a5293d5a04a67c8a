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

import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from operators import MemorySink, MemorySource, Schema, Sink, Source
from pipelines._builder import Pipeline, Stream
from pipelines._graph import Graph, Node, Port
from pipelines._result import RunResult
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


def replace_sources(
    pipeline: Pipeline, records: Iterable[Any], *, schema: Schema | None = None
) -> Pipeline:
    """Return ``pipeline`` with every source replaced by ``records`` in memory.

    The schema of the replaced source is kept unless ``schema`` is given.
    """
    items = list(records)

    def memory_source(node: Node) -> dict[str, Any] | None:
        if node.kind != "read":
            return None
        old = node.params["source"]
        return {"source": MemorySource(items, schema=schema if schema is not None else old.schema)}

    return _rebuild(pipeline, memory_source, dead=pipeline.dead_letter_sink)


def head(source: Source[Any], limit: int, *, timeout: float = 10.0) -> list[Any]:
    """Read the first ``limit`` raw records of ``source`` (partitions in order).

    A source that has fewer gives what it has; one that is slow (a rate, an
    endless stream) gives what came within ``timeout`` seconds.

    >>> from pipelines import sources
    >>> head(sources.generate(lambda rng, i: i, count=None), 3)
    [0, 1, 2]
    """
    items: list[Any] = []
    deadline = time.monotonic() + timeout
    for part in source.partitions():
        reader = source.open(part, "preview", None)
        try:
            while len(items) < limit and time.monotonic() < deadline:
                try:
                    chunk = reader.next_chunk()
                except StopIteration:
                    break
                if chunk is None:
                    wake = reader.next_awake()
                    pause = 0.01 if wake is None else (wake - datetime.now(timezone.utc))
                    time.sleep(min(max(_seconds(pause), 0.001), 0.2))
                    continue
                items.extend(chunk.items[: limit - len(items)])
        finally:
            reader.close()
        if len(items) >= limit:
            break
    return items


def _seconds(pause: Any) -> float:
    return pause.total_seconds() if hasattr(pause, "total_seconds") else float(pause)


def preview(
    pipeline: Pipeline, records: Iterable[Any] | None = None, *, limit: int = 20
) -> RunResult:
    """Run ``pipeline`` on a small sample; every sink becomes a memory output.

    The sample is ``records`` (read by every source) or else the first
    ``limit`` records of each source. Memory sinks keep their names; every
    other sink becomes a memory output named after its write step. Dead
    letters stay in the result. Nothing is written to files or services.
    """
    sample = None if records is None else list(records)

    def in_memory(node: Node) -> dict[str, Any] | None:
        if node.kind == "read":
            old = node.params["source"]
            items = sample if sample is not None else head(old, limit)
            return {"source": MemorySource(items, schema=old.schema)}
        if node.kind == "write" and not isinstance(node.params["sink"], MemorySink):
            return {"sink": memory(node.name)}
        return None

    return _rebuild(pipeline, in_memory, dead=None).run(progress=False)


def _rebuild(
    pipeline: Pipeline, change: Callable[[Node], dict[str, Any] | None], *, dead: Sink | None
) -> Pipeline:
    """Copy the graph, with the parameters ``change`` returns for some steps replaced."""
    replaced: dict[str, Node] = {}
    for node in pipeline.graph:
        replaced[node.name] = _rewire(node, replaced, change(node))
    return Pipeline(pipeline.name, _graph=Graph(replaced), _dead=dead)


def _rewire(node: Node, replaced: dict[str, Node], params: dict[str, Any] | None = None) -> Node:
    inputs = tuple(Port(replaced[p.node.name], p.route) for p in node.inputs)
    merged = node.params if params is None else {**node.params, **params}
    return Node(node.name, node.kind, inputs, node.fn, node.policy, merged)


def run(
    pipeline: Pipeline,
    records: Iterable[Any] | None = None,
    *,
    workers: int = 1,
    schema: Schema | None = None,
) -> RunResult:
    """Run ``pipeline`` in this process and return its `RunResult`.

    With ``records``, every source of the pipeline reads those records instead
    (parsed with the source's schema, or ``schema``).
    """
    if records is not None:
        pipeline = replace_sources(pipeline, records, schema=schema)
    return pipeline.run(workers=workers)


def outputs(stream: Stream[Any], *, workers: int = 1) -> list[Any]:
    """Write ``stream`` to a memory sink, run, and return what reached it."""
    result = stream.write(memory("_test_output"), name="_test_output").run(workers=workers)
    return result.outputs.get("_test_output", [])


from pipelines._explore import Exploration, Schedule, ScheduleDependence, explore  # noqa: E402
