"""What the broker connectors share: masked URLs, the unreachable error, a polling reader."""

from __future__ import annotations

import copy
import json
import math
import re
import time
from datetime import datetime, timezone
from typing import Any

from operators._event import Schema, own_id
from operators._sinks import RunContext, Sink, to_json
from operators._sources import R, Reader, Source, slug
from operators._stage import Unreadable

__all__ = [
    "BrokerSink",
    "BrokerSource",
    "BrokerUnreachable",
    "PollingReader",
    "masked",
    "message_of",
    "without_secret",
]

_SECRET = re.compile(r"(?<=://)([^:/@]*):([^@]*)@")


def masked(url: str) -> str:
    """Hide the password of a connection URL.

    >>> masked("redis://:s3cret@localhost:6379/0"), masked("nats://user:pw@h:1")
    ('redis://:****@localhost:6379/0', 'nats://user:****@h:1')
    """
    return _SECRET.sub(lambda m: f"{m.group(1)}:****@", url)


def without_secret(text: str, url: str) -> str:
    """Hide ``url``'s password wherever ``text`` (an error message) repeats it."""
    found = _SECRET.search(url)
    if found and found.group(2):
        text = text.replace(found.group(2), "****")
    return text


def message_of(item: Any) -> tuple[bytes, str | None]:
    r"""Return what a broker sink sends for a record: its bytes, and its id if it has one.

    Text and bytes go as they are, events and other values as JSON. Text
    decoded from bytes with ``surrogateescape`` goes as those bytes.

    >>> message_of({"id": "e1", "n": 2}), message_of("plain")
    ((b'{"id": "e1", "n": 2}', 'e1'), (b'plain', None))
    >>> message_of(b"caf\xe9".decode("utf-8", "surrogateescape")), message_of("\ud800")
    ((b'caf\xe9', None), (b'\xed\xa0\x80', None))
    """
    if isinstance(item, bytes | bytearray):
        data = bytes(item)
    elif isinstance(item, str):
        try:
            data = item.encode()
        except UnicodeEncodeError:  # a lone surrogate: the bytes it stood for, if it was one
            try:
                data = item.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                data = item.encode("utf-8", "surrogatepass")
    else:
        data = to_json(item).encode()
    return data, own_id(item)


def messages_of(
    items: list[Any],
) -> tuple[list[tuple[Any, bytes, str | None]], list[tuple[Any, Exception]]]:
    """Make each record's message: ``(record, body, id)``; and the records that have none.

    A record no JSON can hold (one that holds itself) is returned with its
    error, to become a dead letter at once, not retried with the batch.

    >>> loop: list[Any] = []
    >>> loop.append(loop)
    >>> messages, failed = messages_of([{"id": "e1"}, loop])
    >>> [body for _, body, _ in messages], [type(exc).__name__ for _, exc in failed]
    ([b'{"id": "e1"}'], ['ValueError'])
    """
    messages: list[tuple[Any, bytes, str | None]] = []
    failed: list[tuple[Any, Exception]] = []
    for item in items:
        try:
            data, event_id = message_of(item)
        except Exception as exc:  # noqa: BLE001 - the record's dead letter says it
            failed.append((item, exc))
        else:
            messages.append((item, data, event_id))
    return messages, failed


def writer_tag(ctx: RunContext, step: str) -> str:
    """Name the one exactly-once writer of write step ``step`` in a shared stream.

    The pipeline, the step and when the recovery store was made
    (``clicks.redis_out@1767225600``): a resumed run tells what its killed
    executions wrote from what runs of other stores wrote.
    """
    made = ctx.store_created
    return f"{ctx.pipeline}.{step}" + ("" if made is None else f"@{int(made)}")


def missing(what: dict[str, Any], message: str) -> Unreadable:
    """Stand for messages a broker removed before they were read: a ``missing`` dead letter.

    ``what`` (the stream, where the gap is, how many) is its payload.
    """
    return Unreadable(json.dumps(what), LookupError(message), kind="missing")


#: The URL schemes each broker's client takes, and an example URL for hints.
_SCHEMES = {
    "redis": (("redis", "rediss", "unix"), "redis://localhost:6379/0"),
    "nats": (("nats", "tls", "ws", "wss"), "nats://localhost:4222"),
}


def check_settings(where: str, kind: str, url: Any, **numbers: Any) -> None:
    """Refuse a URL the broker's client cannot take and settings that cannot work.

    ``numbers``: ``batch_size`` (a whole number, at least 1), ``poll`` and
    ``retry_for`` (seconds, 0 or more), ``connect_timeout`` (seconds, more
    than 0), ``maxlen`` (None or a whole number, at least 1); each finite.

    >>> check_settings("sources.redis", "redis", "localhost:6379")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: sources.redis: url must start with redis://, rediss:// or unix://; got ...
    >>> check_settings("sinks.nats", "nats", "nats://a:4222", connect_timeout=0)
    Traceback (most recent call last):
    ...
    ValueError: sinks.nats: connect_timeout must be a number of seconds more than 0; got 0.
    """
    schemes, example = _SCHEMES[kind]
    scheme = url.partition("://")[0] if isinstance(url, str) and "://" in url else None
    bare = kind == "nats" and isinstance(url, str) and bool(url) and scheme is None
    if not bare and scheme not in schemes:
        listed = ", ".join(f"{s}://" for s in schemes[:-1]) + f" or {schemes[-1]}://"
        msg = (
            f"{where}: url must start with {listed}; got {_masked_any(url)}. "
            f"Hint: {where}({example!r}, ...)."
        )
        raise ValueError(msg)
    for name, value in numbers.items():
        whole = name in ("batch_size", "maxlen")
        if value is None and name == "maxlen":
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if whole:
            good = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            need = "a whole number of at least 1"
        elif name == "connect_timeout":
            good = number and math.isfinite(value) and value > 0
            need = "a number of seconds more than 0"
        else:
            good = number and math.isfinite(value) and value >= 0
            need = "a number of seconds, 0 or more"
        if not good:
            msg = f"{where}: {name} must be {need}; got {value!r}."
            raise ValueError(msg)


def _masked_any(url: Any) -> str:
    """Show ``url`` for a message, its password hidden."""
    return repr(masked(url)) if isinstance(url, str) else repr(url)


class BrokerUnreachable(ConnectionError):
    """A broker could not be reached (at the start, or for longer than allowed)."""


class PollingReader(Reader):
    """A partition of a broker's stream, read a batch at a time without blocking its worker.

    Its position is ``(last, stop, offset)``: the last entry read, where a
    bounded read stops (None: live), and how many records were handed on.
    When nothing is there it waits ``poll`` seconds before asking again; a
    lost connection is retried with growing waits (up to 2 s) and, after
    ``retry_for`` seconds of failures, is a `BrokerUnreachable` error.
    """

    read_ahead = False  # what is read goes on at once: the next batch may wait

    def __init__(
        self, url: str, step: str, stream: str, poll: float, retry_for: float, broker: str
    ) -> None:
        """Read ``stream`` for read step ``step``."""
        self.url = url
        self.step = step
        self.stream = stream
        self.poll = poll
        self.retry_for = retry_for
        self.broker = broker
        self.offset = 0
        self.last: Any = None
        self.stop: Any = None
        self.wait_until = 0.0
        self.failing_since: float | None = None

    def waiting(self) -> bool:
        """Whether the reader is still waiting before its next read."""
        return time.monotonic() < self.wait_until

    def read_well(self) -> None:
        """Say that a read worked (the connection is back, if it was lost)."""
        self.failing_since = None

    def nothing(self) -> None:
        """Say that nothing was there: ask again after ``poll`` seconds."""
        self.failing_since = None
        self.wait_until = time.monotonic() + self.poll

    def lost(self, exc: BaseException) -> None:
        """Retry a lost connection with backoff; give up after ``retry_for`` seconds."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        waited = now - self.failing_since
        if waited > self.retry_for:
            msg = (
                f"read step {self.step!r}: the {self.broker} server at {masked(self.url)} has "
                f"failed for {waited:.0f} s (stream {self.stream!r}, last read {self.last}): "
                f"{type(exc).__name__}: {without_secret(str(exc), self.url)}"
            )
            raise BrokerUnreachable(msg) from None
        self.wait_until = now + min(2.0, 0.05 * 2 ** min(int(waited * 4), 6))

    def next_awake(self) -> datetime | None:
        """When to ask again after a wait (None: at once)."""
        if self.wait_until <= time.monotonic():
            return None
        return datetime.fromtimestamp(
            time.time() + (self.wait_until - time.monotonic()), timezone.utc
        )

    def position(self) -> Any:
        """Return the last entry read, where a bounded read stops, how many were handed on."""
        return (self.last, self.stop, self.offset)


class BrokerSource(Source[R]):
    """The settings every broker source shares: a partition per stream, bounded or live."""

    #: The broker's name in step names and messages ("redis", "nats").
    kind = "broker"

    def __init__(
        self,
        url: str,
        streams: str | list[str],
        *,
        until: str | None,
        schema: Schema | None,
        batch_size: int,
        poll: float,
        connect_timeout: float,
        retry_for: float,
        name: str | None,
    ) -> None:
        """Check and keep the settings."""
        check_settings(
            f"sources.{self.kind}",
            self.kind,
            url,
            batch_size=batch_size,
            poll=poll,
            connect_timeout=connect_timeout,
            retry_for=retry_for,
        )
        names = [streams] if isinstance(streams, str) else list(streams)
        if not names or not all(isinstance(s, str) and s for s in names):
            msg = f"sources.{self.kind}: streams must be stream names; got {streams!r}."
            raise ValueError(msg)
        if len(set(names)) != len(names):
            msg = f"sources.{self.kind}: a stream is named twice in {names!r}."
            raise ValueError(msg)
        if until not in ("end", None):
            msg = (
                f"sources.{self.kind}: until must be 'end' (bounded) or None (live); got {until!r}."
            )
            raise ValueError(msg)
        self.url = url
        self.streams = names
        self.until = until
        self.schema = schema
        self.batch_size = batch_size
        self.poll = poll
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self.name = name

    @property
    def label(self) -> str:
        """Name the read step after the streams (never the URL)."""
        return self.name or f"{self.kind}_" + slug("_".join(self.streams))[:40]

    def partitions(self) -> list[str]:
        """One partition per stream."""
        return list(self.streams)

    def held_now(self) -> BrokerSource[R]:
        """Return this source, read up to the end the streams have now (not live)."""
        if self.until is not None:
            return self
        now = copy.copy(self)
        now.until = "end"
        return now


class BrokerSink(Sink):
    """The settings every broker sink shares: where it writes, timeouts, a name."""

    #: The broker's name in step names and messages ("redis", "nats").
    kind = "broker"
    #: What the sink writes to ("stream", "subject").
    noun = "stream"

    def __init__(
        self,
        url: str,
        target: str,
        *,
        connect_timeout: float,
        retry_for: float,
        name: str | None,
        **more: Any,
    ) -> None:
        """Check and keep the settings (``more``: a sink's own, checked alike: `check_settings`)."""
        check_settings(
            f"sinks.{self.kind}",
            self.kind,
            url,
            connect_timeout=connect_timeout,
            retry_for=retry_for,
            **more,
        )
        if not isinstance(target, str) or not target:
            msg = f"sinks.{self.kind}: {self.noun} must be a {self.noun} name; got {target!r}."
            raise ValueError(msg)
        self.url = url
        self.target = target
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self.name = name

    @property
    def label(self) -> str:
        """Name the write step after what it writes to (never the URL)."""
        return self.name or f"{self.kind}_" + slug(self.target)[:40]
