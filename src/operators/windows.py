"""Window kinds and clocks for keyed aggregation.

Windows are per key and aligned to the Unix epoch (UTC), or to an instant of
your choosing (``align_to=``, for days in a time zone):

- `tumbling` windows of a fixed size, side by side;
- `sliding` windows of a fixed size starting every ``every``;
- `session` windows that close after a gap with no events for the key;
- `count` windows of ``n`` events per key (in arrival order).

A clock says what time an event has: `event_time` reads it from the event (a
field or a function) and tolerates events out of order by ``max_delay``;
`processing_time` uses the wall clock when the event reaches the window.

>>> tumbling(seconds=60).assign(125.0)
[(120.0, 180.0)]
>>> sliding(seconds=60, every=timedelta(seconds=30)).assign(125.0)
[(90.0, 150.0), (120.0, 180.0)]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from operators._stage import check_arity

__all__ = [
    "Clock",
    "Count",
    "EventTime",
    "ProcessingTime",
    "Session",
    "Sliding",
    "Tumbling",
    "Window",
    "count",
    "event_time",
    "processing_time",
    "session",
    "sliding",
    "to_datetime",
    "to_seconds",
    "tumbling",
]


def seconds_of(value: Any) -> float | None:
    """Return the seconds of a timedelta or a number of seconds; None for anything else.

    >>> seconds_of(timedelta(minutes=1)), seconds_of(5), seconds_of("5s"), seconds_of(True)
    (60.0, 5.0, None, None)
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def to_seconds(
    value: timedelta | float | None = None,
    *,
    what: str,
    milliseconds: float = 0,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
) -> float:
    """Turn a timedelta, a number of seconds or keyword parts into seconds.

    >>> to_seconds(timedelta(minutes=1), what="size"), to_seconds(what="size", seconds=90)
    (60.0, 90.0)
    """
    if value is None:
        parts = {
            "milliseconds": milliseconds,
            "seconds": seconds,
            "minutes": minutes,
            "hours": hours,
            "days": days,
        }
        for name, part in parts.items():
            if isinstance(part, bool) or not isinstance(part, int | float):
                msg = (
                    f"{what}: {name}= must be a number; got {type(part).__name__} {part!r}. "
                    f"Hint: {_example(what)}."
                )
                raise TypeError(msg)
        given = milliseconds / 1000 + seconds + minutes * 60 + hours * 3600 + days * 86400
        try:
            total = timedelta(
                milliseconds=milliseconds, seconds=seconds, minutes=minutes, hours=hours, days=days
            ).total_seconds()
        except (ValueError, OverflowError):  # a nan or infinite part, or beyond any timedelta
            total = given
        if total <= 0 < given:  # less than the microsecond a timedelta counts in
            msg = f"{what} must be at least a microsecond; got {given:g} seconds."
            raise ValueError(msg)
    elif isinstance(value, timedelta):
        total = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        total = float(value)
    else:
        msg = f"{what} must be a timedelta or a number of seconds; got {value!r}."
        raise TypeError(msg)
    if not math.isfinite(total):
        msg = f"{what} must be a finite number of seconds; got {total:g}. Hint: {_example(what)}."
        raise ValueError(msg)
    if total <= 0:
        msg = f"{what} must be positive; got {total:g} seconds. Hint: {_example(what)}."
        raise ValueError(msg)
    return total


def _example(what: str) -> str:
    """Say how to give the duration ``what`` names.

    >>> _example("tumbling window size")
    'for example tumbling(seconds=60) or tumbling(timedelta(minutes=1))'
    >>> _example("sliding window size")
    'for example sliding(seconds=60, every=15)'
    >>> _example("process 'p' ttl")
    'for example ttl=60 (seconds) or ttl=timedelta(minutes=1)'
    """
    kind, _, rest = what.partition(" ")
    if kind == "sliding":
        return "for example sliding(seconds=60, every=15)"
    if rest in ("window size", "gap"):
        return f"for example {kind}(seconds=60) or {kind}(timedelta(minutes=1))"
    name = what.rsplit(" ", 1)[-1]
    return f"for example {name}=60 (seconds) or {name}=timedelta(minutes=1)"


#: The longest window (1000 years): its start and end must be dates a datetime can hold.
LONGEST = 1000 * 365.25 * 86400


def span(seconds: float, what: str) -> float:
    """Return a window's size (or gap) ``seconds``; refuse one too long for dates.

    >>> span(60.0, "tumbling window size")
    60.0
    >>> span(1e11, "sliding window size")
    Traceback (most recent call last):
    ...
    ValueError: sliding window size must be at most 1000 years; got 1e+11 seconds ...
    """
    if seconds > LONGEST:
        msg = (
            f"{what} must be at most 1000 years; got {seconds:g} seconds (about "
            f"{seconds / 31_557_600:,.0f} years): a window's start and end are dates, and "
            f"dates end with the year 9999. Hint: {_example(what)}."
        )
        raise ValueError(msg)
    return seconds


def to_datetime(seconds: float) -> datetime:
    """Turn seconds since the epoch into an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, timezone.utc)


class Window:
    """A kind of window; see the module's functions."""

    kind = "window"

    def last_end(self, ts: float) -> float:
        """Return the end of the last window that can hold an event at ``ts``.

        An event is late as a whole when the watermark has reached this: every
        window of its own has closed.
        """
        return math.inf

    def reach(self) -> tuple[float, float]:
        """How far before and after an event's time its windows' bounds can lie (seconds).

        >>> Tumbling(60).reach(), Session(30).reach(), Count(5).reach()
        ((60, 60), (0.0, 30), (0.0, 0.0))
        """
        return (0.0, 0.0)

    def fits(self, ts: float) -> bool:
        """Whether the bounds of every window of an event at ``ts`` are dates.

        >>> first = datetime(1, 1, 1, tzinfo=timezone.utc).timestamp()
        >>> Tumbling(3600).fits(first + 1800), Sliding(7200, 3600).fits(first + 1800)
        (True, False)
        """
        return _FIRST <= ts < _END

    @property
    def label(self) -> str:
        """A short, stable description used in step names."""
        raise NotImplementedError


#: Window bounds are computed in whole microseconds (the resolution of an
#: event's datetime), never with float ``%`` on epoch seconds.
_US = 1_000_000
#: The epoch seconds a datetime holds: from the first instant of year 1 to
#: (not including) the first of year 10000.
_FIRST = datetime(1, 1, 1, tzinfo=timezone.utc).timestamp()
_END = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp() + 1.0


def micros(seconds: float) -> int:
    """Return ``seconds`` as whole microseconds.

    >>> micros(0.01), micros(1767225600.01)
    (10000, 1767225600010000)
    """
    return round(seconds * _US)


def whole_micros(seconds: float, what: str) -> int:
    """Return ``seconds`` as whole microseconds; refuse a size that is not a whole number.

    >>> whole_micros(0.0005, "size")
    500
    """
    us = micros(seconds)
    if us <= 0 or abs(seconds * _US - us) > 1e-3:
        msg = (
            f"{what} must be a whole number of microseconds (the resolution of event "
            f"times); got {seconds!r} s. Hint: tumbling(milliseconds=10)."
        )
        raise ValueError(msg)
    return us


def _offset_micros(offset: float, period_us: int, what: str) -> int:
    """Return a window offset in whole microseconds; it must lie in ``[0, period)``."""
    if not isinstance(offset, int | float) or isinstance(offset, bool) or not math.isfinite(offset):
        msg = f"a window's offset must be a finite number of seconds; got {offset!r}."
        raise ValueError(msg)
    us = micros(offset)
    if not 0 <= us < period_us:
        msg = (
            f"a window's offset must be at least 0 and less than its {what} "
            f"({period_us / _US:g}s); got {offset:g}s. Hint: give align_to= to "
            f"tumbling() or sliding(), which works the offset out."
        )
        raise ValueError(msg)
    return us


def _aligned(align_to: datetime | float | None, period_us: int, kind: str) -> float:
    """Return the offset, in seconds, that makes windows start at ``align_to``.

    >>> _aligned(datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=9))), 86400 * _US, "t")
    54000.0
    >>> _aligned(None, 60 * _US, "t"), _aligned(90, 60 * _US, "t")
    (0.0, 30.0)
    """
    if align_to is None:
        return 0.0
    if isinstance(align_to, datetime):
        if align_to.tzinfo is None or align_to.utcoffset() is None:
            msg = (
                f"{kind}(align_to=...) needs an aware datetime (its instant is where a window "
                f"starts); got the naive {align_to!r}. Hint: align_to=datetime(2024, 1, 1, "
                f"tzinfo=ZoneInfo('Asia/Tokyo'))."
            )
            raise ValueError(msg)
        t = (align_to - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    elif isinstance(align_to, int | float) and not isinstance(align_to, bool):
        if not math.isfinite(align_to):
            msg = f"{kind}(align_to=...) must be finite; got {align_to!r}."
            raise ValueError(msg)
        t = micros(align_to)
    else:
        msg = (
            f"{kind}(align_to=...) takes an aware datetime or epoch seconds; got "
            f"{type(align_to).__name__} {align_to!r}."
        )
        raise TypeError(msg)
    return (t % period_us) / _US


class _Sized(Window):
    """Windows of a fixed size, aligned to the epoch: tumbling and sliding."""

    size: float

    def assign(self, ts: float) -> list[tuple[float, float]]:
        """Return every window that holds ``ts``, earliest first."""
        raise NotImplementedError

    def reach(self) -> tuple[float, float]:
        """Reach one size before and after the event (its windows' starts and ends)."""
        return (self.size, self.size)

    def fits(self, ts: float) -> bool:
        """Whether every window of the event starts and ends at dates."""
        if not _FIRST <= ts < _END:
            return False
        spans = self.assign(ts)
        return spans[0][0] >= _FIRST and spans[-1][1] < _END


@dataclass(frozen=True)
class Tumbling(_Sized):
    """Fixed-size windows side by side: ``[k*size, (k+1)*size)``.

    >>> w = Tumbling(0.01)
    >>> w.assign(1767225600.01), w.assign(1767225600.1)
    ([(1767225600.01, 1767225600.02)], [(1767225600.1, 1767225600.11)])
    """

    size: float
    #: Where the windows start: ``offset + k * size`` seconds (0 <= offset < size).
    offset: float = 0.0
    _us: int = field(init=False, repr=False, compare=False)
    _off: int = field(init=False, repr=False, compare=False)
    kind = "tumbling"

    def __post_init__(self) -> None:
        """Keep the size and offset in microseconds (whole numbers of them)."""
        object.__setattr__(self, "_us", whole_micros(self.size, "tumbling window size"))
        object.__setattr__(self, "_off", _offset_micros(self.offset, self._us, "size"))

    @property
    def size_us(self) -> int:
        """The size in whole microseconds."""
        return self._us

    @property
    def offset_us(self) -> int:
        """Where the windows start, past a whole number of sizes, in microseconds."""
        return self._off

    def __repr__(self) -> str:
        """Show the size, and the offset where there is one (the shape kept in snapshots)."""
        at = f", offset={self.offset!r}" if self._off else ""
        return f"Tumbling(size={self.size!r}{at})"

    def start_of(self, ts: float) -> float:
        """Return the start of the window that holds ``ts``."""
        t = round(ts * _US)
        return (t - (t - self._off) % self._us) / _US

    def end_of(self, start: float) -> float:
        """Return the end of the window that starts at ``start``."""
        return (round(start * _US) + self._us) / _US

    def assign(self, ts: float) -> list[tuple[float, float]]:
        """Return the one window that holds ``ts``."""
        start = self.start_of(ts)
        return [(start, self.end_of(start))]

    def last_end(self, ts: float) -> float:
        """Return the end of the window that holds ``ts``."""
        return self.end_of(self.start_of(ts))

    @property
    def label(self) -> str:
        """Name it by kind and size (and where the windows start, unless at the epoch's grid)."""
        at = f"_at_{self.offset:g}s" if self._off else ""
        return f"tumbling_{self.size:g}s{at}".replace(".", "_")


@dataclass(frozen=True)
class Sliding(_Sized):
    """Windows of ``size`` seconds starting every ``every`` seconds (overlapping)."""

    size: float
    every: float
    #: Where the windows start: ``offset + k * every`` seconds (0 <= offset < every).
    offset: float = 0.0
    _us: int = field(init=False, repr=False, compare=False)
    _every_us: int = field(init=False, repr=False, compare=False)
    _off: int = field(init=False, repr=False, compare=False)
    kind = "sliding"

    def __post_init__(self) -> None:
        """Keep the size, step and offset in microseconds."""
        object.__setattr__(self, "_us", whole_micros(self.size, "sliding window size"))
        object.__setattr__(self, "_every_us", whole_micros(self.every, "sliding window every"))
        object.__setattr__(self, "_off", _offset_micros(self.offset, self._every_us, "every"))

    @property
    def offset_us(self) -> int:
        """Where the windows start, past a whole number of steps, in microseconds."""
        return self._off

    def __repr__(self) -> str:
        """Show the size and step, and the offset where there is one (kept in snapshots)."""
        at = f", offset={self.offset!r}" if self._off else ""
        return f"Sliding(size={self.size!r}, every={self.every!r}{at})"

    @property
    def size_us(self) -> int:
        """The size in whole microseconds."""
        return self._us

    @property
    def every_us(self) -> int:
        """The step in whole microseconds."""
        return self._every_us

    def assign(self, ts: float) -> list[tuple[float, float]]:
        """Return every window that holds ``ts``, earliest first.

        >>> Sliding(0.01, 0.005).assign(1767225600.012)
        [(1767225600.005, 1767225600.015), (1767225600.01, 1767225600.02)]
        """
        t = round(ts * _US)
        size = self._us
        every = self._every_us
        start = t - (t - self._off) % every
        windows = []
        while start > t - size:
            windows.append((start / _US, (start + size) / _US))
            start -= every
        windows.reverse()
        return windows

    def last_end(self, ts: float) -> float:
        """Return the end of the latest window that holds ``ts``.

        >>> Sliding(10, 5).last_end(12.0)
        20.0
        """
        t = round(ts * _US)
        return (t - (t - self._off) % self._every_us + self._us) / _US

    @property
    def label(self) -> str:
        """Name it by kind, size and step (and where the windows start, if off the epoch's grid)."""
        at = f"_at_{self.offset:g}s" if self._off else ""
        return f"sliding_{self.size:g}s_every_{self.every:g}s{at}".replace(".", "_")


@dataclass(frozen=True)
class Session(Window):
    """A key's session lasts until ``gap`` seconds pass with no event for it.

    An event at ``ts`` opens ``[ts, ts + gap)``; sessions that overlap merge.
    Two events exactly ``gap`` apart do not share a session (windows are
    half-open, ``[start, end)``, like every other window here).
    """

    gap: float
    kind = "session"

    def last_end(self, ts: float) -> float:
        """Return the end of the session an event at ``ts`` opens on its own."""
        return ts + self.gap

    def reach(self) -> tuple[float, float]:
        """Reach no earlier than the event, and one gap after it (a session's end)."""
        return (0.0, self.gap)

    def fits(self, ts: float) -> bool:
        """Whether the session the event opens on its own ends at a date."""
        return ts >= _FIRST and ts + self.gap < _END

    @property
    def label(self) -> str:
        """Name it by kind and gap."""
        return f"session_{self.gap:g}s".replace(".", "_")


@dataclass(frozen=True)
class Count(Window):
    """Every ``n`` events of a key (in arrival order) form a window."""

    n: int
    kind = "count"

    @property
    def label(self) -> str:
        """Name it by kind and size."""
        return f"count_{self.n}"


def tumbling(
    size: timedelta | float | None = None,
    *,
    milliseconds: float = 0,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
    align_to: datetime | float | None = None,
) -> Tumbling:
    """Tumbling windows: ``tumbling(seconds=60)`` or ``tumbling(timedelta(minutes=1))``.

    Windows start on the epoch's grid (``k * size`` seconds, UTC) unless
    ``align_to`` (an aware datetime, or epoch seconds) names an instant where
    one starts: ``tumbling(days=1, align_to=datetime(2024, 1, 1, tzinfo=tokyo))``
    gives days from midnight in Tokyo. The offset is fixed: a day window does
    not follow a change of daylight saving time.

    >>> from datetime import timedelta, timezone
    >>> tokyo = timezone(timedelta(hours=9))
    >>> day = tumbling(days=1, align_to=datetime(2024, 1, 1, tzinfo=tokyo))
    >>> start, end = day.assign(1704100000.0)[0]
    >>> print(to_datetime(start).astimezone(tokyo), "to", to_datetime(end).astimezone(tokyo))
    2024-01-01 00:00:00+09:00 to 2024-01-02 00:00:00+09:00
    """
    what = "tumbling window size"
    length = to_seconds(
        size,
        what=what,
        milliseconds=milliseconds,
        seconds=seconds,
        minutes=minutes,
        hours=hours,
        days=days,
    )
    length = span(length, what)
    return Tumbling(length, _aligned(align_to, whole_micros(length, what), "tumbling"))


def sliding(
    size: timedelta | float | None = None,
    every: timedelta | float | None = None,
    *,
    milliseconds: float = 0,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    align_to: datetime | float | None = None,
) -> Sliding:
    """Sliding windows of ``size`` (or keyword parts) starting every ``every``.

    ``every`` must not exceed the size, and the size must be a whole multiple of it.
    Windows start on the epoch's grid (``k * every`` seconds, UTC) unless
    ``align_to`` (an aware datetime, or epoch seconds) names an instant where
    one starts, as for `tumbling`.

    >>> sliding(seconds=60, every=15).size
    60.0
    """
    length = to_seconds(
        size,
        what="sliding window size",
        milliseconds=milliseconds,
        seconds=seconds,
        minutes=minutes,
        hours=hours,
    )
    span(length, "sliding window size")
    step = to_seconds(every, what="sliding window every")
    if step > length:
        msg = (
            f"sliding window: every ({step:g}s) is longer than the size ({length:g}s), "
            f"which would leave gaps no window covers. Hint: use every <= size, or "
            f"tumbling() when they are equal."
        )
        raise ValueError(msg)
    whole_micros(length, "sliding window size")
    whole_micros(step, "sliding window every")
    ratio = length / step
    if abs(ratio - round(ratio)) > 1e-9:
        msg = (
            f"sliding window: the size ({length:g}s) must be a whole multiple of every "
            f"({step:g}s), so that each window is whole slices of it. Hint: "
            + " or ".join(
                f"sliding(seconds={n * step:g}, every={step:g})"
                for n in (math.floor(ratio), math.ceil(ratio))
                if n > 1
            )
            + "."
        )
        raise ValueError(msg)
    every_us = whole_micros(step, "sliding window every")
    return Sliding(length, step, _aligned(align_to, every_us, "sliding"))


def session(
    gap: timedelta | float | None = None,
    *,
    milliseconds: float = 0,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
) -> Session:
    """Session windows that close after ``gap`` with no event for the key."""
    what = "session gap"
    length = to_seconds(
        gap, what=what, milliseconds=milliseconds, seconds=seconds, minutes=minutes, hours=hours
    )
    return Session(span(length, what))


def count(n: int) -> Count:
    """Count windows of ``n`` events per key; a bounded input's end closes the last one."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        msg = f"count window: n must be a positive int; got {n!r}. Hint: count(100)."
        raise ValueError(msg)
    return Count(n)


class Clock:
    """How an event's time is found; see `event_time` and `processing_time`."""


@dataclass(frozen=True)
class EventTime(Clock):
    """Event time read from a field or computed by a function.

    A source partition's watermark is the largest event time it has read minus
    ``max_delay``; the smallest watermark over all partitions closes windows.
    An event behind its own partition's watermark as it stands just before it
    is late (so lateness depends neither on the batch size nor on how fast
    other partitions are read). A partition whose source has had nothing to
    read for ``idle_timeout`` seconds stops holding the others back, and when
    all are idle the watermark follows the wall clock from the newest event
    time read, so windows close when input stops. An event more than
    ``max_future`` seconds ahead of the wall clock is a ``future`` dead letter.
    """

    field: str | None
    fn: Callable[[Any], Any] | None
    max_delay: float
    idle_timeout: float
    #: Seconds an event time may lie ahead of the wall clock when it is read;
    #: beyond, the event is a ``future`` dead letter and moves no watermark.
    max_future: float | None = None


@dataclass(frozen=True)
class ProcessingTime(Clock):
    """The wall clock when an event reaches the window; nothing is ever late."""


def event_time(
    field: str | Callable[[Any], Any] = "time",
    *,
    max_delay: timedelta | float = 0,
    idle_timeout: timedelta | float = timedelta(seconds=5),
    max_future: timedelta | float | None = timedelta(days=365),
) -> EventTime:
    """Event time from ``field`` (default ``time``) or a function of the event.

    An event dated more than ``max_future`` ahead of the wall clock when it is
    read (one year by default; ``None``: no bound) is a dead letter of kind
    ``future``: it would move its partition's watermark that far ahead and
    make every later event of the partition late.

    >>> event_time("ts", max_delay=timedelta(seconds=5)).max_delay
    5.0
    >>> event_time(max_future=timedelta(hours=1)).max_future
    3600.0
    """
    delay = seconds_of(max_delay)
    if delay is None:
        msg = (
            f"event_time: max_delay must be a timedelta or a number of seconds; got "
            f"{max_delay!r}. Hint: max_delay=5 or max_delay=timedelta(seconds=5)."
        )
        raise TypeError(msg)
    if not math.isfinite(delay) or delay < 0:
        msg = (
            f"event_time: max_delay must be a finite number of seconds, zero or more; got "
            f"{max_delay!r}."
        )
        raise ValueError(msg)
    idle = to_seconds(idle_timeout, what="event_time idle_timeout")
    ahead = None if max_future is None else to_seconds(max_future, what="event_time max_future")
    if isinstance(field, str):
        return EventTime(field, None, delay, idle, ahead)
    if callable(field):
        hint = "event_time(lambda e: e.ts)."
        check_arity(field, 1, "event_time", "function", "the event", hint)
        return EventTime(None, field, delay, idle, ahead)
    msg = (
        f"event_time needs a field name or a function of the event; got {field!r}. "
        f"Hint: event_time('ts') or event_time(lambda e: e.ts)."
    )
    raise TypeError(msg)


def processing_time() -> ProcessingTime:
    """Use the wall clock at the window."""
    return ProcessingTime()
