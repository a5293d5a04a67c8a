"""Sources: where a pipeline's records come from.

Every source reads in chunks (1000 records by default) and knows its
partitions; bad records are never dropped: with a ``schema`` they are parsed
and validated in one step, and failures become dead letters with their origin.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, overload

from operators import (
    DEFAULT_BATCH,
    CsvSource,
    Event,
    GenerateSource,
    JsonlSource,
    MemorySource,
    Schema,
    Source,
    StdinSource,
)
from operators._bytewax_io import BytewaxSource
from operators._nats import JetStreamSource
from operators._redis import RedisStreamSource
from operators._sources import Factory

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Source", "bytewax", "csv", "generate", "jsonl", "memory", "nats", "redis", "stdin"]

T = TypeVar("T")
E = TypeVar("E", bound=Event)
E2 = TypeVar("E2", bound=Event)
E3 = TypeVar("E3", bound=Event)
E4 = TypeVar("E4", bound=Event)

# The record type a source gives: an event class for ``schema=Class``, the
# union of the classes for ``schema=(View, Purchase)`` (up to four), the items'
# own type without a schema, and Any for a union written ``View | Purchase``
# (type checkers see no classes in it: narrow it with ``filter(View)``).


@overload
def memory(
    items: Iterable[Any],
    *,
    schema: type[E],
    partitions: int = ...,
    batch_size: int = ...,
    name: str = ...,
) -> MemorySource[E]: ...


@overload
def memory(
    items: Iterable[Any],
    *,
    schema: tuple[type[E], type[E2]],
    partitions: int = ...,
    batch_size: int = ...,
    name: str = ...,
) -> MemorySource[E | E2]: ...


@overload
def memory(
    items: Iterable[Any],
    *,
    schema: tuple[type[E], type[E2], type[E3]],
    partitions: int = ...,
    batch_size: int = ...,
    name: str = ...,
) -> MemorySource[E | E2 | E3]: ...


@overload
def memory(
    items: Iterable[Any],
    *,
    schema: tuple[type[E], type[E2], type[E3], type[E4]],
    partitions: int = ...,
    batch_size: int = ...,
    name: str = ...,
) -> MemorySource[E | E2 | E3 | E4]: ...


@overload
def memory(
    items: Iterable[T],
    *,
    schema: None = None,
    partitions: int = ...,
    batch_size: int = ...,
    name: str = ...,
) -> MemorySource[T]: ...


@overload
def memory(
    items: Iterable[Any],
    *,
    schema: Schema,
    partitions: int = ...,
    batch_size: int = ...,
    name: str = ...,
) -> MemorySource[Any]: ...


def memory(
    items: Iterable[Any],
    *,
    schema: Schema | None = None,
    partitions: int = 1,
    batch_size: int = DEFAULT_BATCH,
    name: str = "memory",
) -> MemorySource[Any]:
    """Read records held in memory.

    Without a schema the records flow as they are. With one, JSON text and
    dicts are validated into events (bad ones become dead letters).

    >>> from pipelines import Pipeline, testing
    >>> sorted(testing.outputs(Pipeline("p").read(memory([3, 1, 2]))))
    [1, 2, 3]
    """
    return MemorySource(
        items, schema=schema, partitions=partitions, batch_size=batch_size, name=name
    )


@overload
def jsonl(
    path: str | os.PathLike[str], *, schema: type[E], batch_size: int = ..., follow: bool = ...
) -> JsonlSource[E]: ...


@overload
def jsonl(
    path: str | os.PathLike[str],
    *,
    schema: tuple[type[E], type[E2]],
    batch_size: int = ...,
    follow: bool = ...,
) -> JsonlSource[E | E2]: ...


@overload
def jsonl(
    path: str | os.PathLike[str],
    *,
    schema: tuple[type[E], type[E2], type[E3]],
    batch_size: int = ...,
    follow: bool = ...,
) -> JsonlSource[E | E2 | E3]: ...


@overload
def jsonl(
    path: str | os.PathLike[str],
    *,
    schema: tuple[type[E], type[E2], type[E3], type[E4]],
    batch_size: int = ...,
    follow: bool = ...,
) -> JsonlSource[E | E2 | E3 | E4]: ...


@overload
def jsonl(
    path: str | os.PathLike[str], *, schema: Schema, batch_size: int = ..., follow: bool = ...
) -> JsonlSource[Any]: ...


def jsonl(
    path: str | os.PathLike[str],
    *,
    schema: Schema,
    batch_size: int = DEFAULT_BATCH,
    follow: bool = False,
) -> JsonlSource[Any]:
    """Read JSON Lines files (a path or a glob), one partition per file.

    A malformed line or a schema violation becomes a dead letter naming the
    file and line. A file that is one JSON array over several lines, or
    records one after another each over several lines, is read as its
    records (up to where it breaks off, the rest one dead letter). A file
    compressed with gzip, bzip2 or xz is read as what it holds (so is a csv
    file). ``follow=True`` reads on as lines are added to the files (as
    ``tail -F`` does) until the run is stopped; a line is read once its
    writer has ended it, and a file renamed away and made anew (a log
    rotated) is read to its end, then the new one.
    """
    return JsonlSource(path, schema=schema, batch_size=batch_size, follow=follow)


@overload
def csv(
    path: str | os.PathLike[str],
    *,
    schema: type[E],
    batch_size: int = ...,
    delimiter: str | None = ...,
    columns: list[str] | None = ...,
) -> CsvSource[E]: ...


@overload
def csv(
    path: str | os.PathLike[str],
    *,
    schema: tuple[type[E], type[E2]],
    batch_size: int = ...,
    delimiter: str | None = ...,
    columns: list[str] | None = ...,
) -> CsvSource[E | E2]: ...


@overload
def csv(
    path: str | os.PathLike[str],
    *,
    schema: tuple[type[E], type[E2], type[E3]],
    batch_size: int = ...,
    delimiter: str | None = ...,
    columns: list[str] | None = ...,
) -> CsvSource[E | E2 | E3]: ...


@overload
def csv(
    path: str | os.PathLike[str],
    *,
    schema: tuple[type[E], type[E2], type[E3], type[E4]],
    batch_size: int = ...,
    delimiter: str | None = ...,
    columns: list[str] | None = ...,
) -> CsvSource[E | E2 | E3 | E4]: ...


@overload
def csv(
    path: str | os.PathLike[str],
    *,
    schema: Schema,
    batch_size: int = ...,
    delimiter: str | None = ...,
    columns: list[str] | None = ...,
) -> CsvSource[Any]: ...


def csv(
    path: str | os.PathLike[str],
    *,
    schema: Schema,
    batch_size: int = DEFAULT_BATCH,
    delimiter: str | None = None,
    columns: list[str] | None = None,
) -> CsvSource[Any]:
    r"""Read CSV files with a header row (a path or a glob), one partition per file.

    Fields are separated by commas, or by ``delimiter`` (one character, such
    as ``";"`` or ``"\t"``). Without one, a file whose header is one column
    that another common separator splits is refused row by row, with a hint
    to name it. ``columns=["user", "amount"]`` reads files without a header
    row: their first row is a record.
    """
    return CsvSource(
        path, schema=schema, batch_size=batch_size, delimiter=delimiter, columns=columns
    )


class _GenerateOptions(TypedDict, total=False):
    seed: int
    partitions: int
    rate: float | None
    batch_size: int
    name: str


@overload
def generate(
    factory: Callable[[random.Random, int], T],
    *,
    count: int | None,
    schema: None = ...,
    **options: Unpack[_GenerateOptions],
) -> GenerateSource[T]: ...


@overload
def generate(
    factory: Factory, *, count: int | None, schema: type[E], **options: Unpack[_GenerateOptions]
) -> GenerateSource[E]: ...


@overload
def generate(
    factory: Factory,
    *,
    count: int | None,
    schema: tuple[type[E], type[E2]],
    **options: Unpack[_GenerateOptions],
) -> GenerateSource[E | E2]: ...


@overload
def generate(
    factory: Factory,
    *,
    count: int | None,
    schema: tuple[type[E], type[E2], type[E3]],
    **options: Unpack[_GenerateOptions],
) -> GenerateSource[E | E2 | E3]: ...


@overload
def generate(
    factory: Factory,
    *,
    count: int | None,
    schema: tuple[type[E], type[E2], type[E3], type[E4]],
    **options: Unpack[_GenerateOptions],
) -> GenerateSource[E | E2 | E3 | E4]: ...


@overload
def generate(
    factory: Factory, *, count: int | None, schema: Schema, **options: Unpack[_GenerateOptions]
) -> GenerateSource[Any]: ...


def generate(
    factory: Factory,
    *,
    count: int | None,
    seed: int = 0,
    partitions: int = 1,
    rate: float | None = None,
    schema: Schema | None = None,
    batch_size: int = DEFAULT_BATCH,
    name: str = "generate",
) -> GenerateSource[Any]:
    """Generate deterministic synthetic records: ``factory(rng, index)``.

    ``count=None`` never ends; ``rate`` caps records per second.

    >>> from pipelines import Pipeline, testing
    >>> src = generate(lambda rng, i: i * 2, count=4, partitions=2)
    >>> sorted(testing.outputs(Pipeline("p").read(src)))
    [0, 2, 4, 6]
    """
    return GenerateSource(
        factory,
        count=count,
        seed=seed,
        partitions=partitions,
        rate=rate,
        schema=schema,
        batch_size=batch_size,
        name=name,
    )


@overload
def stdin(*, schema: type[E], batch_size: int = ...) -> StdinSource[E]: ...


@overload
def stdin(*, schema: tuple[type[E], type[E2]], batch_size: int = ...) -> StdinSource[E | E2]: ...


@overload
def stdin(
    *, schema: tuple[type[E], type[E2], type[E3]], batch_size: int = ...
) -> StdinSource[E | E2 | E3]: ...


@overload
def stdin(
    *, schema: tuple[type[E], type[E2], type[E3], type[E4]], batch_size: int = ...
) -> StdinSource[E | E2 | E3 | E4]: ...


@overload
def stdin(*, schema: Schema, batch_size: int = ...) -> StdinSource[Any]: ...


def stdin(*, schema: Schema, batch_size: int = DEFAULT_BATCH) -> StdinSource[Any]:
    """Read JSON Lines from standard input until it closes."""
    return StdinSource(schema=schema, batch_size=batch_size)


class _BytewaxOptions(TypedDict, total=False):
    value: Callable[[Any], Any] | None
    time: Callable[[Any], Any] | None
    name: str | None


@overload
def bytewax(
    source: Any, *, schema: type[E], **options: Unpack[_BytewaxOptions]
) -> BytewaxSource[E]: ...


@overload
def bytewax(
    source: Any,
    *,
    schema: tuple[type[E], type[E2]],
    **options: Unpack[_BytewaxOptions],
) -> BytewaxSource[E | E2]: ...


@overload
def bytewax(
    source: Any,
    *,
    schema: tuple[type[E], type[E2], type[E3]],
    **options: Unpack[_BytewaxOptions],
) -> BytewaxSource[E | E2 | E3]: ...


@overload
def bytewax(
    source: Any,
    *,
    schema: tuple[type[E], type[E2], type[E3], type[E4]],
    **options: Unpack[_BytewaxOptions],
) -> BytewaxSource[E | E2 | E3 | E4]: ...


@overload
def bytewax(
    source: Any, *, schema: Schema | None = ..., **options: Unpack[_BytewaxOptions]
) -> BytewaxSource[Any]: ...


def bytewax(
    source: Any,
    *,
    schema: Schema | None = None,
    value: Callable[[Any], Any] | None = None,
    time: Callable[[Any], Any] | None = None,
    name: str | None = None,
) -> BytewaxSource[Any]:
    """Read a bytewax source (Kafka's, files, community connectors) with evflow around it.

    Each partition of a ``FixedPartitionedSource`` is an evflow partition,
    resumed from its own snapshot in evflow's recovery store; ``value``
    takes the record out of each message (``lambda m: m.value`` for
    Kafka's); ``time`` reads when the broker stored it (an aware datetime or
    epoch seconds: ``lambda m: m.timestamp[1] / 1000`` for Kafka's), which
    dates an event parsed without a ``time``; ``schema`` parses and
    validates records (bad ones become dead letters, and so do messages
    ``value`` or ``time`` fails on). A ``DynamicSource`` is read as one
    partition, with no resume.

    >>> from bytewax.testing import TestingSource
    >>> from pipelines import Pipeline, sinks
    >>> lines = TestingSource(['{"a": 1}', "oops"])
    >>> p = Pipeline("bw").read(bytewax(lines)).write(sinks.memory("o"))
    >>> sorted(p.run()["o"])
    ['oops', '{"a": 1}']
    """
    return BytewaxSource(source, schema=schema, value=value, time=time, name=name)


class _BrokerOptions(TypedDict, total=False):
    until: str | None
    batch_size: int
    poll: float
    connect_timeout: float
    retry_for: float
    name: str | None


class _RedisOptions(_BrokerOptions, total=False):
    start: str
    field: str
    group: str | None
    consumer: str


@overload
def redis(
    url: str, streams: str | list[str], *, schema: type[E], **options: Unpack[_RedisOptions]
) -> RedisStreamSource[E]: ...


@overload
def redis(
    url: str,
    streams: str | list[str],
    *,
    schema: tuple[type[E], type[E2]],
    **options: Unpack[_RedisOptions],
) -> RedisStreamSource[E | E2]: ...


@overload
def redis(
    url: str,
    streams: str | list[str],
    *,
    schema: tuple[type[E], type[E2], type[E3]],
    **options: Unpack[_RedisOptions],
) -> RedisStreamSource[E | E2 | E3]: ...


@overload
def redis(
    url: str,
    streams: str | list[str],
    *,
    schema: tuple[type[E], type[E2], type[E3], type[E4]],
    **options: Unpack[_RedisOptions],
) -> RedisStreamSource[E | E2 | E3 | E4]: ...


@overload
def redis(
    url: str,
    streams: str | list[str],
    *,
    schema: Schema | None = ...,
    **options: Unpack[_RedisOptions],
) -> RedisStreamSource[Any]: ...


def redis(
    url: str,
    streams: str | list[str],
    *,
    start: str = "0",
    until: str | None = "end",
    schema: Schema | None = None,
    field: str = "data",
    batch_size: int = DEFAULT_BATCH,
    poll: float = 0.05,
    connect_timeout: float = 5.0,
    retry_for: float = 30.0,
    name: str | None = None,
    group: str | None = None,
    consumer: str = "evflow",
) -> RedisStreamSource[Any]:
    """Read Redis streams (Redis or Valkey), a partition per stream.

    ``start``: ``"0"`` (the beginning), ``"$"`` (the end) or an entry id;
    ``until="end"`` reads up to the last entry present when the run starts
    and ends (backfills, tests), ``until=None`` tails the streams forever.
    Each entry's field ``field`` (JSON text) is the record, parsed with
    ``schema``; an entry without it is handed on as a dict of its fields. An
    event parsed without a ``time`` is dated by when the stream stored the
    entry (its id's milliseconds), the same on every read. A malformed entry
    is a dead letter whose origin names the stream and the entry id. The
    last entry id read is kept in evflow's snapshots: with ``recovery=`` a
    resumed run neither loses nor repeats an entry. Entries trimmed or
    deleted before they were read are counted: a ``missing`` dead letter
    (not with ``group=``).

    With ``group=`` the streams are read as ``consumer`` of that consumer
    group (made at ``start`` if it does not exist, ``MKSTREAM``), sharing
    the entries with the group's other consumers: first this consumer's
    entries delivered before and never acknowledged, then new ones. With
    ``recovery=`` an entry is acknowledged (``XACK``) only once a snapshot
    that covers it is in the recovery store (and at the end of a run that
    ended well); without, as it is handed on. Needs the ``redis`` client
    (``pip install 'evflow[redis]'``).
    """
    return RedisStreamSource(
        url,
        streams,
        start=start,
        until=until,
        schema=schema,
        field=field,
        batch_size=batch_size,
        poll=poll,
        connect_timeout=connect_timeout,
        retry_for=retry_for,
        name=name,
        group=group,
        consumer=consumer,
    )


class _NatsOptions(_BrokerOptions, total=False):
    start: int | str


@overload
def nats(
    url: str, streams: str | list[str], *, schema: type[E], **options: Unpack[_NatsOptions]
) -> JetStreamSource[E]: ...


@overload
def nats(
    url: str,
    streams: str | list[str],
    *,
    schema: tuple[type[E], type[E2]],
    **options: Unpack[_NatsOptions],
) -> JetStreamSource[E | E2]: ...


@overload
def nats(
    url: str,
    streams: str | list[str],
    *,
    schema: tuple[type[E], type[E2], type[E3]],
    **options: Unpack[_NatsOptions],
) -> JetStreamSource[E | E2 | E3]: ...


@overload
def nats(
    url: str,
    streams: str | list[str],
    *,
    schema: tuple[type[E], type[E2], type[E3], type[E4]],
    **options: Unpack[_NatsOptions],
) -> JetStreamSource[E | E2 | E3 | E4]: ...


@overload
def nats(
    url: str,
    streams: str | list[str],
    *,
    schema: Schema | None = ...,
    **options: Unpack[_NatsOptions],
) -> JetStreamSource[Any]: ...


def nats(
    url: str,
    streams: str | list[str],
    *,
    start: int | str = 1,
    until: str | None = "end",
    schema: Schema | None = None,
    batch_size: int = DEFAULT_BATCH,
    poll: float = 0.05,
    connect_timeout: float = 5.0,
    retry_for: float = 30.0,
    name: str | None = None,
) -> JetStreamSource[Any]:
    """Read NATS JetStream streams, a partition per stream, from a sequence number.

    ``start``: a stream sequence (1, the beginning, by default) or ``"end"``;
    ``until="end"`` stops at the last message present when the run starts,
    ``until=None`` tails the streams. Each message's data (JSON text) is the
    record, parsed with ``schema`` (an event without a ``time`` is dated by
    when the stream stored the message); a malformed one is a dead letter
    whose origin names the stream and the sequence. The last sequence read is kept
    in evflow's snapshots (an exact resume); a stream that does not exist is
    an error. Needs the ``nats`` client (``pip install 'evflow[nats]'``).
    """
    return JetStreamSource(
        url,
        streams,
        start=start,
        until=until,
        schema=schema,
        batch_size=batch_size,
        poll=poll,
        connect_timeout=connect_timeout,
        retry_for=retry_for,
        name=name,
    )
