"""Any bytewax source or sink inside an evflow pipeline.

`BytewaxSource` reads a bytewax ``FixedPartitionedSource`` (Kafka, files,
community connectors) partition by partition: each of its partitions is an
evflow partition, its ``snapshot()`` is the position evflow keeps in its
own snapshots (so a resumed run reads on from there), and its end ends the
partition. A ``DynamicSource`` (one part per worker, no resume) is read as
one partition and is not replayable. Records then go through evflow's
parsing (``schema=``), dead letters and counts as any source's.

`BytewaxSink` writes through a bytewax ``DynamicSink`` (Kafka's among them):
each worker builds its own part and hands it each batch; a batch whose write
raises becomes dead letters, one per record, with the error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from bytewax.inputs import DynamicSource, FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators._event import Schema
from operators._keying import event_seconds
from operators._sinks import RunContext, Sink, Writer
from operators._sources import DEFAULT_BATCH, R, Reader, Source, slug
from operators._stage import Chunk, Unreadable, describe_function

__all__ = ["BytewaxSink", "BytewaxSource"]

#: The times a message's time may be (epoch seconds): years 1 to 9999.
_EARLIEST = (
    datetime(1, 1, 1, tzinfo=timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
).total_seconds()
_LATEST = (
    datetime(9999, 12, 31, tzinfo=timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
).total_seconds()


class _PartReader(Reader):
    """One partition of a bytewax source, read a bytewax batch at a time."""

    def __init__(
        self,
        part: Any,
        step: str,
        partition: str,
        value: Callable[[Any], Any] | None,
        time: Callable[[Any], Any] | None = None,
    ) -> None:
        self.part = part
        self.step = step
        self.partition = partition
        self.value = value
        self.time = time
        self.offset = 0

    def next_chunk(self) -> Chunk | None:
        items = self.part.next_batch()  # raises StopIteration at the end
        if not items:
            return None
        times: list[float | None] | None = None
        if self.time is not None:
            dated = [self._time(item) for item in items]
            times = [t if t.__class__ is float else None for t in dated]
            items = [
                t if t.__class__ is Unreadable else item
                for t, item in zip(dated, items, strict=True)
            ]
        if self.value is not None:
            items = [i if i.__class__ is Unreadable else self._value(i) for i in items]
        chunk = Chunk(
            list(items),
            self.step,
            self.partition,
            self.offset,
            unreadable=any(i.__class__ is Unreadable for i in items)
            if self.value or self.time
            else False,
            times=times,
        )
        self.offset += len(items)
        return chunk

    def _value(self, item: Any) -> Any:
        """Take the record out of a connector's message; a failure is a dead letter."""
        assert self.value is not None
        try:
            return self.value(item)
        except Exception as exc:  # noqa: BLE001 - the parse step dead-letters it
            return Unreadable(repr(item), exc, function=describe_function(self.value))

    def _time(self, item: Any) -> float | Unreadable | None:
        """Read a message's time (epoch seconds; None: none); a failure is a dead letter."""
        assert self.time is not None
        try:
            found = self.time(item)
            if found is None:
                return None
            seconds = event_seconds(found)
            if not _EARLIEST <= seconds < _LATEST:
                hint = " (epoch milliseconds? divide by 1000)" if seconds > 1e11 else ""
                msg = f"the message's time {found!r} is no date evflow can hold{hint}"
                raise ValueError(msg)
            return seconds
        except Exception as exc:  # noqa: BLE001 - the parse step dead-letters it
            return Unreadable(repr(item), exc, function=describe_function(self.time))

    def next_awake(self) -> datetime | None:
        awake: datetime | None = self.part.next_awake()
        return awake

    def position(self) -> Any:
        if isinstance(self.part, StatefulSourcePartition):
            return self.part.snapshot()
        return None

    def close(self) -> None:
        self.part.close()


class BytewaxSource(Source[R]):
    """A bytewax source (``FixedPartitionedSource`` or ``DynamicSource``) read by evflow."""

    def __init__(
        self,
        source: FixedPartitionedSource[Any, Any] | DynamicSource[Any],
        *,
        schema: Schema | None = None,
        value: Callable[[Any], Any] | None = None,
        time: Callable[[Any], Any] | None = None,
        name: str | None = None,
    ) -> None:
        """Wrap ``source``; ``schema`` parses and validates its records (JSON text or dicts).

        ``value`` takes the record out of each of the connector's messages
        (``lambda m: m.value`` for Kafka's); ``time`` reads when the broker
        stored it (an aware datetime or epoch seconds; None for none), which
        dates an event parsed without a ``time``. A message either fails on
        is a dead letter.
        """
        if not isinstance(source, FixedPartitionedSource | DynamicSource):
            msg = (
                f"sources.bytewax() needs a bytewax source (a FixedPartitionedSource, such "
                f"as KafkaSource or FileSource, or a DynamicSource); got "
                f"{type(source).__name__}. Hint: sources.bytewax(KafkaSource(brokers, "
                f"topics)); evflow's own sources go straight to Pipeline.read."
            )
            raise TypeError(msg)
        self.source = source
        self.schema = schema
        self.batch_size = DEFAULT_BATCH
        self.name = name
        self.value = value
        self.time = time
        self.replayable = isinstance(source, FixedPartitionedSource)

    @property
    def label(self) -> str:
        """Name the read step after the bytewax source's class."""
        return self.name or slug(type(self.source).__name__.lower())

    def partitions(self) -> list[str]:
        """List the bytewax source's partitions (one for a dynamic source)."""
        if isinstance(self.source, FixedPartitionedSource):
            return list(self.source.list_parts())
        return ["dynamic"]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Build the bytewax partition, resuming from its own snapshot."""
        part: Any
        if isinstance(self.source, FixedPartitionedSource):
            part = self.source.build_part(step, partition, resume)
        else:
            part = self.source.build(step, 0, 1)
        return _PartReader(part, step, partition, self.value, self.time)


class _PartWriter(Writer):
    def __init__(self, part: StatelessSinkPartition[Any]) -> None:
        self.part = part

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        try:
            self.part.write_batch(items)
        except Exception as exc:  # noqa: BLE001 - each record becomes a dead letter
            return [(item, exc) for item in items]
        return []

    def close(self) -> None:
        self.part.close()


class BytewaxSink(Sink):
    """A bytewax ``DynamicSink`` (Kafka's, or your own) written by evflow."""

    def __init__(self, sink: DynamicSink[Any], *, name: str | None = None) -> None:
        """Wrap ``sink``."""
        if not isinstance(sink, DynamicSink):
            msg = (
                f"sinks.bytewax() needs a bytewax DynamicSink (such as KafkaSink); got "
                f"{type(sink).__name__}. A FixedPartitionedSink keeps state per partition "
                f"that evflow's workers cannot share. Hint: for files use sinks.jsonl, "
                f"which is exactly-once with recovery."
            )
            raise TypeError(msg)
        self.sink = sink
        self.name = name

    @property
    def label(self) -> str:
        """Name the write step after the bytewax sink's class."""
        return self.name or slug(type(self.sink).__name__.lower())

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Build this worker's part of the sink."""
        return _PartWriter(self.sink.build(self.label, worker_index, worker_count))
