"""Keying for stateful steps: key and time records, group them into buckets of keys.

`ClockOp` (in the upstream stage) turns events into ``(key, ts, event)``;
`Bucketize` groups a packet's records by key bucket, tagged with the source
partition's progress; after the stateful step, `SplitOp` sends its results,
late events and dead letters on.
"""

from __future__ import annotations

import math
import operator
import pickle
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, NoReturn, Protocol

from pydantic import AwareDatetime, BaseModel
from pydantic_core import TzInfo

from operators._deadletter import DeadLetter, ErrorKind, payload_text
from operators._event import field_reader, may_set_fields
from operators._ops import check_key
from operators._policy import ErrorPolicy
from operators._stage import (
    COUNTER_FIELDS,
    Counters,
    Node,
    Packet,
    ResumeError,
    StageOp,
    _each_made,
    _fan_out,
    _Run,
    describe_function,
    kept_made,
)
from operators.windows import _END, _FIRST, Clock, EventTime


class Combining(Protocol):
    """What `Bucketize` asks of the pre-aggregation (`operators._windowing.Combiner`)."""

    def add_chunk(
        self,
        records: list[tuple[str, float, Any]],
        partition: str,
        latest: float,
        wins: dict[tuple[str, float], tuple[list[Any], list[str]]],
        set_aside: Callable[[tuple[str, float, Any], float], None],
    ) -> tuple[list[Any], float]:
        """Aggregate a chunk's events into ``wins``; return those to send as they are.

        And the partition's newest event time after it; those behind go to ``set_aside``.
        """

    def partials(
        self, wins: dict[tuple[str, float], tuple[list[Any], list[str]]]
    ) -> list[tuple[str, float, float, list[Any], list[str]]]:
        """Return the partial windows of ``wins``."""


__all__ = [
    "BUCKETS",
    "BUCKET_KEYS",
    "BUCKET_LAYOUT",
    "Bucketize",
    "ClockOp",
    "Crossing",
    "Marked",
    "Sent",
    "SplitOp",
    "bucket_count",
    "check_layout",
    "check_shape",
    "event_seconds",
    "held_in",
    "told",
    "unpicklable",
]

#: The state keys of the key buckets. bytewax sends each state key to worker
#: ``hash(key) % workers``; bucket i's name was found by trying names against
#: the engine so that its hash is i modulo 1680. With any worker count that
#: divides 1680 (1 to 8, 10, 12, 14, 15, 16, 20, 21, 24, 28, 30, ...) bucket i
#: goes to worker ``i % workers``, so every worker holds as many buckets as any
#: other, give or take one (named "0" to "31", 16 workers held 0 to 6 each).
BUCKET_KEYS: tuple[str, ...] = (
    "407", "505", "5832", "762", "1525", "2659", "2035", "2500", "1947", "104", "841",
    "5875", "1004", "1264", "471", "722", "330", "588", "1816", "172", "3775", "5922",
    "1731", "20", "195", "42", "37", "2326", "2693", "5680", "930", "2968",
)  # fmt: skip
BUCKETS = len(BUCKET_KEYS)


def bucket_count(workers: int) -> int:
    """Return how many key buckets a run on ``workers`` workers in all needs without a store.

    One per worker where the bucket names spread one to a worker (a count
    that divides 1680, up to `BUCKETS`): each keyed step then handles a
    batch's keys of a worker in one call, and meets its events in the order
    they came, not bucket by bucket. A run with a recovery store keeps
    `BUCKETS`, so that it can resume on any number of workers.

    >>> bucket_count(1), bucket_count(4), bucket_count(9), bucket_count(64)
    (1, 4, 32, 32)
    """
    return workers if workers <= BUCKETS and 1680 % workers == 0 else BUCKETS


#: Written into the snapshot of every bucket: a snapshot without it was keyed
#: by other bucket names, and resuming from it would split each key's state.
BUCKET_LAYOUT = "buckets-1680-32"


def check_layout(step: str, resume: dict[str, Any] | None) -> None:
    """Refuse a bucket snapshot written with other bucket names.

    >>> check_layout("w", {"layout": BUCKET_LAYOUT})
    >>> check_layout("w", {"wins": {}})
    Traceback (most recent call last):
    ...
    operators.ResumeError: step 'w': its snapshot in the recovery store ...
    """
    if resume is not None and resume.get("layout") != BUCKET_LAYOUT:
        msg = (
            f"step {step!r}: its snapshot in the recovery store was written by an earlier "
            f"evflow that grouped keys into other buckets; resuming from it would split "
            f"each key's state in two. Hint: finish the run with the evflow that started "
            f"it, or remove the store to start afresh."
        )
        raise ResumeError(msg)


def held_in(state: Any) -> Counter[str]:
    """Count what a step's snapshot holds that a run without the step would drop.

    A keyed step's bucket holds open windows, held records, key states and
    timers; any other step's snapshot (a source's or an exactly-once sink's)
    is its position in one partition of its input or output.

    >>> held_in({"layout": "b", "wins": {("k", 0.0): [1]}, "heap": [(10.0, "k", 0.0)]})
    Counter({'open window(s)': 1})
    >>> held_in({"layout": "b", "shape": "running aggregates of n=count()", "wins": {"k": [1]}})
    Counter({'running key(s)': 1})
    >>> held_in({"layout": "b", "states": {"k": 1}, "timers": {"k": {"t": 1}}, "held": 2})
    Counter({'held record(s)': 2, 'key state(s)': 1, 'timer(s)': 1})
    >>> held_in({"layout": "b", "wins": {}, "panes": {}}) or held_in(None) or "nothing"
    'nothing'
    >>> held_in({"part0": 41})
    Counter({'position(s) in its partitions': 1})
    """
    said: Counter[str] = Counter()
    if state is None:
        return said
    if not isinstance(state, dict) or "layout" not in state:
        said["position(s) in its partitions"] = 1
        return said
    running = str(state.get("shape", "")).startswith("running")
    said["running key(s)" if running else "open window(s)"] = len(state.get("wins") or ())
    said["key state(s)"] = len(state.get("states") or ())
    timers = state.get("timers") or {}
    if isinstance(timers, dict):
        said["timer(s)"] = sum(len(mine) for mine in timers.values())
    held = state.get("open", state.get("held"))
    if held is not None and not isinstance(held, int):
        held = len(held) + len(state.get("pending") or ())
    said["held record(s)"] = held or 0
    return +said


def told(held: Counter[str]) -> str:
    """Say what `held_in` counted.

    >>> told(held_in({"layout": "b", "states": {"k": 1}, "held": 2}))
    '1 key state(s), 2 held record(s)'
    """
    return ", ".join(f"{n} {what}" for what, n in held.items())


def check_shape(step: str, resume: dict[str, Any] | None, shape: str) -> None:
    """Refuse a bucket snapshot that a step of the same name but another kind of state made.

    ``shape`` says what the step's state is made of (`WindowSpec.shape`,
    `JoinSpec.shape`). A snapshot from before shapes were kept, or one that
    holds nothing, resumes whatever the step now is.

    >>> one = {"layout": BUCKET_LAYOUT, "shape": "a", "wins": {("k", 0.0): [1]}}
    >>> check_shape("w", one, "a"), check_shape("w", {**one, "wins": {}}, "b")
    (None, None)
    >>> check_shape("w", one, "b")
    Traceback (most recent call last):
    ...
    operators.ResumeError: step 'w': its snapshot in the recovery store holds a (1 ...
    """
    if resume is None:
        return
    was = resume.get("shape")
    if was is None or was == shape:
        return
    holds = held_in(resume)
    if not holds:
        return
    msg = (
        f"step {step!r}: its snapshot in the recovery store holds {was} ({told(holds)} in a key "
        f"bucket), and the step is now {shape}: resuming would read that state as what it "
        f"is not, or make windows (pairs) that miss what it held; resume with the step as "
        f"it was"
    )
    raise ResumeError(msg)


_IN, _OUT, _DEAD, _CREATED, _AGG, _OPEN = (
    COUNTER_FIELDS.index(f) for f in ("in", "out", "dead", "created", "aggregated", "open")
)
_NEVER = -math.inf
_DONE = math.inf


#: Time zones whose offset never changes: a subtraction within one of them is exact.
_FIXED_ZONES: tuple[type, ...] = (timezone, TzInfo)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class _Epochs:
    """The epoch written in the time zone last seen: seconds by one subtraction.

    ``value.timestamp()`` asks the zone for its offset (slow for pydantic's
    zones); within one fixed-offset zone, ``value - epoch`` needs no offset.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        #: ``(zone, the epoch in it)``, replaced whole (workers share it); no
        #: zone at first (not even None: a naive datetime is not in one).
        self.last: tuple[Any, datetime] = (object(), _EPOCH)

    def seconds(self, value: datetime) -> float:
        """Return an aware datetime's epoch seconds (as ``timestamp()`` does)."""
        zone = value.tzinfo
        seen, epoch = self.last
        if zone is not seen:
            if type(zone) not in _FIXED_ZONES:
                return value.timestamp()
            epoch = _EPOCH.astimezone(zone)
            self.last = (zone, epoch)
        return (value - epoch).total_seconds()


def _utc_text(ts: float) -> str:
    """Return epoch seconds ``ts`` as UTC text.

    >>> _utc_text(60.5)
    '1970-01-01T00:01:00+00:00'
    """
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def event_seconds(value: Any) -> float:
    """Turn an event time (aware datetime, epoch seconds, ISO 8601 text) into seconds.

    Text is what a JSON record read without a schema holds: it must say its
    offset (``Z`` or ``+02:00``), as a datetime must have a timezone.

    >>> from datetime import timezone
    >>> event_seconds(datetime(1970, 1, 1, 0, 1, tzinfo=timezone.utc))
    60.0
    >>> event_seconds("1970-01-01T00:01:00Z"), event_seconds("1970-01-01T01:01:00+01:00")
    (60.0, 60.0)
    """
    if value.__class__ is str:
        try:
            value = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] == "Z" else value)
        except ValueError:
            msg = (
                f"event time {value!r} is not an ISO 8601 date and time. Hint: "
                f"'2026-01-01T12:00:00Z', an aware datetime, or epoch seconds."
            )
            raise ValueError(msg) from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            msg = (
                f"event time {value.isoformat()} has no timezone; evflow needs aware "
                f"timestamps. Hint: declare the field as pydantic AwareDatetime (text: "
                f"end it with Z or an offset such as +02:00)."
            )
            raise ValueError(msg)
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    msg = (
        f"event time must be an aware datetime, epoch seconds or ISO 8601 text; "
        f"got {type(value).__name__} {value!r:.80}."
    )
    raise TypeError(msg)


def without_early(
    items: list[Any], keys: list[str] | None, run: _Run, index: int, step: str, message: str
) -> tuple[list[Any], list[str] | None]:
    """Dead-letter the early results among ``items`` at ``step`` (row ``index``) with ``message``.

    An early result is a window's value so far (``final=False``, an id with
    ``/early-``): one that reaches a later aggregate would be counted again
    with every early result and the final one.
    """
    early = [
        i
        for i, x in enumerate(items)
        if getattr(x, "final", True) is False and "/early-" in str(getattr(x, "id", ""))
    ]
    if not early:
        return items, keys
    row = run.table[index]
    row[_IN] += len(early)
    row[_DEAD] += len(early)
    for i in early:
        run.dead.append(
            DeadLetter.build(
                pipeline=run.pipeline,
                step=step,
                kind="validation",
                error_type="EarlyResult",
                message=message,
                payload=payload_text(items[i]),
                event_time=getattr(items[i], "time", None),
            )
        )
    dropped = set(early)
    kept = [x for i, x in enumerate(items) if i not in dropped]
    if run.made is not None:
        run.made = kept_made(items, kept, run.made)
    if keys is not None:
        keys = [k for i, k in enumerate(keys) if i not in dropped]
    return kept, keys


class EarlyGuard(Node):
    """Before a map whose records go on to an aggregate: early results are dead letters there.

    What the map makes of an early result is no early result any more (a new
    event, a tuple), so the aggregate after it could not tell it apart and
    would count each window's value again and again.
    """

    keeps_made = True

    def __init__(self, inner: StageOp, early_from: str, later: str) -> None:
        """Guard step ``inner``, which early results of ``early_from`` may reach."""
        self.inner = inner
        self.message = (
            f"an early result of {early_from!r} (final=False: its window's value so far) "
            f"reached {inner.kind} {inner.step!r}, whose records go on to aggregate {later!r}, "
            f"which would count what it makes of it again with every early result and the "
            f"final one. Hint: keep the final ones first, .filter(lambda r: r.final), before "
            f"{inner.step!r}."
        )

    def children(self) -> list[Node]:
        """Return the guarded step."""
        return [self.inner]

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Dead-letter the early results, and hand the rest to the guarded step."""
        kept, _ = without_early(items, None, run, self.inner.index, self.inner.step, self.message)
        if kept:
            self.inner.push(kept, run, out)


#: Not looked up yet (`ClockOp.refusals`).
_UNSEEN: Any = object()


class DefaultEventTime(ValueError):
    """An event made during the run whose time field took its default (see `ClockOp._stamped`)."""


def _default_time_message(step: str, field: str, cls: type[Any]) -> str:
    """Say why an event dated by its time field's default is refused, and what to do."""
    others = [
        name
        for name, info in cls.model_fields.items()
        if name != field and info.annotation in (datetime, AwareDatetime)
    ]
    hints = [
        f"pass {field}= where the event is made (in a step, the {field} of the event it comes "
        f"from; in a generate factory, one its index gives)"
    ]
    if others:
        hints.insert(0, f"read the time the class has with clock=windows.event_time({others[0]!r})")
    hints.insert(
        0,
        f"records read from text or dicts take it from their {field!r} key: name the key "
        f"they use as well, {field}: AwareDatetime = "
        f'Field(validation_alias=AliasChoices({field!r}, "timestamp"))',
    )
    hints.append("count by arrival with clock=windows.processing_time()")
    return (
        f"step {step!r} reads each event's time from its {field!r} field, and this "
        f"{cls.__name__} was made during the run without one: the field's default dated it "
        f"when it was made, so its windows would differ on a rerun, a resume or another "
        f"batch size. Hint: {'; '.join(hints)}."
    )


class ClockOp(StageOp):
    """Give each event its key and time: ``(key, ts, event)``."""

    kind = "aggregate"

    def __init__(
        self,
        step: str,
        index: int,
        key: Callable[[Any], str],
        clock: Clock | None,
        policy: ErrorPolicy,
        nexts: Sequence[Node] = (),
        *,
        kind: str = "aggregate",
        reach: tuple[float, float] = (0.0, 0.0),
        fits: Callable[[float], bool] | None = None,
        early_from: str | None = None,
    ) -> None:
        """Make the clock for keyed step ``step`` (an aggregate or a keyed dispatch).

        ``reach``: how far before and after an event's time the step's windows
        (or intervals) can lie, in seconds. An event closer than that to the
        ends of the dates a datetime holds is refused here, unless ``fits``
        says its windows are dates after all. ``early_from``: an aggregate before
        this one whose early results may come (through a filter or a map): each
        that comes is a dead letter, not counted again.
        """
        super().__init__(step, index, key, policy, nexts)
        self.early_from = early_from
        self.key = key
        self.kind = kind
        self.max_future = clock.max_future if isinstance(clock, EventTime) else None
        self.reach = reach
        self.fits = fits
        #: The event times the step can take: its windows and results are dates.
        self.earliest = _FIRST + reach[0]
        self.last = math.nextafter(_END - reach[1], -math.inf)
        #: Reads an event's time (None: processing time).
        self.read: Callable[[Any], Any] | None = None
        self.epochs = _Epochs()
        #: Where the clock reads an event's time: its function, or a field's name.
        self.clock_fn = clock.fn if isinstance(clock, EventTime) else None
        self.time_field = (clock.field or "time") if isinstance(clock, EventTime) else ""
        #: An attribute's reader, and the reader that takes a dict's key as well
        #: (`field_reader`): a clock on a field switches to it on the first dict.
        self.by_attribute: Callable[[Any], Any] | None = None
        self.by_key: Callable[[Any], Any] | None = None
        if isinstance(clock, EventTime):
            if clock.fn is None:
                self.by_attribute = operator.attrgetter(self.time_field)
                self.by_key = field_reader(self.time_field)
            self.read = clock.fn or self.by_attribute
            assert self.read is not None
            self.time_of: Callable[[Any], float] = self._timer_of(self.read)
        else:
            self.time_of = lambda e: time.time()
        #: Events dated since then whose time field took its default were dated by
        #: when the run made them (see `_stamped`); never for a clock's own function.
        self.since = time.time() if self.by_attribute is not None else math.inf
        #: Why an event of each class met without its time is refused (None: it is not).
        self.refusals: dict[type, str | None] = {}

    def _timer_of(self, read: Callable[[Any], Any]) -> Callable[[Any], float]:
        """Return the function that gives an event's time in seconds, read with ``read``."""
        seconds = self.epochs.seconds

        def time_of(event: Any) -> float:
            value = read(event)
            if value.__class__ is datetime and value.tzinfo is not None:
                return seconds(value)
            return event_seconds(value)

        return time_of

    def _by_key(self) -> Callable[[Any], Any]:
        """Read a dict's key as well from now on (`by_key`): return the new reader."""
        assert self.by_key is not None
        self.read = self.by_key
        self.time_of = self._timer_of(self.by_key)
        return self.by_key

    def call(self, item: Any) -> Any:
        """Key and time one event."""
        key = check_key(self.key(item), self.step, self.kind, self.function)
        ts = self.time_of(item)
        if ts >= self.since:
            self._stamped(item)
        return (key, ts, item)

    def _stamped(self, event: Any) -> None:
        """Refuse an event made during the run whose time field took its default.

        Such a time (``Event.time``'s default is the moment of making) says
        when the run parsed or made the event, not when it happened: its
        windows would differ on a rerun, a resume or another batch size, and a
        key like ``timestamp`` that the records carry instead would be left
        out without a word. Raises `DefaultEventTime`; returns for any other.
        """
        given = getattr(event, "__pydantic_fields_set__", None)
        field = self.time_field
        if given is None or field in given:
            return
        cls = type(event)
        refusal = self.refusals.get(cls, _UNSEEN)
        if refusal is _UNSEEN:
            refusal = self.refusals[cls] = self._refusal(cls)
        if refusal is not None:
            raise DefaultEventTime(refusal)

    def _refusal(self, cls: type[BaseModel]) -> str | None:
        """Say why an event of ``cls`` whose time is not in its fields set is refused, or None.

        None where the time need not be its default factory's: a fixed default
        dates the event alike on every run, and the class's own code may have
        set the time, unseen by pydantic.
        """
        info = cls.model_fields.get(self.time_field)
        if info is None or info.default_factory is None or may_set_fields(cls):
            return None
        return _default_time_message(self.step, self.time_field, cls)

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Key and time a list (not counted: the aggregate step counts)."""
        self.push_keyed(items, None, run, out)

    def push_keyed(
        self, items: list[Any], keys: list[str] | None, run: _Run, out: list[list[Any]]
    ) -> None:
        """Time a list whose keys the key_by step before has computed (or key it here).

        With processing time, the wall clock is read once for the whole list.
        """
        if self.early_from is not None:
            items, keys = self._without_early(items, keys, run)
        key_of = self.key
        time_of = self.time_of
        read = self.read
        epochs = self.epochs
        zone, epoch = epochs.last
        row = run.table[self.index]
        records: list[Any] = []
        append = records.append
        now = time.time()
        earliest = self.earliest
        since = self.since
        limit = self.last if self.max_future is None else min(now + self.max_future, self.last)
        it = iter(items) if keys is None else iter(zip(items, keys, strict=True))
        if read is not None and read is self.by_attribute and items and items[0].__class__ is dict:
            read = self._by_key()  # dicts: their key
            time_of = self.time_of
        made = run.made
        keyed = None  # the last event keyed: a failure after it is its time's
        while True:
            try:
                for entry in it:
                    if keys is None:
                        x = entry
                        key = key_of(x)
                        if key.__class__ is not str:
                            self.call(x)  # raises the key error, with its message
                        keyed = x
                    else:
                        x, key = entry
                        keyed = x
                    if read is None:
                        append((key, now, x))
                        continue
                    # `time_of`, inline for the usual case: a datetime in the
                    # zone of the one before.
                    value = read(x)
                    if value.__class__ is datetime and value.tzinfo is zone:
                        ts = (value - epoch).total_seconds()
                    else:
                        ts = time_of(x)
                        zone, epoch = epochs.last
                    if not earliest <= ts <= limit and self._refused(x, ts, now, run, row):
                        continue  # (nan too)
                    if ts >= since:
                        self._stamped(x)
                    append((key, ts, x))
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                row[_IN] += 1
                if keyed is x and read is self.by_attribute and x.__class__ is dict:
                    # A dict among events: from now on, read a dict's key as well.
                    read = self._by_key()
                    time_of = self.time_of
                    ok, value = self._timed(x, key, earliest, limit, now, run, row)
                elif keyed is x:
                    ok, value = self._untimed(x, exc, run, row)
                else:
                    ok, value = self.recover(x, exc, run, row)
                keyed = None
                if ok:
                    row[_IN] -= 1
                    append(value)
        if made is not None and len(records) != len(items):
            # The records kept are those keyed, in order: each holds its event.
            run.made = kept_made(items, [r[2] for r in records], made)
        _fan_out(self.nexts, records, run, out, row)

    def _without_early(
        self, items: list[Any], keys: list[str] | None, run: _Run
    ) -> tuple[list[Any], list[str] | None]:
        """Dead-letter the early results among ``items`` (with their keys).

        Kept, they would count each window's value again and again.
        """
        assert self.early_from is not None
        message = (
            f"an early result of {self.early_from!r} (final=False: its window's value so far) "
            f"reached aggregate {self.step!r}, which would count it again with every early "
            f"result and the final one. Hint: keep the final ones first, "
            f".filter(lambda r: r.final), before the steps that lead here."
        )
        return without_early(items, keys, run, self.index, self.step, message)

    def _timed(
        self,
        event: Any,
        key: str,
        earliest: float,
        limit: float,
        now: float,
        run: _Run,
        row: list[int],
    ) -> tuple[bool, Any]:
        """Time one keyed event as the loop of `push_keyed` does: ``(True, entry)``, or refused."""
        try:
            ts = self.time_of(event)
        except Exception as exc:  # noqa: BLE001 - handed to the policy
            return self._untimed(event, exc, run, row)
        if not earliest <= ts <= limit:
            row[_IN] -= 1  # `_refused` counts it, in and dead
            if self._refused(event, ts, now, run, row):
                return False, None
            row[_IN] += 1  # not refused: counted in as the caller counts it
        return True, (key, ts, event)

    def _untimed(self, event: Any, exc: Exception, run: _Run, row: list[int]) -> tuple[bool, Any]:
        """Apply the step's policy to an event whose time could not be read.

        Named as what it is: a record without the clock's field (a
        ``validation`` dead letter), a time that is no time (the same), or the
        clock's own function failing (a ``user_error`` of that function).
        """
        field = self.time_field
        if self.clock_fn is not None:
            return self.recover(
                event, exc, run, row, kind="user_error", function=describe_function(self.clock_fn)
            )
        message = error_type = None
        missing_key = isinstance(exc, KeyError) and event.__class__ is dict and field not in event
        if isinstance(exc, DefaultEventTime):
            message, error_type = str(exc), "DefaultEventTime"
        elif missing_key or (
            isinstance(exc, AttributeError) and exc.obj is event and exc.name == field
        ):
            if event.__class__ is dict:
                hint = (
                    f"give each record a {field!r} key, or read the time with "
                    f"clock=windows.event_time(lambda r: ...)"
                )
            else:
                hint = (
                    f"map records to events that have a {field!r} field before the step, "
                    f"read the time with clock=windows.event_time(lambda r: ...), or count "
                    f"on the wall clock with clock=windows.processing_time()"
                )
            what = "key" if event.__class__ is dict else "attribute"
            message = (
                f"step {self.step!r} reads each event's time from its {field!r} {what}, "
                f"and this {type(event).__name__} has none. Hint: {hint}."
            )
            error_type = "MissingEventTime"
        return self.recover(
            event,
            exc,
            run,
            row,
            kind="validation",
            function=None,
            message=message,
            error_type=error_type,
        )

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Unused: the clock overrides `push`."""
        raise NotImplementedError

    def _refused(self, event: Any, ts: float, now: float, run: _Run, row: list[int]) -> bool:
        """Dead-letter an event dated beyond ``max_future``, or out of the dates of its windows.

        It moves no watermark. False (nothing done) for an event near the ends
        of the dates whose windows are dates all the same.
        """
        future = self.max_future is not None and ts > now + self.max_future
        if not future and self.fits is not None and self.fits(ts):
            return False
        row[_IN] += 1
        row[_DEAD] += 1
        when = datetime.fromtimestamp(ts, timezone.utc) if _FIRST <= ts < _END else None
        shown = when.isoformat() if when else f"{ts:g} s"
        if future:
            kind: ErrorKind = "future"
            error_type = "FutureEvent"
            hint = "fix the event's time, or pass event_time(..., max_future=...) (None: no bound)"
            assert self.max_future is not None
            if ts / 1000 <= now + self.max_future and self.clock_fn is None:
                # A number a thousand times too large: epoch milliseconds, as JSON often has.
                hint = (
                    f"it reads as epoch milliseconds ({_utc_text(ts / 1000)}): read seconds "
                    f"with clock=windows.event_time(lambda r: r[{self.time_field!r}] / 1000) "
                    f"(an event's field: lambda e: e.{self.time_field} / 1000)"
                )
            message = (
                f"event time {shown} is {ts - now:,.0f} s ahead of the wall clock "
                f"({datetime.fromtimestamp(now, timezone.utc).isoformat(timespec='seconds')}), "
                f"beyond the clock's max_future ({self.max_future:g} s); it would move its "
                f"partition's watermark that far and make every later event late. Hint: {hint}."
            )
        else:
            kind, error_type = "validation", "EventTimeOutOfRange"
            before, after = self.reach
            reach = f"; the step's windows reach {before:g} s before it and {after:g} s after"
            message = (
                f"event time {shown} is out of the dates a window or result can have (years 1 "
                f"to 9999){reach if before or after else ''}. Hint: fix the event's time (a "
                f"placeholder date, or epoch milliseconds read as seconds?), or filter such "
                f"events out before step {self.step!r}."
            )
        run.dead.append(
            DeadLetter.build(
                pipeline=run.pipeline,
                step=self.step,
                kind=kind,
                error_type=error_type,
                message=message,
                payload=payload_text(event),
                event_time=when,
            )
        )
        return True


@dataclass
class Marked:
    """One bucket's share of a batch of one partition's chunks, with its progress.

    ``records`` are those of every chunk in order; ``cuts`` says where a
    chunk but the last ends and the partition's progress moved on: ``(end
    index in records, the partition's newest event time after that chunk)``;
    ``judges`` when a step on event time made them; ``behind`` holds the events already late
    by the order of the batch. ``latest`` and ``eof`` are the partition's progress
    after the last chunk. ``partials`` are windows already aggregated from
    ``combined`` of the events (before the key exchange):
    ``(key, start, end, accs, ids)``.
    """

    partition: str
    latest: float
    eof: bool
    records: list[tuple[str, float, Any]] = field(default_factory=list)
    #: Since when the partition has had nothing to read, if its source said so
    #: after the batch's last records.
    idle_since: float | None = None
    #: Records behind an earlier event of their partition in this batch, set
    #: aside before aggregating where they were read, each with the watermark
    #: it is behind (the bucket judges it window by window against that).
    behind: list[tuple[tuple[str, float, Any], float]] = field(default_factory=list)
    partials: list[tuple[str, float, float, list[Any], list[str]]] = field(default_factory=list)
    combined: int = 0
    cuts: list[tuple[int, float]] = field(default_factory=list)
    #: For a partition that is a bucket of a step on event time (its ``latest``
    #: is that step's watermark): ``(index in records, made_at)`` where the
    #: records that step made at another time start (see `Chunk.made`).
    judges: list[tuple[int, float | None]] = field(default_factory=list)
    #: On several processes: what checks that the share can cross to another
    #: one (`Crossing`); it stays behind when the share is pickled.
    crossing: Crossing | None = field(default=None, repr=False, compare=False)

    def __reduce__(self) -> tuple[Callable[[bytes], Marked], tuple[bytes]]:
        """Pickle the share as one piece of bytes, or stop the run saying which record cannot be."""
        state = dict(self.__dict__)
        crossing = state.pop("crossing")
        try:
            data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            if crossing is None:
                raise
            crossing.refuse([r[2] for r in self.records] + [b[0][2] for b in self.behind], exc)
        return _marked_from, (data,)

    def segments(self) -> list[tuple[list[tuple[str, float, Any]], float, float | None]]:
        """Return each run of records with the partition's newest event time after it.

        Each comes as ``(records, latest, made_at)``: the records are judged
        against the partition's watermark before them, or, where ``made_at``
        is not None (records a step on event time made, see `judges`),
        against that time less the step's ``max_delay``.
        """
        if self.judges:
            return self._judged()
        if not self.cuts:
            return [(self.records, self.latest, None)]
        records = self.records
        out: list[tuple[list[tuple[str, float, Any]], float, float | None]] = []
        at = 0
        for end, latest in self.cuts:
            out.append((records[at:end], latest, None))
            at = end
        out.append((records[at:], self.latest, None))
        return out

    def _judged(self) -> list[tuple[list[tuple[str, float, Any]], float, float | None]]:
        """Split a made stream's records where a chunk ends and where their making time changes."""
        records = self.records
        judges = self.judges
        if len(judges) == 1 and not self.cuts:
            return [(records, self.latest, judges[0][1])]
        # Each boundary: (index, the progress there or _NEVER, the making time from there on).
        bounds: dict[int, list[Any]] = {}
        for end, latest in self.cuts:
            bounds.setdefault(end, [_NEVER, False, None])[0] = latest
        for begin, made_at in judges:
            bound = bounds.setdefault(begin, [_NEVER, False, None])
            bound[1] = True
            bound[2] = made_at
        out: list[tuple[list[tuple[str, float, Any]], float, float | None]] = []
        at = 0
        made: float | None = None
        for index in sorted(bounds):
            latest, changes, made_at = bounds[index]
            if index or latest != _NEVER:
                out.append((records[at:index], latest, made))
            at = index
            if changes:
                made = made_at
        out.append((records[at:], self.latest, made))
        return out


def _marked_from(data: bytes) -> Marked:
    """Rebuild a `Marked` pickled by `Marked.__reduce__`."""
    marked = Marked.__new__(Marked)
    marked.__dict__.update(pickle.loads(data))
    marked.crossing = None
    return marked


class Sent(list[Any]):
    """Records for a step of another process (a list): pickled as `Marked` is, checked."""

    def __init__(self, records: list[Any], crossing: Crossing) -> None:
        """Hold ``records``, checked by ``crossing`` when they are pickled."""
        super().__init__(records)
        self.crossing = crossing

    def __reduce__(self) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
        """Pickle as a plain list, or stop the run saying which record cannot be."""
        try:
            data = pickle.dumps(list(self), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - the run stops, saying which record
            self.crossing.refuse(list(self), exc)
        return pickle.loads, (data,)


class Crossing:
    """Stop a run clearly when what a keyed step takes cannot cross between processes.

    The engine pickles what goes to a worker of another process, and a record
    that cannot be pickled (an instance of a class defined inside a function,
    a lock in a field) stops it with a panic that names nothing. `Marked` and
    `Sent` pickle their records themselves, as they cross: where that fails,
    the run stops with the step, the record's class, the field and a hint.
    Nothing is pickled for a worker of the same process.
    """

    def __init__(self, counters: Counters, pipeline: str, step: str, processes: int) -> None:
        """Check the records going to ``step`` of ``pipeline`` on ``processes`` processes."""
        self.counters = counters
        self.pipeline = pipeline
        self.step = step
        self.processes = processes

    def refuse(self, records: list[Any], exc: Exception) -> NoReturn:
        """Stop the run: one of ``records`` (or what came with them) cannot be pickled."""
        what = f"the records that step {self.step!r} takes"
        where = (
            f"pipeline {self.pipeline!r} runs on {self.processes} processes, where {what} "
            f"travel between processes pickled"
        )
        for record in records:
            cls = type(record)
            error = unpicklable(cls, self.pipeline, self.processes, what, "class")
            if error is not None:
                self.counters.halt(error)
            why = _unpicklable_part(record)
            if why is not None:
                self.counters.halt(
                    TypeError(
                        f"{where}, but a record of class {cls.__qualname__} (module "
                        f"{cls.__module__}) cannot be pickled: {why}. Hint: keep only data in "
                        f"records (no locks, open files, connections, generators or "
                        f"functions); on one process (processes=1) records are not pickled."
                    )
                )
        self.counters.halt(
            TypeError(
                f"{where}, but what goes with them cannot be: {type(exc).__name__}: {exc}. "
                f"Hint: keep only data in records and in aggregates' values; on one process "
                f"(processes=1) nothing is pickled."
            )
        )


def _unpicklable_part(record: Any) -> str | None:
    """Say why ``record`` cannot be pickled (which field holds what, and the error), or None."""
    try:
        pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - described
        error = f"{type(exc).__name__}: {exc}"
    else:
        return None
    fields = getattr(record, "__dict__", None)
    if isinstance(fields, dict):
        for name, value in fields.items():
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001 - this field is the one
                held = type(value)
                return f"its field {name!r} holds a {held.__module__}.{held.__qualname__} ({error})"
    return error


def unpicklable(cls: type, pipeline: str, processes: int, what: str, noun: str) -> TypeError | None:
    """Return the error that says ``cls`` cannot cross between processes pickled (None: it can).

    ``what`` travels between them (``"events"``); ``noun`` names the class (``"event class"``).
    """
    try:
        pickle.dumps(cls)
    except Exception as exc:  # noqa: BLE001 - reported with the class named
        return TypeError(
            f"pipeline {pipeline!r} runs on {processes} processes, where {what} travel between "
            f"processes pickled, but {noun} {cls.__qualname__} (module {cls.__module__}) cannot "
            f"be pickled: {exc}. Hint: define it at module level, not inside a function."
        )
    return None


class Bucketize:
    """Split an exit of packets into per-bucket `Marked` items (a flat_map_batch).

    With ``combine``, each chunk's events are first aggregated per key and
    window where they are read, and the partial windows cross to the worker
    of their key instead of the events (far fewer, smaller records to pickle).
    """

    def __init__(
        self,
        exit_index: int,
        buckets: int = BUCKETS,
        combine: Combining | None = None,
        delay: float | None = None,
        crossing: Crossing | None = None,
    ) -> None:
        """Read exit ``exit_index`` of each packet.

        ``crossing``: check that the records can cross between processes.

        With ``delay`` (an event-time window's ``max_delay``), each event is
        judged against its partition's watermark as it stands just before it,
        whatever the batch size: before one behind an earlier event of the
        same batch, its bucket's share is cut (the bucket moves the
        partition's watermark on there); when combining, such an event goes
        to its bucket as ``behind`` with the watermark it is behind.
        """
        self.delay = delay
        self.exit_index = exit_index
        self.buckets = buckets
        self.names = (
            BUCKET_KEYS[:buckets] if buckets <= BUCKETS else [str(b) for b in range(buckets)]
        )
        self.combine = combine
        self.crossing = crossing
        self.cache: dict[str, int] = {}

    def bucket_of(self, key: str) -> int:
        """Return a key's bucket (stable across processes)."""
        if self.buckets == 1:
            return 0
        bucket = self.cache.get(key)
        if bucket is None:
            if len(self.cache) > 100_000:
                self.cache.clear()
            bucket = self.cache[key] = (
                zlib.crc32(key.encode("utf-8", "surrogatepass")) % self.buckets
            )
        return bucket

    def __call__(self, packets: list[Packet]) -> list[tuple[str, Marked]]:
        """Group records by bucket; every bucket gets each partition's progress.

        The packets of one partition in this batch make one `Marked` per
        bucket (fewer, larger items to exchange), cut where each chunk ends.
        """
        index = self.exit_index
        by_part: dict[str, list[Packet]] = {}
        for packet in packets:
            if (
                (packet.exits and packet.exits[index])
                or packet.eof
                or packet.idle_since
                or packet.mark is not None
            ):
                by_part.setdefault(packet.origin_id, []).append(packet)
        out: list[tuple[str, Marked]] = []
        n = self.buckets
        for part, group in by_part.items():
            marks = [Marked(part, _NEVER, False, crossing=self.crossing) for _ in range(n)]
            wins: dict[tuple[str, float], tuple[list[Any], list[str]]] = {}
            latest = cut = _NEVER
            for i, packet in enumerate(group):
                records = packet.exits[index] if packet.exits else []
                if i and latest != cut:
                    # The previous chunk ends here, where the partition's progress
                    # moved on: each bucket's cut.
                    cut = latest
                    for mark in marks:
                        mark.cuts.append((len(mark.records), latest))
                if packet.mark is not None:
                    # Made by a step on event time, which says how far it has
                    # got, and when it made these records: each is judged
                    # against that, not against the times of those before it.
                    runs = None if packet.made is None else packet.made[index]
                    made: list[float | None] = (
                        [None] * len(records) if runs is None else _each_made(runs, len(records))
                    )
                    self._made(records, made, marks)
                    if packet.mark > latest:
                        latest = packet.mark
                    continue
                if self.combine is not None:
                    if records:
                        # Events behind an earlier one of the batch are set aside
                        # for their bucket to judge; the others are aggregated here.
                        records, latest = self.combine.add_chunk(
                            records, part, latest, wins, partial(self._set_aside, marks)
                        )
                elif self.delay is None:
                    for record in records:
                        if record[1] > latest:
                            latest = record[1]
                else:
                    latest = self._cut_behind(records, latest, marks)
                    continue
                self._spread(records, marks)
            if wins and self.combine is not None:
                for win in self.combine.partials(wins):
                    mark = marks[self.bucket_of(win[0])]
                    mark.partials.append(win)
                    mark.combined += len(win[4])
            eof = group[-1].eof
            idle_since = group[-1].idle_since
            for b, mark in enumerate(marks):
                mark.latest = latest
                mark.eof = eof
                mark.idle_since = idle_since
                out.append((self.names[b], mark))
        return out

    def _cut_behind(self, records: list[Any], latest: float, marks: list[Marked]) -> float:
        """Spread records in order, cutting before each one behind an earlier event of the batch.

        The cut tells the bucket the partition's newest event time just
        before that event, so the bucket judges it (window by window) against
        the watermark as it stood then. Returns the newest event time.
        """
        delay = self.delay
        assert delay is not None
        if self.buckets == 1:  # (a bucket per worker, one worker)
            mark = marks[0]
            held = mark.records
            cuts = mark.cuts
            floor = latest - delay
            for i, record in enumerate(records, len(held)):
                ts = record[1]
                if ts < floor:
                    cuts.append((i, latest))
                elif ts > latest:
                    latest = ts
                    floor = ts - delay
            held += records
            return latest
        bucket_of = self.cache.get
        for record in records:
            ts = record[1]
            b = bucket_of(record[0])
            if b is None:
                b = self.bucket_of(record[0])
            mark = marks[b]
            if ts < latest - delay:
                mark.cuts.append((len(mark.records), latest))
            elif ts > latest:
                latest = ts
            mark.records.append(record)
        return latest

    def _set_aside(
        self, marks: list[Marked], record: tuple[str, float, Any], watermark: float
    ) -> None:
        """Send an event behind an earlier one of its batch to its bucket as `Marked.behind`."""
        marks[self.bucket_of(record[0])].behind.append((record, watermark))

    def _made(self, records: list[Any], made: list[float | None], marks: list[Marked]) -> None:
        """Spread records each made at its own time (``made``), noting that per bucket."""
        bucket_of = self.cache.get
        for record, made_at in zip(records, made, strict=True):
            b = bucket_of(record[0])
            if b is None:
                b = self.bucket_of(record[0])
            mark = marks[b]
            judges = mark.judges
            if not judges or judges[-1][1] != made_at:
                judges.append((len(mark.records), made_at))
            mark.records.append(record)

    def _spread(self, records: list[Any], marks: list[Marked]) -> None:
        if self.buckets == 1:
            marks[0].records += records
            return
        bucket_of = self.cache.get
        for record in records:
            b = bucket_of(record[0])
            if b is None:
                b = self.bucket_of(record[0])
            marks[b].records.append(record)


class SplitOp(Node):
    """Root of the stage after an aggregate: results, late events, dead letters."""

    def __init__(self, results: Sequence[Node], late: Sequence[Node], row: int) -> None:
        """Send results and late events to their branches."""
        self.results = list(results)
        self.late = list(late)
        self.row = row

    keeps_made = True

    def children(self) -> list[Node]:
        """Return the nodes it hands records to."""
        return self.results + self.late

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Split tagged outputs of the aggregate."""
        results: list[Any] = []
        late: list[Any] = []
        made = run.made
        if made is not None:
            results_made: list[float | None] = []
            late_made: list[float | None] = []
            for (tag, value), m in zip(items, made, strict=True):
                if tag == "r":
                    results.append(value)
                    results_made.append(m)
                elif tag == "l":
                    late.append(value)
                    late_made.append(m)
                else:
                    run.dead.append(value)
        else:
            for tag, value in items:
                if tag == "r":
                    results.append(value)
                elif tag == "l":
                    late.append(value)
                else:
                    run.dead.append(value)
        row = run.table[self.row]
        if results:
            if made is not None:
                run.made = results_made
            _fan_out(self.results, results, run, out, row)
        if late:
            if made is not None:
                run.made = late_made
            _fan_out(self.late, late, run, out, row)
