"""Samples: a source's first records, and a pipeline run on a small sample.

It takes a pipeline and plain values: what it builds, the pipeline rebuilds
itself (`Pipeline.rebuilt`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from operators import MemorySink, MemorySource, Schema, Source
from pipelines.sinks import memory

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline
    from pipelines._building.graph import Node
    from pipelines._showing.result import RunResult

__all__ = ["Records", "head", "preview", "replace_sources"]


#: Records for a pipeline's sources: one list for every source, or a list per read step.
Records = Iterable[Any] | Mapping[str, Iterable[Any]]


def replace_sources(
    pipeline: Pipeline,
    records: Records,
    *,
    schema: Schema | None = None,
    partitions: int = 1,
) -> Pipeline:
    """Return ``pipeline`` with its sources replaced by records in memory.

    ``records`` is a list every source reads, or a dict of lists by read
    step name: each step named reads its own list, the others their own
    sources (a step name that is no read step of the pipeline is refused).
    The records are split into ``partitions`` contiguous partitions; the
    schema of the replaced source is kept unless ``schema`` is given.

    >>> from pipelines import Pipeline, sinks, sources
    >>> p = Pipeline("two")
    >>> a = p.read(sources.memory([1]), name="a")
    >>> b = p.read(sources.memory([2]), name="b")
    >>> both = a.merge(b).write(sinks.memory("o"))
    >>> sorted(replace_sources(both, {"b": [7, 8]}).run()["o"])
    [1, 7, 8]
    >>> replace_sources(both, {"c": [9]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: records for 'c': pipeline 'two' has no read step of that name; its read ...
    """
    reads = [node.name for node in pipeline.graph if node.kind == "read"]
    if isinstance(records, Mapping):
        by_step = {str(step): list(items) for step, items in records.items()}
        for step in by_step:
            if step not in reads:
                names = ", ".join(repr(r) for r in reads)
                msg = (
                    f"records for {step!r}: pipeline {pipeline.name!r} has no read step of that "
                    f"name; its read steps are {names}."
                )
                raise ValueError(msg)
    else:
        items = list(records)
        by_step = {step: items for step in reads}

    def memory_source(node: Node) -> dict[str, Any] | None:
        if node.kind != "read" or node.name not in by_step:
            return None
        given = schema if schema is not None else node.params["source"].schema
        return {"source": MemorySource(by_step[node.name], schema=given, partitions=partitions)}

    return pipeline.rebuilt(memory_source, dead=pipeline.dead_letter_sink)


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

    return pipeline.rebuilt(in_memory, dead=None).run(progress=False)
