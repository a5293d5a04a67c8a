"""NATS JetStream: a resumable stream source and a de-duplicating publisher.

The NATS client is asyncio-based: its event loop runs on a thread of its own
(one per process, started when first needed), and readers and writers hand
it coroutines, so a worker never runs or blocks an event loop.

`JetStreamSource` reads each of its streams from a sequence number: a pull
consumer starting after the last sequence read fetches a batch at a time
(waiting at most ``poll`` seconds, so the worker is not held), and the last
stream sequence read is kept in evflow's snapshots (an exact resume). Bounded
mode (``until="end"``) stops at the stream's last sequence when the partition
was first opened; live mode tails it. A lost connection is retried with
backoff for ``retry_for`` seconds (the consumer is made again from the last
sequence read); a server unreachable at the start, or a stream that does not
exist, is an error within ``connect_timeout``.

`JetStreamSink` publishes each record (its JSON) with the ``Nats-Msg-Id``
header set from the subject and its event id (``out.clicks c7``), the
publishes of a batch concurrently, each acknowledged by the stream: within
the stream's duplicate window, JetStream drops a record published again to
its subject; the same record written to two subjects of one stream is stored
on each. In a run with recovery one publisher (`_ExactPublisher`) takes every
record and does not publish again what its killed executions published after
the snapshot, whenever the run resumes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Coroutine
from datetime import datetime, timezone
from typing import Any, TypeVar

from operators._brokers import (
    BrokerSink,
    BrokerSource,
    BrokerUnreachable,
    PollingReader,
    masked,
    messages_of,
    missing,
    writer_tag,
)
from operators._event import Schema
from operators._sinks import ExactSink, ExactWriter, OutputChangedError, RunContext, Writer
from operators._sources import DEFAULT_BATCH, R, Reader
from operators._stage import Chunk, ResumeError, Unreadable

__all__ = ["JetStreamSink", "JetStreamSource"]

T = TypeVar("T")
_LOCK = threading.Lock()
#: This process's loop and the process it belongs to: a forked cluster member
#: inherits the object but not the thread that runs it.
_LOOP: tuple[asyncio.AbstractEventLoop, int] | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """Return this process's NATS event loop, running on a daemon thread of its own."""
    global _LOOP
    with _LOCK:
        if _LOOP is None or _LOOP[1] != os.getpid() or _LOOP[0].is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="evflow-nats", daemon=True).start()
            _LOOP = (loop, os.getpid())
        return _LOOP[0]


def _run(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run ``coro`` on the NATS loop; past ``timeout`` it is cancelled, not left running."""
    future = asyncio.run_coroutine_threadsafe(coro, _loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise


def _nats() -> Any:
    try:
        import nats
    except ImportError:  # pragma: no cover - the message is the point
        msg = "evflow's NATS connectors need the nats client: pip install 'evflow[nats]'."
        raise ImportError(msg) from None
    return nats


def _connect(url: str, timeout: float, what: str) -> Any:
    nats = _nats()

    async def quiet(exc: Exception) -> None:
        """Leave the client's errors to the reader's retries (they say what failed)."""

    async def connect() -> Any:
        return await nats.connect(
            url,
            connect_timeout=timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=quiet,
        )

    try:
        return _run(connect(), timeout + 2)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is reported alike
        msg = (
            f"{what}: the NATS server at {masked(url)} cannot be reached "
            f"({type(exc).__name__}) within {timeout:g} s. Hint: check that it runs with "
            f"JetStream (-js) and that the URL, port and credentials are right."
        )
        raise BrokerUnreachable(msg) from None


def _close(nc: Any) -> None:
    """Close a connection; one that already went is closed too."""
    with contextlib.suppress(Exception):
        _run(nc.close(), 5)


class _StreamReader(PollingReader):
    def __init__(self, source: JetStreamSource[Any], stream: str, step: str, resume: Any) -> None:
        super().__init__(source.url, step, stream, source.poll, source.retry_for, "NATS")
        self.source = source
        what = f"read step {step!r} (stream {stream!r})"
        self.nc = _connect(source.url, source.connect_timeout, what)
        self.js = self.nc.jetstream()
        self.sub: Any = None
        try:
            info = _run(self.js.stream_info(stream), source.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - reported with the stream named
            self.close()
            msg = (
                f"{what}: JetStream has no stream {stream!r} at {masked(source.url)} "
                f"({type(exc).__name__}: {exc}). Hint: create it first (nats stream add), "
                f"with the subjects you publish to."
            )
            raise BrokerUnreachable(msg) from None
        #: When the stream was made: one made again numbers its messages from 1 again.
        self.made = None if info.created is None else info.created.isoformat()
        #: Whether this reader goes on from a snapshot: a gap before its first message is a loss.
        self.resumed = resume is not None
        if resume is not None:
            self.last, self.stop, self.offset, *made = resume
            if made and None not in (made[0], self.made) and made[0] != self.made:
                self.close()
                msg = (
                    f"step {step!r}: stream {stream!r} was made at {made[0]} when the recovery "
                    f"store was written, and again at {self.made} since: its messages are "
                    f"numbered from 1 again, and a resume after sequence {self.last} would "
                    f"skip the new stream's first ones; read the new stream with a new store"
                )
                raise ResumeError(msg)
            return
        last_seq = int(info.state.last_seq)
        start = source.start
        self.last = last_seq if start == "end" else int(start) - 1
        self.stop = last_seq if source.until == "end" else None

    def _gone_to_stop(self) -> bool:
        """Whether no message is left after the last read, up to where a bounded read stops.

        Asked when a fetch found nothing: the messages up to ``stop`` were
        there when the read began, so none left means they were removed.
        """
        if self.last >= self.stop:
            return False
        errors = _nats().js.errors
        try:
            found = _run(
                self.js.get_msg(self.stream, seq=self.last + 1, subject=">", next=True),
                self.source.connect_timeout,
            )
        except errors.NotFoundError:
            return True
        except Exception:  # noqa: BLE001 - asked again after the next empty fetch
            return False
        return bool(int(found.seq) > self.stop)

    def _missing(self, first: int, last: int) -> Unreadable:
        """Stand for messages ``first`` to ``last``, removed from the stream before they were read.

        The stream's limits (or a delete) removed them while this reader was
        behind, or between a snapshot and its resume: a ``missing`` dead
        letter says so, not a silent gap.
        """
        n = last - first + 1
        return missing(
            {"stream": self.stream, "first": first, "last": last, "count": n},
            f"stream {self.stream!r} no longer holds message(s) {first} to {last} ({n}): its "
            f"limits (max_msgs, max_bytes, max_age) or a delete removed them before they "
            f"were read",
        )

    def position(self) -> Any:
        """Return the broker position and when the stream was made."""
        return (*super().position(), self.made)

    def _subscribe(self) -> None:
        api = _nats().js.api
        name = f"evflow_{uuid.uuid4().hex[:12]}"
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.last + 1,
            ack_policy=api.AckPolicy.ALL,
            inactive_threshold=30.0,
        )
        timeout = self.source.connect_timeout
        _run(self.js.add_consumer(self.stream, config), timeout)
        self.sub = _run(self.js.pull_subscribe_bind(durable=name, stream=self.stream), timeout)

    def next_chunk(self) -> Chunk | None:
        source = self.source
        if self.stop is not None and self.last >= self.stop:
            raise StopIteration
        if self.waiting():
            return None
        errors = _nats().errors
        try:
            if self.sub is None:
                self._subscribe()
            msgs = _run(self.sub.fetch(source.batch_size, timeout=source.poll), source.poll + 30)
        except errors.TimeoutError:
            if self.stop is not None and self._gone_to_stop():
                # A bounded read whose last messages were removed: they are missing.
                gap = self._missing(self.last + 1, self.stop)
                named = [f"{self.last + 1}-{self.stop}"]
                chunk = Chunk(
                    [gap], self.step, self.stream, self.offset, keys=named, unreadable=True
                )
                self.last = self.stop
                self.offset += 1
                return chunk
            self.nothing()
            return None
        except Exception as exc:  # noqa: BLE001 - a lost connection: retried with backoff
            self.sub = None
            self.lost(exc)
            return None
        self.read_well()
        records: list[Any] = []
        keys: list[str] = []
        times: list[float | None] = []  # when the stream stored each message
        for msg in msgs:
            seq = int(msg.metadata.sequence.stream)
            if seq <= self.last or (self.stop is not None and seq > self.stop):
                continue
            if seq > self.last + 1 and (self.offset or records or self.resumed):
                records.append(self._missing(self.last + 1, seq - 1))
                keys.append(f"{self.last + 1}-{seq - 1}")
                times.append(None)
            records.append(msg.data)
            keys.append(str(seq))
            times.append(msg.metadata.timestamp.timestamp())
            self.last = seq
        if msgs:
            _run(msgs[-1].ack(), 30)  # one ack covers the batch (ack policy "all")
        if not records:
            return None
        flawed = any(r.__class__ is Unreadable for r in records)
        chunk = Chunk(
            records, self.step, self.stream, self.offset, keys=keys, unreadable=flawed, times=times
        )
        self.offset += len(records)
        return chunk

    def close(self) -> None:
        _close(self.nc)


class JetStreamSource(BrokerSource[R]):
    """Messages of JetStream streams, a partition per stream."""

    kind = "nats"

    def __init__(
        self,
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
    ) -> None:
        """Read ``streams`` at ``url`` (see `pipelines.sources.nats`)."""
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
        if start != "end" and not (isinstance(start, int) and start >= 1):
            msg = (
                f"sources.nats: start must be a stream sequence (1: the beginning) or "
                f"'end'; got {start!r}."
            )
            raise ValueError(msg)
        self.start = start

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Connect and read ``partition`` from its start, or its position."""
        return _StreamReader(self, partition, step, resume)


class AlreadyStored(ValueError):
    """JetStream dropped a record: its stream held a message of the record's id."""


class _Publisher(Writer):
    def __init__(self, sink: JetStreamSink, ctx: RunContext) -> None:
        self.sink = sink
        what = f"publish to {sink.subject!r}"
        self.nc = _connect(sink.url, sink.connect_timeout, what)
        self.js = self.nc.jetstream()
        try:
            stream = _run(self.js.find_stream_name_by_subject(sink.subject), sink.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - reported with the subject named
            self.close()
            found = (
                "no stream's subjects match it"
                if type(exc).__name__ == "NotFoundError"
                else (f"{type(exc).__name__}: {exc}")
            )
            msg = (
                f"{what}: JetStream at {masked(sink.url)} would store none of it ({found}), "
                f"so every publish would fail. Hint: add a stream whose subjects match it "
                f"(nats stream add NAME --subjects {sink.subject!r})."
            )
            raise BrokerUnreachable(msg) from None

        def look() -> tuple[int, float]:
            info = _run(self.js.stream_info(stream), sink.connect_timeout)
            return info.state.last_seq, info.config.duplicate_window or 0.0

        self.stream = stream
        # The stream's last message before this run (read once for this process's
        # writers) and how long it remembers ids: a duplicate's sequence says
        # whether a record of this run or one before it holds the id.
        self.before, self.window = ctx.shared(("nats", sink.url, stream), look)
        #: A run with a recovery store publishes again what its killed executions
        #: published after their last snapshot: found, those are not lost.
        self.resumed = ctx.store_created is not None

    def _unsent(
        self, messages: list[tuple[Any, bytes, str | None]]
    ) -> list[tuple[Any, bytes, str | None]]:
        """Return the ``messages`` to publish (all of them: see `_ExactPublisher`)."""
        return messages

    def _headers(self, message_id: str) -> dict[str, str]:
        """Return the headers of the message of id ``message_id``."""
        return {"Nats-Msg-Id": message_id}

    def _stored(self, seq: int) -> None:
        """Hear that the stream stored a message of this writer at sequence ``seq``."""

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        sink = self.sink
        messages, unwritable = messages_of(items)
        messages = self._unsent(messages)
        prefix = f"{sink.subject} "  # a subject holds no space: read back one way only
        headers_of = self._headers

        async def publish(indices: list[int]) -> list[Any]:
            sends = []
            for i in indices:
                _, data, event_id = messages[i]
                # Per subject: a record written to two subjects of one stream is two messages.
                headers = None if event_id is None else headers_of(f"{prefix}{event_id}")
                sends.append(self.js.publish(sink.subject, data, headers=headers, timeout=10))
            return await asyncio.gather(*sends, return_exceptions=True)

        deadline = time.monotonic() + sink.retry_for
        delay = 0.05
        pending = list(range(len(messages)))
        doubles: list[tuple[int, Any, bool]] = []  # (message, its ack, published before)
        tried: set[int] = set()
        while True:
            try:
                results = _run(publish(pending), sink.retry_for + 15)
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: retried
                results = [exc] * len(pending)
            failed = []
            for i, result in zip(pending, results, strict=True):
                if isinstance(result, Exception):
                    failed.append(i)
                elif result.duplicate:
                    doubles.append((i, result, i in tried))
                else:
                    self._stored(int(result.seq))
            tried.update(pending)
            if not failed:
                return unwritable + self._dropped(messages, doubles)
            if time.monotonic() + delay > deadline:
                return (
                    unwritable
                    + self._dropped(messages, doubles)
                    + [
                        (
                            messages[i][0],
                            BrokerUnreachable(f"publish to {sink.subject!r}: {results[k]!r}"),
                        )
                        for k, i in enumerate(pending)
                        if i in failed
                    ]
                )
            # Publishing again is safe: the ids make JetStream drop what it has.
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            pending = failed

    def _dropped(
        self, messages: list[tuple[Any, bytes, str | None]], doubles: list[tuple[int, Any, bool]]
    ) -> list[tuple[Any, Exception]]:
        """Say which records JetStream dropped as duplicates without holding them.

        A duplicate is no loss when the stream holds that very record: published
        again after a failed publish (which may have reached it), by a run before
        this one on the same input, or by a resumed run (what its killed
        executions published; those are not looked at: a record made anew may
        differ, and is still the same). Anything else is a dead letter: another
        record of the id holds its place, or the record was written twice in
        this run and counted twice.
        """
        looked = [d for d in doubles if d[1].seq > self.before or not self.resumed]
        if not looked:
            return []

        async def held() -> list[Any]:
            gets = [self.js.get_msg(ack.stream, ack.seq) for _, ack, _ in looked]
            return await asyncio.gather(*gets, return_exceptions=True)

        try:
            found = _run(held(), self.sink.retry_for + 15)
        except Exception as exc:  # noqa: BLE001 - nothing to compare with: taken as the same
            found = [exc] * len(looked)
        subject = self.sink.subject
        out: list[tuple[Any, Exception]] = []
        for (i, ack, again), msg in zip(looked, found, strict=True):
            record, data, event_id = messages[i]
            same = isinstance(msg, Exception) or msg.data == data  # gone: nothing to tell by
            where = f"(stream {ack.stream!r}, sequence {ack.seq})"
            if ack.seq <= self.before:
                if same:
                    continue  # a run before this one published it
                error = (
                    f"JetStream stored nothing: subject {subject!r} already holds another "
                    f"record with id {event_id!r} {where}, published before this run within "
                    f"the stream's duplicate window ({self.window:g} s), and the stream keeps "
                    f"one message per id. Hint: wait for the window to pass, publish to "
                    f"another subject, or give the records ids of their own."
                )
            elif again and same:
                continue  # its own publish that failed to answer, then published again
            elif same:
                error = (
                    f"JetStream stored it once: the same record (id {event_id!r}) was "
                    f"published to {subject!r} earlier in this run {where}, and this copy "
                    f"was dropped. Hint: write a record to a subject once (two branches "
                    f"into one subject write it twice), or give each copy an id of its own."
                )
            else:
                error = (
                    f"JetStream stored nothing: another record of this run with id "
                    f"{event_id!r} was published to {subject!r} before it {where}, and the "
                    f"stream keeps one message per id. Hint: give each record an id of its "
                    f"own (a copy made with model_copy keeps the id: pass update={{'id': ...}})."
                )
            out.append((record, AlreadyStored(error)))
        return out

    def close(self) -> None:
        _close(self.nc)


#: The header that names the one publisher of a run with recovery (see `_ExactPublisher`).
WRITER_HEADER = "Evflow-Writer"


class _ExactPublisher(_Publisher, ExactWriter):
    """The one publisher of a run with recovery: each record stored once, however late the resume.

    Each message of a record with an id carries this writer's tag (the
    pipeline, the step and when the recovery store was made) in a header.
    Its position is the stream sequence of its last message, when the
    stream was made, and the ids of a killed execution's messages not met
    again yet. A resumed run first reads the headers of the subject's
    messages after that sequence: the records that its killed executions
    published after the snapshot, which the run hands it again, are not
    published again. (JetStream's duplicate window would drop them only
    while it lasts, two minutes by default: a run may be resumed hours
    later.) Records without an id cannot be told apart so: they are
    published again (at least once); nor can records whose id differs on
    each run (made with a random one): a killed execution's ids of those are
    never met again, and stay in the position.
    """

    def __init__(self, sink: JetStreamSink, ctx: RunContext, step: str, resume: Any) -> None:
        super().__init__(sink, ctx)
        made = ctx.store_created
        self.tag = writer_tag(ctx, step)
        try:
            info = _run(self.js.stream_info(self.stream), sink.connect_timeout)
            #: When the stream was made: one made again numbers its messages from 1 again.
            self.made = None if info.created is None else info.created.isoformat()
            #: The message ids this writer's killed executions published after the
            #: snapshot, not met again yet: not published again.
            self.after: set[str] = set()
            if resume is None:
                self.last = int(info.state.last_seq)
                if made is not None:  # executions killed before their first snapshot
                    self.after = self._published(None, made)
                return
            last, was_made, *held = resume
            if None not in (was_made, self.made) and was_made != self.made:
                msg = (
                    f"nats sink: the stream {self.stream!r} that subject {sink.subject!r} is "
                    f"stored in was made at {was_made} when the recovery store was written, "
                    f"and again at {self.made} since: the records the earlier run published "
                    f"are gone. Hint: start over: remove the recovery store and run again."
                )
                raise OutputChangedError(msg)
            self.last = int(last)
            self.after = self._published(self.last + 1, None).union(*held)
        except BaseException:
            self.close()
            raise

    def _published(self, first: int | None, since: float | None) -> set[str]:
        """Return the ids of this writer's messages from sequence ``first`` (or time ``since``)."""
        api = _nats().js.api
        if first is not None:
            where: dict[str, Any] = {
                "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": first,
            }
        else:
            # (From a while before: the server's clock may be behind this host's. Only this
            # store's writer tags its messages so.)
            start = datetime.fromtimestamp(max(0.0, (since or 0.0) - 300.0), timezone.utc)
            where = {
                "deliver_policy": api.DeliverPolicy.BY_START_TIME,
                "opt_start_time": start.isoformat().replace("+00:00", "Z"),
            }
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            filter_subject=self.sink.subject,
            headers_only=True,
            inactive_threshold=30.0,
            **where,
        )
        timeout_error = _nats().errors.TimeoutError
        tag = self.tag

        async def scan() -> set[str]:
            info = await self.js.stream_info(self.stream)
            if int(info.state.last_seq) < (first or 1):
                return set()
            sub = await self.js.pull_subscribe(self.sink.subject, stream=self.stream, config=config)
            found: set[str] = set()
            try:
                while True:
                    try:
                        msgs = await sub.fetch(1000, timeout=1.0)
                    except timeout_error:
                        return found  # nothing more (none of the subject after ``first``)
                    for msg in msgs:
                        headers = msg.headers or {}
                        if headers.get(WRITER_HEADER) == tag and "Nats-Msg-Id" in headers:
                            found.add(headers["Nats-Msg-Id"])
                    if not msgs or msgs[-1].metadata.num_pending == 0:
                        return found
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

        try:
            return _run(scan(), self.sink.retry_for + 60)
        except Exception as exc:  # noqa: BLE001 - reported with what it was for
            msg = (
                f"nats sink: a run with recovery reads back the ids of what it published to "
                f"{self.sink.subject!r} after its snapshot, with a consumer on stream "
                f"{self.stream!r}, and that failed: {type(exc).__name__}: {exc}. Hint: the "
                f"account needs to make consumers on that stream as well as publish"
            )
            raise BrokerUnreachable(msg) from None

    def _unsent(
        self, messages: list[tuple[Any, bytes, str | None]]
    ) -> list[tuple[Any, bytes, str | None]]:
        """Leave out the records a killed execution of this run published after the snapshot."""
        after = self.after
        if not after:
            return messages
        prefix = f"{self.sink.subject} "
        left = []
        for message in messages:
            key = None if message[2] is None else f"{prefix}{message[2]}"
            if key in after:
                after.discard(key)
            else:
                left.append(message)
        return left

    def _headers(self, message_id: str) -> dict[str, str]:
        return {"Nats-Msg-Id": message_id, WRITER_HEADER: self.tag}

    def _stored(self, seq: int) -> None:
        if seq > self.last:
            self.last = seq

    def position(self) -> Any:
        """Return its last message's sequence, the stream's making and the ids still to meet.

        The ids are a killed execution's messages not met again yet: a later
        resume takes them with those it reads back after the sequence.
        """
        if self.after:
            return (self.last, self.made, sorted(self.after))
        return (self.last, self.made)


class JetStreamSink(BrokerSink, ExactSink):
    """Publish records to a JetStream subject (see `pipelines.sinks.nats`)."""

    kind = "nats"
    noun = "subject"

    def __init__(
        self,
        url: str,
        subject: str,
        *,
        connect_timeout: float = 5.0,
        retry_for: float = 30.0,
        name: str | None = None,
    ) -> None:
        """Publish to ``subject`` at ``url``."""
        super().__init__(
            url, subject, connect_timeout=connect_timeout, retry_for=retry_for, name=name
        )
        self.subject = subject

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Connect this worker's publisher."""
        return _Publisher(self, ctx)

    def open_exact(self, ctx: RunContext, step: str, resume: Any | None) -> ExactWriter:
        """Connect the one publisher of a run with recovery (exactly once)."""
        return _ExactPublisher(self, ctx, step, resume)
