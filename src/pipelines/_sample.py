"""Samples: a source's first records, and a pipeline run on a small sample.

It takes a pipeline and plain values: what it builds, the pipeline rebuilds
itself (`Pipeline.rebuilt`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from operators import MemorySink, MemorySource, Schema, Source
from operators._sources import Reader, check_records
from operators._stage import Chunk
from pipelines.sinks import memory

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline
    from pipelines._building.graph import Node
    from pipelines._showing.result import RunResult

__all__ = ["Records", "check_pipeline", "head", "preview", "replace_sources"]


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
    check_pipeline(pipeline, "testing.replace_sources")
    by_step = _by_step(pipeline, records)

    def memory_source(node: Node) -> dict[str, Any] | None:
        if node.kind != "read" or node.name not in by_step:
            return None
        given = schema if schema is not None else node.params["source"].schema
        return {"source": MemorySource(by_step[node.name], schema=given, partitions=partitions)}

    return pipeline.rebuilt(memory_source, dead=pipeline.dead_letter_sink)


def check_pipeline(value: Any, call: str) -> None:
    """Refuse anything but a pipeline where ``call`` needs one, saying what to pass.

    >>> from pipelines import Pipeline, sources
    >>> check_pipeline(Pipeline("p").read(sources.memory([1])), "testing.run")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: testing.run takes a pipeline (what .write(...) returns); got a stream at step ...
    """
    # Told apart by what they have: the builder imports this module.
    if hasattr(value, "rebuilt") and hasattr(value, "graph"):
        return  # a Pipeline
    step = getattr(value, "step", None)
    if isinstance(step, str) and hasattr(value, "key_by"):  # a Stream
        msg = (
            f"{call} takes a pipeline (what .write(...) returns); got a stream at step "
            f"{step!r} of pipeline {value.pipeline.name!r}. Hint: write it first, "
            f"{call}(stream.write(sinks.memory('out')), ...); testing.outputs(stream) "
            f"gives its records alone."
        )
        raise TypeError(msg)
    msg = (
        f"{call} takes a pipeline; got {type(value).__name__} {value!r:.80}. Hint: build "
        f"one with Pipeline(name).read(source)...write(sink)."
    )
    raise TypeError(msg)


def _by_step(pipeline: Pipeline, records: Records) -> dict[str, list[Any]]:
    """Return the records of each read step: a dict's by name, or one list for all.

    A name that is no read step of ``pipeline`` is refused.
    """
    reads = [node.name for node in pipeline.graph if node.kind == "read"]
    if not isinstance(records, Mapping):
        check_records(records, "records")
        items = list(records)
        return {step: items for step in reads}
    for step, given in records.items():
        check_records(given, f"records for {step!r}")
    by_step = {str(step): list(items) for step, items in records.items()}
    for step in by_step:
        if step not in reads:
            names = ", ".join(repr(r) for r in reads)
            msg = (
                f"records for {step!r}: pipeline {pipeline.name!r} has no read step of that "
                f"name; its read steps are {names}."
            )
            raise ValueError(msg)
    return by_step


def head(source: Source[Any], limit: int, *, timeout: float = 10.0) -> list[Any]:
    """Read the first ``limit`` raw records of ``source`` (partitions in order).

    A source that has fewer gives what it has; one that is slow (a rate, an
    endless stream) gives what came within ``timeout`` seconds.

    >>> from pipelines import sources
    >>> head(sources.generate(lambda rng, i: i, count=None), 3)
    [0, 1, 2]
    """
    if not isinstance(source, Source):
        what = type(source).__name__
        hint = (
            "testing.outputs(stream) runs a stream and gives its records; "
            "testing.preview(pipeline) runs a pipeline on each source's first records"
            if hasattr(source, "key_by") or hasattr(source, "graph")
            else "testing.head(sources.jsonl('events.jsonl'), 5)"
        )
        msg = f"testing.head takes a source; got {what} {source!r:.80}. Hint: {hint}."
        raise TypeError(msg)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        msg = f"testing.head: limit must be a whole number of records; got {limit!r}."
        raise ValueError(msg)
    return [x for chunk in _first_chunks(source, limit, timeout) for x in chunk.items]


def _first_chunks(source: Source[Any], limit: int, timeout: float = 10.0) -> list[Chunk]:
    """Read the chunks of ``source``'s first ``limit`` raw records (see `head`).

    As read: each keeps its partition, its records' names in it and when
    their broker stored them, which a preview's run reads as the source's.
    """
    source = source.held_now()  # what the files or streams hold now, not what may come
    chunks: list[Chunk] = []
    taken = 0
    deadline = time.monotonic() + timeout
    for part in source.partitions():
        reader = source.open(part, "preview", None)
        try:
            while taken < limit and time.monotonic() < deadline:
                try:
                    chunk = reader.next_chunk()
                except StopIteration:
                    break
                if chunk is None:
                    wake = reader.next_awake()
                    pause = 0.01 if wake is None else (wake - datetime.now(timezone.utc))
                    time.sleep(min(max(_seconds(pause), 0.001), 0.2))
                    continue
                if chunk.items:
                    chunk = _cut(chunk, limit - taken)
                    chunks.append(chunk)
                    taken += len(chunk.items)
                if chunk.eof:
                    break
        finally:
            reader.close()
        if taken >= limit:
            break
    return chunks


def _cut(chunk: Chunk, n: int) -> Chunk:
    """Return ``chunk`` with its first ``n`` records only (the chunk itself if it has no more)."""
    if len(chunk.items) <= n:
        return replace(chunk, eof=False)
    keys, times = chunk.keys, chunk.times
    return replace(
        chunk,
        items=chunk.items[:n],
        keys=None if keys is None else keys[:n],
        times=None if times is None else times[:n],
        eof=False,
    )


class _Sample(Source[Any]):
    """The chunks a source gave first, read again as they were (`preview`)."""

    def __init__(self, chunks: list[Chunk], schema: Schema | None) -> None:
        self.chunks = chunks
        self.schema = schema

    @property
    def label(self) -> str:
        return "sample"

    def partitions(self) -> list[str]:
        return list(dict.fromkeys(c.partition for c in self.chunks)) or ["sample"]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        mine = [replace(c, source=step) for c in self.chunks if c.partition == partition]
        return _SampleReader(mine)


class _SampleReader(Reader):
    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.read = 0

    def next_chunk(self) -> Chunk | None:
        if self.read == len(self.chunks):
            raise StopIteration
        self.read += 1
        return self.chunks[self.read - 1]

    def position(self) -> Any:
        return self.read


def _seconds(pause: Any) -> float:
    return pause.total_seconds() if hasattr(pause, "total_seconds") else float(pause)


def preview(pipeline: Pipeline, records: Records | None = None, *, limit: int = 20) -> RunResult:
    """Run ``pipeline`` on a small sample; every sink becomes a memory output.

    The sample is ``records`` (read by every source; a dict of lists by read
    step name gives each step named its own) or else the first ``limit``
    records of each source. Memory sinks keep their names; every
    other sink becomes a memory output named after its write step. Dead
    letters stay in the result. Nothing is written to files or services.
    """
    check_pipeline(pipeline, "testing.preview")
    sample = {} if records is None else _by_step(pipeline, records)

    def in_memory(node: Node) -> dict[str, Any] | None:
        if node.kind == "read":
            old = node.params["source"]
            if node.name in sample:
                return {"source": MemorySource(sample[node.name], schema=old.schema)}
            return {"source": _Sample(_first_chunks(old, limit), old.schema)}
        if node.kind == "write" and not isinstance(node.params["sink"], MemorySink):
            return {"sink": memory(node.name)}
        return None

    return pipeline.rebuilt(in_memory, dead=None).run(progress=False)
