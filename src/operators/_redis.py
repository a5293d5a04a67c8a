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
it is created). Entries trimmed or deleted before they were read are counted
against the stream's count of entries ever added (``_Tally``) and become a
``missing`` dead letter.

`RedisStreamSink` appends each record with ``XADD`` (a pipeline of commands
per batch): the record's JSON in field ``data`` and its event id, if it has
one, in field ``id``, optionally trimming with ``MAXLEN ~``. Without
recovery each worker appends its own records. With ``recovery=`` one writer
takes them all, in ``MULTI``/``EXEC`` batches tagged with the pipeline and
step and the store's making (field ``writer``), and its position (the last
entry id it wrote) is in the snapshots; on resume it deletes its entries after
that position (with no snapshot yet, those since the store was made) before
the records after the snapshot are written again: each record is in the
stream exactly once (a reader that tailed the stream meanwhile may have seen
a deleted entry, and sees it again with the same ``id``).

Connection URLs are never shown with their password (``redis://:****@host``).
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import astuple, dataclass
from typing import Any

from operators._brokers import (
    BrokerSink,
    BrokerSource,
    BrokerUnreachable,
    PollingReader,
    masked,
    messages_of,
    missing,
    without_secret,
    writer_tag,
)
from operators._event import Schema
from operators._sinks import ExactSink, ExactWriter, OutputChangedError, RunContext, Writer
from operators._sources import DEFAULT_BATCH, R, Reader
from operators._stage import Chunk, Unreadable

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


def _check_stream(client: Any, stream: str, what: str) -> None:
    """Refuse a key that holds something else than a stream (none is fine: made when written)."""
    kind = _id(client.type(stream))
    if kind not in ("stream", "none"):
        client.close()
        msg = (
            f"{what}: key {stream!r} holds a {kind}, not a stream. Hint: name a stream "
            f"(XADD makes one), or delete the key if it is left over."
        )
        raise ValueError(msg)


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _after(a: str, b: str) -> bool:
    """Whether entry id ``a`` comes after ``b`` (``ms-seq``)."""
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) > (int(bm), int(bseq or 0))


@dataclass(frozen=True)
class _Look:
    """What ``XINFO STREAM`` says of a stream at one moment (an absent stream: all zero)."""

    length: int
    #: The last id ever given (``last-generated-id``); entries are never added below it.
    tip: str
    #: How many entries were ever added (None: a server before Redis 7 does not say).
    added: int | None
    first: str | None
    newest: str | None

    @classmethod
    def of(cls, raw: Any) -> _Look:
        if isinstance(raw, Exception):
            if "no such key" not in str(raw).lower():
                raise raw
            return cls(0, "0-0", 0, None, None)
        first, newest = raw.get("first-entry"), raw.get("last-entry")
        added = raw.get("entries-added")
        return cls(
            int(raw["length"]),
            _id(raw["last-generated-id"]),
            None if added is None else int(added),
            None if not first else _id(first[0]),
            None if not newest else _id(newest[0]),
        )


def _look(client: Any, stream: str) -> _Look:
    """Look at ``stream``'s counts (``XINFO STREAM``)."""
    try:
        raw = client.xinfo_stream(stream)
    except _redis().exceptions.ResponseError as exc:
        raw = exc
    return _Look.of(raw)


@dataclass
class _Tally:
    """How many entries a reader still has to read, to tell those removed unread.

    Entries are added with ever greater ids, and the stream counts how many
    were ever added (``entries-added``): between two looks the entries added
    number ``added' - added``, all with ids in ``(tip, tip']``. ``owed`` is
    how many entries after the last one read, up to ``tip``, existed; a
    look that also sees how many are there now tells those removed unread
    (``since``: the last entry read when the count was last right).
    """

    tip: str
    added: int
    owed: int
    #: Entries read with ids after ``tip`` (added since the last look).
    beyond: int
    since: str

    def read(self, ids: list[str]) -> None:
        """Count the entries ``ids`` (in order) as read."""
        tip = self.tip
        if not _after(ids[-1], tip):  # all added before the last look (a bounded read's)
            self.owed -= len(ids)
            return
        for entry in ids:
            if _after(entry, tip):
                self.beyond += 1
            else:
                self.owed -= 1


class _StreamReader(PollingReader):
    #: Whether entries removed unread are counted (no for a group: its consumers share them).
    tallies = True

    def __init__(self, source: RedisStreamSource[Any], stream: str, step: str, resume: Any) -> None:
        super().__init__(source.url, step, stream, source.poll, source.retry_for, "Redis")
        self.source = source
        what = f"read step {step!r} (stream {stream!r})"
        self.client = _connect(source.url, source.connect_timeout, what)
        _check_stream(self.client, stream, what)
        self.lost_errors = _lost_errors()
        self.tally: _Tally | None = None
        #: When to look at the stream's counts next (a live read; monotonic seconds).
        self.look_at = 0.0
        if resume is not None:
            self.last, self.stop, self.offset, *rest = resume
            if rest and rest[0] is not None:
                self.tally = _Tally(*rest[0])
            return
        look = _look(self.client, self.stream) if self.tallies else None
        self.last = self._first(look)
        # Bounded: up to the last entry present now (kept across resumes).
        if source.until == "end":
            self.stop = (look.newest if look else self._newest()) or "0-0"
        if look is not None and look.added is not None and source.start in ("0", "0-0", "$"):
            owed = 0 if source.start == "$" else look.length
            self.tally = _Tally(look.tip, look.added, owed, 0, self.last)

    def _first(self, look: _Look | None) -> str:
        """Where a fresh read starts: the entries after this id."""
        start = self.source.start
        if start == "$":
            return (look.newest if look else self._newest()) or "0-0"
        return "0-0" if start in ("0", "0-0") else start

    def _newest(self) -> str | None:
        found = self.client.xrevrange(self.stream, count=1)
        return _id(found[0][0]) if found else None

    def _read(self) -> list[Any]:
        """Read the next batch of entries."""
        return list(
            self.client.xrange(
                self.stream, min=f"({self.last}", max="+", count=self.source.batch_size
            )
        )

    def _read_and_look(self) -> tuple[list[Any], _Look]:
        """Read the next batch and look at the stream's counts, at one moment (``MULTI``)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xrange(self.stream, min=f"({self.last}", max="+", count=self.source.batch_size)
        pipe.xinfo_stream(self.stream)
        entries, raw = pipe.execute(raise_on_error=False)
        if isinstance(entries, Exception):
            raise entries
        return list(entries), _Look.of(raw)

    def _reckon(self, entries: list[Any], look: _Look) -> Unreadable | None:
        """Compare the entries owed with those there, from a look taken with the read ``entries``.

        Return a ``missing`` dead letter for those removed unread, if any.
        """
        if look.added is None:
            return None
        tally = self.tally
        there: int | None = None  # how many entries after the last one read are there
        if len(entries) < self.source.batch_size:
            there = len(entries)
        elif look.first is not None and _after(look.first, self.last):
            there = look.length
        letter = None
        if tally is not None and look.added < tally.added:
            # Deleted (and made again) since the last look: what it still owed is gone.
            if tally.owed > 0:
                letter = self._missing(tally.since, tally.tip, tally.owed)
            tally = self.tally = None
        if tally is None:
            # Not counted yet (or made again): counted from now on.
            if there is not None:
                self.tally = _Tally(look.tip, look.added, there, 0, self.last)
            return letter
        owed = tally.owed + (look.added - tally.added) - tally.beyond
        if there is not None:
            if owed > there:
                letter = self._missing(tally.since, look.tip, owed - there)
            owed = there
            tally.since = self.last
        tally.tip, tally.added, tally.owed, tally.beyond = look.tip, look.added, owed, 0
        return letter

    def _missing(self, since: str, until: str, n: int) -> Unreadable:
        """Stand for ``n`` entries after ``since`` (up to ``until``) removed unread."""
        return missing(
            {"stream": self.stream, "after": since, "through": until, "count": n},
            f"stream {self.stream!r} no longer holds {n} entr{'y' if n == 1 else 'ies'} added "
            f"after entry {since} (up to {until}): trimmed (MAXLEN, MINID) or deleted (XDEL) "
            f"before they were read",
        )

    def _end(self) -> Chunk:
        """End a bounded read, with a ``missing`` letter for the entries up to its end not read."""
        tally = self.tally
        if tally is None or tally.owed <= 0:
            raise StopIteration
        letter = self._missing(tally.since, self.stop, tally.owed)
        tally.owed, tally.since = 0, self.stop
        chunk = Chunk(
            [letter], self.step, self.stream, self.offset, keys=[f"..{self.stop}"], unreadable=True
        )
        self.offset += 1
        return chunk

    def position(self) -> Any:
        """Return the broker position and what the reader still has to read."""
        tally = self.tally
        counts = None if tally is None else astuple(tally)
        return (*super().position(), counts)

    def _lost(self) -> None:
        """Hear that a read's connection was lost."""

    def _handed(self, ids: list[str]) -> None:
        """Hear that the entries ``ids`` were handed on."""

    def next_chunk(self) -> Chunk | None:
        source = self.source
        if self.stop is not None and not _after(self.stop, self.last):
            return self._end()  # read up to the end it had when it started
        if self.waiting():
            return None
        look: _Look | None = None
        try:
            if self.tallies and self.stop is None and time.monotonic() >= self.look_at:
                entries, look = self._read_and_look()
                self.look_at = time.monotonic() + 1.0
            else:
                entries = self._read()
        except self.lost_errors as exc:
            self._lost()
            self.lost(exc)
            return None
        self.read_well()
        if self.stop is not None:
            # (A group's entries after the end stay pending for a later run.)
            entries = [e for e in entries if not _after(_id(e[0]), self.stop)]
        records: list[Any] = []
        ids: list[str] = []
        if look is not None:
            letter = self._reckon(entries, look)
            if letter is not None:
                records.append(letter)
                ids.append(f"{self.last}..{look.tip}")
        elif entries and len(entries) < source.batch_size:
            self.look_at = 0.0  # at the end of the stream: look with the next read
        if not entries and not records:
            if self.stop is not None:
                return self._end()
            self.nothing()
            return None
        field = source.field.encode()
        read: list[str] = []
        for raw_id, fields in entries:
            entry = _id(raw_id)
            if fields is None:  # delivered to a group's consumer before, deleted since
                records.append(self._missing(read[-1] if read else self.last, entry, 1))
                read.append(entry)
                continue
            read.append(entry)
            value = fields.get(field)
            if value is None:
                records.append({_id(k): _id(v) for k, v in fields.items()})
            else:
                records.append(value)
        ids.extend(read)
        flawed = any(r.__class__ is Unreadable for r in records)
        # An entry's id starts with when the stream stored it (milliseconds).
        times: list[float | None] = [
            None if r.__class__ is Unreadable else int(k.partition("-")[0]) / 1000
            for r, k in zip(records, ids, strict=True)
        ]
        chunk = Chunk(
            records, self.step, self.stream, self.offset, keys=ids, unreadable=flawed, times=times
        )
        self.offset += len(records)
        if read:
            self.last = read[-1]
            if self.tally is not None:
                self.tally.read(read)
            self._handed(read)
        return chunk

    def close(self) -> None:
        self.client.close()


class _GroupReader(_StreamReader):
    """A stream read as a consumer of a group.

    Entries removed before the group delivered them are not counted (its
    other consumers may have read them); those it delivered to this consumer
    and that were removed before they were handled (a run that died) come
    back without fields and are ``missing`` dead letters.

    First this consumer's entries that were delivered after ``last`` and
    never acknowledged, then new ones (``>``). Entries are acknowledged once a
    resumed run would not read them again (`committed`), or as they are handed
    on in a run without recovery.
    """

    def __init__(self, source: RedisStreamSource[Any], stream: str, step: str, resume: Any) -> None:
        self.group = source.group
        self.again = True
        #: Ids handed on and not acknowledged yet, oldest first.
        self.unacked: deque[str] = deque()
        super().__init__(source, stream, step, resume)
        self._join_group()
        if resume is not None:
            self._covered()

    tallies = False

    def _first(self, look: _Look | None) -> str:
        # The group keeps its own place: the entries after "0-0" are the
        # pending ones of this consumer, from the first.
        return "0-0"

    def _join_group(self) -> None:
        """Create the group at ``start`` unless it exists (then it keeps its place)."""
        start = self.source.start
        try:
            self.client.xgroup_create(
                self.stream, self.group, id="0" if start == "0" else start, mkstream=True
            )
        except _redis().exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _covered(self) -> None:
        """Acknowledge this consumer's pending entries up to the resumed snapshot's position.

        The run that read them died before it could: the snapshot this run
        resumes from covers them, so they are never read again.
        """
        source = self.source
        while True:
            found = self.client.xpending_range(
                self.stream, self.group, "-", self.last, 1000, source.consumer
            )
            if not found:
                return
            self.client.xack(self.stream, self.group, *[p["message_id"] for p in found])

    def _read(self) -> list[Any]:
        """Read a batch as the group's consumer: pending entries first, then new ones."""
        source = self.source
        if self.again:
            found = self.client.xreadgroup(
                self.group,
                source.consumer,
                {self.stream: self.last},
                count=source.batch_size,
            )
            entries = found[0][1] if found else []
            if entries:
                # An entry deleted after its delivery comes without fields (None):
                # a `missing` dead letter, acknowledged as the others.
                return [(e, fields or None) for e, fields in entries]
            self.again = False
        found = self.client.xreadgroup(
            self.group, source.consumer, {self.stream: ">"}, count=source.batch_size
        )
        return list(found[0][1]) if found else []

    def _lost(self) -> None:
        # The group may have delivered entries whose answer was lost: they are
        # this consumer's pending ones, read first once back.
        self.again = True

    def _handed(self, ids: list[str]) -> None:
        self.unacked.extend(ids)
        if not self.recovering:
            # No snapshots to wait for: acknowledged as handed on.
            self.committed(self.position())

    def committed(self, position: Any) -> None:
        """Acknowledge to the group the entries a resumed run would not read again."""
        last = position[0] if isinstance(position, tuple) and position else None
        if not isinstance(last, str):
            return
        done: list[str] = []
        while self.unacked and not _after(self.unacked[0], last):
            done.append(self.unacked.popleft())
        try:
            for start in range(0, len(done), 1000):
                self.client.xack(self.stream, self.group, *done[start : start + 1000])
        except self.lost_errors:
            # Not acknowledged now: the next time (these stay pending meanwhile).
            self.unacked.extendleft(reversed(done))


class RedisStreamSource(BrokerSource[R]):
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
        group: str | None = None,
        consumer: str = "evflow",
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
        for what, value in (("group", group), ("consumer", consumer)):
            if value is not None and (not isinstance(value, str) or not value):
                msg = f"sources.redis: {what} must be a non-empty name; got {value!r}."
                raise ValueError(msg)
        self.start = start
        self.field = field
        self.group = group
        self.consumer = consumer

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Connect and read ``partition`` from the start, or from its position."""
        if self.group is not None:
            return _GroupReader(self, partition, step, resume)
        return _StreamReader(self, partition, step, resume)


class _StreamWriter(ExactWriter):
    """Append records to a stream; with a ``tag``, the one exactly-once writer.

    Exactly once: every entry carries the tag in field ``writer``; batches go
    in one ``MULTI``/``EXEC`` (all or none), and the position is the id of the
    last entry written. When it is not sure what a batch left behind (after a
    resume, or a connection lost in the middle of a batch), it first deletes
    its own entries after the position, then writes again.
    """

    def __init__(
        self,
        sink: RedisStreamSink,
        tag: str | None = None,
        resume: Any = None,
        since: float | None = None,
    ) -> None:
        # A position: the last entry id written, and (since it was kept) a floor
        # of the stream's count of entries ever added, with this writer's.
        last, floor = resume if isinstance(resume, tuple) and len(resume) == 2 else (resume, None)
        if (
            last is not None and not (isinstance(last, str) and re.fullmatch(r"\d+-\d+", last))
        ) or (floor is not None and type(floor) is not int):
            msg = f"a Redis stream position must be an entry id such as '1-0'; got {resume!r}"
            raise ValueError(msg)
        self.sink = sink
        self.tag = tag
        what = f"write to stream {sink.stream!r}"
        self.client = _connect(sink.url, sink.connect_timeout, what)
        _check_stream(self.client, sink.stream, what)
        self.last = last
        self.unsure = last is not None
        self.added: int | None = None
        if tag is not None:
            self.added = _look(self.client, sink.stream).added
            if floor is not None and self.added is not None and self.added < floor:
                self.client.close()
                msg = (
                    f"redis sink: stream {sink.stream!r} at {masked(sink.url)} has had "
                    f"{self.added:,} entries added, fewer than the {floor:,} it had when the "
                    f"recovery store's last snapshot was taken: it was deleted or made again "
                    f"after that run, and resuming would lose the records of the earlier run. "
                    f"Hint: put the stream back as it was, or start over: remove the recovery "
                    f"store and the output stream and run again."
                )
                raise OutputChangedError(msg)
        if tag is not None and resume is None and since is not None:
            # No snapshot yet, but the store may have had executions killed
            # before their first one: their entries (made since the store) go.
            self.last = f"{max(0, int(since) - 1) * 1000}-0"
            self.unsure = True
        elif tag is not None and resume is None:
            found = self.client.xrevrange(sink.stream, count=1)
            self.last = _id(found[0][0]) if found else "0-0"

    def position(self) -> Any:
        return self.last if self.added is None else (self.last, self.added)

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
        messages, unwritable = messages_of(items)
        deadline = time.monotonic() + sink.retry_for
        delay = 0.05
        while True:
            try:
                if self.unsure:
                    self._undo()
                    self.unsure = False
                pipe = self.client.pipeline(transaction=self.tag is not None)
                for _, data, event_id in messages:
                    fields = {sink.field: data}
                    if event_id is not None:
                        fields["id"] = event_id.encode()
                    if self.tag is not None:
                        fields["writer"] = self.tag.encode()
                    pipe.xadd(sink.stream, fields, maxlen=sink.maxlen, approximate=True)
                written = pipe.execute() if messages else []
                if written:
                    self.last = _id(written[-1])
                    if self.added is not None:
                        self.added += len(written)
                return unwritable
            except Exception as exc:  # noqa: BLE001 - retried, then dead letters
                # What reached the server is not known: look before writing again.
                self.unsure = self.tag is not None
                if time.monotonic() + delay > deadline:
                    error = BrokerUnreachable(
                        f"stream {sink.stream!r} at {masked(sink.url)}: "
                        f"{type(exc).__name__}: {without_secret(str(exc), sink.url)}"
                    )
                    return unwritable + [(item, error) for item, _, _ in messages]
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
            url,
            stream,
            connect_timeout=connect_timeout,
            retry_for=retry_for,
            name=name,
            maxlen=maxlen,
        )
        self.stream = stream
        self.maxlen = maxlen
        self.field = field

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Connect this worker's writer (at least once)."""
        return _StreamWriter(self)

    def open_exact(self, ctx: RunContext, step: str, resume: Any | None) -> ExactWriter:
        """Connect the one writer of a run with recovery (exactly once)."""
        return _StreamWriter(self, writer_tag(ctx, step), resume, ctx.store_created)
