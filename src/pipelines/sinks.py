"""Sinks: where a pipeline's records go."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from operators import CallbackSink, JsonlSink, MemorySink, Sink, StdoutSink
from operators._bytewax_io import BytewaxSink
from operators._nats import JetStreamSink
from operators._redis import RedisStreamSink

__all__ = ["Sink", "bytewax", "callback", "jsonl", "memory", "nats", "redis", "stdout"]


def memory(name: str) -> MemorySink:
    """Keep records in memory, in ``RunResult.outputs[name]``.

    >>> from pipelines import Pipeline, sources
    >>> p = Pipeline("p").read(sources.memory(["a", "b"])).write(memory("letters"))
    >>> sorted(p.run().outputs["letters"])
    ['a', 'b']
    """
    return MemorySink(name)


def stdout(prefix: str = "") -> StdoutSink:
    """Print records to the terminal (rich); a closed stdout stops the run (`BrokenPipeError`)."""
    return StdoutSink(prefix)


def jsonl(path: str | os.PathLike[str]) -> JsonlSink:
    """Write records as JSON Lines to ``path`` (truncated at the start of a run).

    A path ending in ``.gz``, ``.bz2`` or ``.xz`` is written compressed, each
    batch a compressed stream of its own (read as one file by gzip, bzip2, xz
    and `sources.jsonl`; exactly once with recovery, as a plain file).
    """
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


def redis(
    url: str,
    stream: str,
    *,
    maxlen: int | None = None,
    field: str = "data",
    connect_timeout: float = 5.0,
    retry_for: float = 30.0,
    name: str | None = None,
) -> RedisStreamSink:
    """Append records to a Redis stream with ``XADD``, a batch at a time.

    Each entry holds the record's JSON in ``field`` and its event id in
    ``id``; ``maxlen`` trims the stream to about that many entries. With
    ``recovery=`` the stream gets each record exactly once: one writer, its
    last entry id in the snapshots, its entries after that id deleted on
    resume before the records after the snapshot are written again. Without
    recovery each worker appends its own. A batch the server refuses for
    ``retry_for`` seconds becomes dead letters.
    """
    return RedisStreamSink(
        url,
        stream,
        maxlen=maxlen,
        field=field,
        connect_timeout=connect_timeout,
        retry_for=retry_for,
        name=name,
    )


def nats(
    url: str,
    subject: str,
    *,
    connect_timeout: float = 5.0,
    retry_for: float = 30.0,
    name: str | None = None,
) -> JetStreamSink:
    """Publish records to a JetStream subject, each with ``Nats-Msg-Id`` from its id.

    The header is the subject and the record's id (``out.clicks c7``).
    JetStream drops a message whose id it stored within the stream's
    duplicate window (two minutes by default), and a record written to two
    subjects of one stream is stored on each. In a run with recovery one
    publisher takes every record, and a resume does not publish again what
    the killed run published after its snapshot, however late it comes: each
    record with an id is stored once. A batch the server refuses for
    ``retry_for`` seconds becomes dead letters.
    """
    return JetStreamSink(
        url, subject, connect_timeout=connect_timeout, retry_for=retry_for, name=name
    )
