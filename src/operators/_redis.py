"""Redis Streams: a partitioned, resumable source and an appending sink.

`RedisStreamSource` reads one or several streams, a partition per stream.
Each reader asks for a batch at a time (``XRANGE`` from the entry after the
last one read, ``COUNT`` the batch size), never blocks its worker (when
nothing is there it says when to ask again), and its position is the last
entry id read, kept in evflow's snapshots: with ``recovery=`` a resumed run
neither loses nor repeats an entry. Bounded mode (``until="end"``) reads up
to the last entry present when the partition was first opened (kept in the
position too) and then ends the partition; live mode (``until=None``)
tails the stream forever. A connection lost in the middle of a run is
retried with backoff (``retry_for`` seconds in all); a server unreachable at
the start is an error within ``connect_timeout``. A stream that does not
exist reads as empty (bounded: it ends at once; live: entries are read once
it is created).

`RedisStreamSink` appends each record with ``XADD`` (a pipeline of commands
per batch): the record's JSON in field ``data`` and its event id, if it has
one, in field ``id``, optionally trimming with ``MAXLEN ~``. Without
recovery each worker appends its own records. With ``recovery=`` one writer
takes them all, in ``MULTI``/``EXEC`` batches tagged with the pipeline and
step (field ``writer``), and its position (the last entry id it wrote) is in
the snapshots; on resume it deletes its entries after that position before
the records after the snapshot are written again: each record is in the
stream exactly once (a reader that tailed the stream meanwhile may have seen
a deleted entry, and sees it again with the same ``id``).

Connection URLs are never shown with their password (``redis://:****@host``).
"""

from __future__ import annotations

import re
import time
from typing import Any

from operators._brokers import (
    BrokerSink,
    BrokerSource,
    BrokerUnreachable,
    PollingReader,
    masked,
    message_of,
    without_secret,
)
from operators._event import Schema
from operators._sinks import ExactSink, ExactWriter, RunContext, Writer
from operators._sources import DEFAULT_BATCH, Reader
from operators._stage import Chunk

__all__ = ["RedisStreamSink", "RedisStreamSource"]


def _redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - the message is the point
        msg = (
            "evflow's Redis connectors need the redis client: pip install 'evflow[redis]' "
            "(or pip install redis)."
        )
        raise ImportError(msg) from None
    return redis


def _lost_errors() -> tuple[type[Exception], ...]:
    """Return the errors of a lost connection (retried), not those of a refused command."""
    errors = _redis().exceptions
    return (errors.ConnectionError, errors.TimeoutError, OSError)


def _client(url: str, timeout: float) -> Any:
    return _redis().Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def _connect(url: str, timeout: float, what: str) -> Any:
    client = _client(url, timeout)
    try:
        client.ping()
    except (_redis().exceptions.RedisError, OSError) as exc:
        client.close()
        msg = (
            f"{what}: the Redis server at {masked(url)} cannot be reached "
            f"({type(exc).__name__}: {without_secret(str(exc), url)}) within {timeout:g} s. Hint: "
            f"check that it runs and the URL, port and password are right."
        )
        raise BrokerUnreachable(msg) from None
    return client


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _after(a: str, b: str) -> bool:
    """Whether entry id ``a`` comes after ``b`` (``ms-seq``)."""
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) > (int(bm), int(bseq or 0))


class _StreamReader(PollingReader):
    def __init__(self, source: RedisStreamSource, stream: str, step: str, resume: Any) -> None:
        super().__init__(source.url, step, stream, source.poll, source.retry_for, "Redis")
        self.source = source
        what = f"read step {step!r} (stream {stream!r})"
        self.client = _connect(source.url, source.connect_timeout, what)
        self.lost_errors = _lost_errors()
        if resume is not None:
            self.last, self.stop, self.offset = resume
            return
        self.last = "0-0" if source.start in ("0", "0-0") else source.start
        if source.start == "$":
            self.last = self._newest() or "0-0"
        # Bounded: up to the last entry present now (kept across resumes).
        self.stop = (self._newest() or "0-0") if source.until == "end" else None

    def _newest(self) -> str | None:
        found = self.client.xrevrange(self.stream, count=1)
        return _id(found[0][0]) if found else None

    def next_chunk(self) -> Chunk | None:
        source = self.source
        if self.stop is not None and not _after(self.stop, self.last):
            raise StopIteration  # read up to the end it had when it started
        if self.waiting():
            return None
        try:
            entries = self.client.xrange(
                self.stream, min=f"({self.last}", max="+", count=source.batch_size
            )
        except self.lost_errors as exc:
            self.lost(exc)
            return None
        self.read_well()
        if self.stop is not None:
            entries = [e for e in entries if not _after(_id(e[0]), self.stop)]
        if not entries:
            if self.stop is not None:
                raise StopIteration
            self.nothing()
            return None
        field = source.field.encode()
        records: list[Any] = []
        ids: list[str] = []
        for raw_id, fields in entries:
            ids.append(_id(raw_id))
            value = fields.get(field)
            if value is None:
                records.append({_id(k): _id(v) for k, v in fields.items()})
            else:
                records.append(value)
        chunk = Chunk(records, self.step, self.stream, self.offset, keys=ids)
        self.offset += len(records)
        self.last = ids[-1]
        return chunk

    def close(self) -> None:
        self.client.close()


class RedisStreamSource(BrokerSource):
    """Entries of Redis streams, a partition per stream."""

    kind = "redis"

    def __init__(
        self,
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
    ) -> None:
        """Read ``streams`` at ``url`` (see `pipelines.sources.redis`)."""
        super().__init__(
            url,
            streams,
            until=until,
            schema=schema,
            batch_size=batch_size,
            poll=poll,
            connect_timeout=connect_timeout,
            retry_for=retry_for,
            name=name,
        )
        if start != "$" and not re.fullmatch(r"\d+(-\d+)?", start):
            msg = (
                f"sources.redis: start must be '0' (the beginning), '$' (the end) or an "
                f"entry id such as '1700000000000-0'; got {start!r}."
            )
            raise ValueError(msg)
        self.start = start
        self.field = field

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Connect and read ``partition`` from the start, or from its position."""
        return _StreamReader(self, partition, step, resume)


class _StreamWriter(ExactWriter):
    """Append records to a stream; with a ``tag``, the one exactly-once writer.

    Exactly once: every entry carries the tag in field ``writer``; batches go
    in one ``MULTI``/``EXEC`` (all or none), and the position is the id of the
    last entry written. When it is not sure what a batch left behind (after a
    resume, or a connection lost in the middle of a batch), it first deletes
    its own entries after the position, then writes again.
    """

    def __init__(self, sink: RedisStreamSink, tag: str | None = None, resume: Any = None) -> None:
        if resume is not None and not (
            isinstance(resume, str) and re.fullmatch(r"\d+-\d+", resume)
        ):
            msg = f"a Redis stream position must be an entry id such as '1-0'; got {resume!r}"
            raise ValueError(msg)
        self.sink = sink
        self.tag = tag
        self.client = _connect(sink.url, sink.connect_timeout, f"write to stream {sink.stream!r}")
        self.last = resume
        self.unsure = resume is not None
        if tag is not None and resume is None:
            found = self.client.xrevrange(sink.stream, count=1)
            self.last = _id(found[0][0]) if found else "0-0"

    def position(self) -> Any:
        return self.last

    def _undo(self) -> None:
        """Delete this writer's entries after its position (written after the snapshot)."""
        stream, mine, cursor = self.sink.stream, self.tag, self.last
        while True:
            entries = self.client.xrange(stream, min=f"({cursor}", max="+", count=1000)
            if not entries:
                return
            doomed = [e for e, fields in entries if _id(fields.get(b"writer", b"")) == mine]
            if doomed:
                self.client.xdel(stream, *doomed)
            cursor = _id(entries[-1][0])

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        sink = self.sink
        deadline = time.monotonic() + sink.retry_for
        delay = 0.05
        while True:
            try:
                if self.unsure:
                    self._undo()
                    self.unsure = False
                pipe = self.client.pipeline(transaction=self.tag is not None)
                for item in items:
                    data, event_id = message_of(item)
                    fields = {sink.field: data}
                    if event_id is not None:
                        fields["id"] = event_id.encode()
                    if self.tag is not None:
                        fields["writer"] = self.tag.encode()
                    pipe.xadd(sink.stream, fields, maxlen=sink.maxlen, approximate=True)
                written = pipe.execute()
                if written:
                    self.last = _id(written[-1])
                return []
            except Exception as exc:  # noqa: BLE001 - retried, then dead letters
                # What reached the server is not known: look before writing again.
                self.unsure = self.tag is not None
                if time.monotonic() + delay > deadline:
                    error = BrokerUnreachable(
                        f"stream {sink.stream!r} at {masked(sink.url)}: "
                        f"{type(exc).__name__}: {without_secret(str(exc), sink.url)}"
                    )
                    return [(item, error) for item in items]
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def close(self) -> None:
        self.client.close()


class RedisStreamSink(BrokerSink, ExactSink):
    """Append records to a Redis stream (see `pipelines.sinks.redis`)."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        maxlen: int | None = None,
        field: str = "data",
        connect_timeout: float = 5.0,
        retry_for: float = 30.0,
        name: str | None = None,
    ) -> None:
        """Append to ``stream`` at ``url``."""
        super().__init__(
            url, stream, connect_timeout=connect_timeout, retry_for=retry_for, name=name
        )
        self.stream = stream
        self.maxlen = maxlen
        self.field = field

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Connect this worker's writer (at least once)."""
        return _StreamWriter(self)

    def open_exact(self, ctx: RunContext, step: str, resume: Any | None) -> ExactWriter:
        """Connect the one writer of a run with recovery (exactly once)."""
        return _StreamWriter(self, f"{ctx.pipeline}.{step}", resume)
