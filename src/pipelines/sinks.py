"""Sinks: where a pipeline's records go."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from operators import CallbackSink, JsonlSink, MemorySink, Sink, StdoutSink
from operators._bytewax_io import BytewaxSink

__all__ = ["Sink", "bytewax", "callback", "jsonl", "memory", "stdout"]


def memory(name: str) -> MemorySink:
    """Keep records in memory, in ``RunResult.outputs[name]``.

    >>> from pipelines import Pipeline, sources
    >>> p = Pipeline("p").read(sources.memory(["a", "b"])).write(memory("letters"))
    >>> sorted(p.run().outputs["letters"])
    ['a', 'b']
    """
    return MemorySink(name)


def stdout(prefix: str = "") -> StdoutSink:
    """Print records to the terminal (rich)."""
    return StdoutSink(prefix)


def jsonl(path: str | os.PathLike[str]) -> JsonlSink:
    """Write records as JSON Lines to ``path`` (truncated at the start of a run)."""
    return JsonlSink(path)


def callback(fn: Callable[[Any], Any]) -> CallbackSink:
    """Call ``fn(record)`` for each record; a failing call becomes a dead letter."""
    return CallbackSink(fn)


def bytewax(sink: Any, *, name: str | None = None) -> BytewaxSink:
    """Write through a bytewax ``DynamicSink`` (Kafka's, or your own).

    Each worker builds its own part; a batch whose write raises becomes dead
    letters, one per record.
    """
    return BytewaxSink(sink, name=name)
