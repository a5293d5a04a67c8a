"""Keyed process steps: per-key state, event-time and processing-time timers, state TTL.

`ProcessLogic` holds the keys of one bucket. Events are delivered to the
user's function in event-time order, interleaved with the key's timers:
an event at ``t`` once the watermark (the smallest over the source
partitions) has passed ``t``, a timer at ``t`` once it has passed ``t``
and after every event at ``t``. So what the function sees depends neither
on how the partitions interleave nor on the batch size or worker count.
Events behind their own partition's watermark are late (the step's late
stream, or ``late`` dead letters). At the end of a bounded input the
watermark moves to the end: every held event is delivered and every
pending timer fires (a timer ``on_timer`` sets then never fires and is
counted as ``unfired``), then the states left are dropped and counted as
``expired``. With ``ttl``, a key's state is dropped (and counted) once the
watermark passes its last event's time plus ``ttl``.
"""

from __future__ import annotations

import heapq
import json
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Generic, NamedTuple, TypeVar

from bytewax.operators import StatefulBatchLogic

from operators._deadletter import payload_text
from operators._keying import _EPOCH, BUCKET_LAYOUT, Marked, check_layout, event_seconds
from operators._letters import Letters, Notes
from operators._owned import own
from operators._pickles import check_state
from operators._policy import ErrorPolicy
from operators._stage import COUNTER_FIELDS, Counters
from operators._windowing import Watermarks, _utc
from operators.windows import _END, _FIRST

__all__ = ["Context", "ProcessLogic", "ProcessSpec", "Timer"]

O = TypeVar("O")  # noqa: E741 - the output type

_IN, _OUT, _DEAD, _SKIPPED, _CREATED, _AGG, _OPEN, _LATE, _EXPIRED, _UNFIRED = (
    COUNTER_FIELDS.index(f)
    for f in (
        "in",
        "out",
        "dead",
        "skipped",
        "created",
        "aggregated",
        "open",
        "late",
        "expired",
        "unfired",
    )
)
_NEVER = -math.inf
_DONE = math.inf
#: Kinds of entries in the event-time queue, in the order they go at one time.
_EVENT, _TIMER, _TTL = 0, 1, 2
_MISSING = object()
_TIME = operator.itemgetter(1)
_PARTITION = operator.attrgetter("partition")


class Timer(NamedTuple):
    """A timer that fired: its key, time, name and kind (``"event"`` or ``"processing"``)."""

    key: str
    time: datetime
    name: str
    kind: str


class TimerInThePast(ValueError):
    """A timer was set at a time event time has already passed."""


class Context(Generic[O]):
    """What a process function may do besides changing its key's state.

    ``emit(record)`` sends a record on; ``timer(at, name)`` sets (or moves)
    the key's event-time timer of that name, which fires once the watermark
    passes ``at``; ``processing_timer(at, name)`` one that fires when the
    wall clock reaches ``at``; ``cancel(name)`` removes one. They take
    effect in the order they are called (a timer set, then cancelled, is not
    set). ``key``,
    ``time`` (the event's or the timer's time) and ``watermark`` say where
    the step is. Nothing takes effect if the function raises. The context
    is valid during the call it is given to (the step hands the same object,
    reset, to every call): keep what it says, not the context itself.
    """

    __slots__ = ("_at", "_firing", "_mark", "_out", "_timed", "_timers", "_wall", "key")

    def __init__(self, key: str = "", at: float = _NEVER, mark: float = _NEVER) -> None:
        """Make the context of one call for ``key`` at event time ``at``."""
        self.key = key
        self._at = at
        self._mark = mark
        #: Whether this is a processing-time timer's call (its watermark is the step's).
        self._wall = False
        # Made when first used: most calls set no timer and emit little.
        self._out: list[Any] | None = None
        #: ``(kind, name, at)`` in the order called; ``at`` None cancels.
        self._timers: list[tuple[str, str, float | None]] | None = None
        #: Whether the step has an ``on_timer`` to call when a timer fires.
        self._timed = True
        #: Whether this is an event-time timer's call (a timer it sets must be later).
        self._firing = False

    @property
    def time(self) -> datetime:
        """The event time of the event (or timer) being handled."""
        return _utc(self._at)

    @property
    def watermark(self) -> datetime | None:
        """How far event time has advanced, as this call sees it: the time being handled.

        Events are delivered in time order once the watermark passes them, so
        when one at ``t`` is handled (or a timer at ``t`` fires) every event
        before ``t`` has been: ``t`` is the watermark the call sees, whatever
        the batches. (The step's own watermark is further on by however much
        input had arrived, so a call that read it would depend on the batch
        size.) In a processing-time timer's call: the step's watermark then,
        None before any event.
        """
        mark = self._mark if self._wall else self._at
        return None if mark in (_NEVER, _DONE) else _utc(mark)

    def emit(self, record: O) -> None:
        """Send ``record`` on, after the call returns: as it is now (a copy if mutable).

        A state emitted and then changed by later calls (``ctx.emit(state)``)
        is sent on as it was when emitted, and a later step that changes what
        it is given does not change the key's state.
        """
        if record is self:
            msg = (
                "ctx.emit(ctx) sends on the context itself, which the next call reuses "
                "and resets. Hint: emit a record made of what it says, e.g. "
                "ctx.emit((ctx.key, ctx.time, state))."
            )
            raise TypeError(msg)
        record = own(record)
        if self._out is None:
            self._out = [record]
        else:
            self._out.append(record)

    def timer(self, at: datetime | float, name: str = "") -> None:
        """Fire ``on_timer`` for this key once event time passes ``at``."""
        if at.__class__ is datetime and at.tzinfo is timezone.utc:
            seconds = (at - _EPOCH).total_seconds()
        else:
            seconds = _seconds(at)
        if name.__class__ is not str:
            _check_name(name)
        if seconds < self._at:
            msg = (
                f"timer {name!r} of key {self.key!r} set at {_utc(seconds).isoformat()}, "
                f"before the time being handled ({_utc(self._at).isoformat()}): event "
                f"time has passed it, so it would never fire in order. Hint: set it at "
                f"ctx.time + a delay, e.g. ctx.timer(ctx.time + timedelta(minutes=5))."
            )
            raise TimerInThePast(msg)
        if seconds == self._at and self._firing:
            msg = (
                f"timer {name!r} of key {self.key!r} set at {_utc(seconds).isoformat()}, "
                f"the time of the timer being handled: it would fire again at once, and "
                f"again. Hint: set the next one later, e.g. "
                f"ctx.timer(timer.time + timedelta(minutes=1))."
            )
            raise TimerInThePast(msg)
        self._add_timer(("event", name, seconds))

    def _add_timer(self, timer: tuple[str, str, float | None]) -> None:
        if not self._timed and timer[2] is not None:
            msg = (
                f"{timer[0]} timer {timer[1]!r} of key {self.key!r} set in a process step "
                f"with no on_timer: it would fire with nothing to call. Hint: pass "
                f"process(on_event, initial=..., on_timer=on_timer)."
            )
            raise TypeError(msg)
        if self._timers is None:
            self._timers = [timer]
        else:
            self._timers.append(timer)

    def processing_timer(self, at: datetime | float, name: str = "") -> None:
        """Fire ``on_timer`` for this key when the wall clock reaches ``at``."""
        self._add_timer(("processing", _check_name(name), _seconds(at, wall=True)))

    def cancel(self, name: str = "", *, processing: bool = False) -> None:
        """Remove this key's timer of that name (if it is set)."""
        cancel = ("processing" if processing else "event", _check_name(name), None)
        if self._timers is None:
            self._timers = [cancel]
        else:
            self._timers.append(cancel)


def _timer_payload(timer: Timer) -> str:
    """Return what a dead letter of a timer's call holds: its key, name and time."""
    return json.dumps({"key": timer.key, "timer": timer.name, "at": timer.time.isoformat()})


def _check_name(name: str) -> str:
    """Return a timer's name; refuse one that is not a string.

    >>> _check_name(7)
    Traceback (most recent call last):
    ...
    TypeError: a timer's name must be a str; got int 7. Hint: ctx.timer(at, "close").
    """
    if not isinstance(name, str):
        msg = (
            f"a timer's name must be a str; got {type(name).__name__} {name!r}. "
            f'Hint: ctx.timer(at, "close").'
        )
        raise TypeError(msg)
    return name


def _seconds(at: datetime | float, *, wall: bool = False) -> float:
    """Return a timer's time in seconds; refuse what is no time (``wall``: a processing timer)."""
    if not isinstance(at, datetime | int | float) or isinstance(at, bool):
        now = "datetime.now(timezone.utc)" if wall else "ctx.time"
        hint = f"{now} + timedelta(minutes=5)"
        if isinstance(at, timedelta):
            base = "the wall clock" if wall else "the time being handled"
            hint = f"add it to {base}, {now} + {at!r}"
        msg = (
            f"a timer's time must be an aware datetime or epoch seconds; got "
            f"{type(at).__name__} {at!r}. Hint: {hint}."
        )
        raise TypeError(msg)
    if isinstance(at, datetime) and at.utcoffset() is None:
        msg = (
            f"a timer needs a time with a timezone; got {at.isoformat()}, which has none. "
            f"Hint: set it from the event's time, ctx.time + timedelta(minutes=5), or "
            f"datetime(..., tzinfo=timezone.utc)."
        )
        raise ValueError(msg)
    seconds = event_seconds(at)
    if not _FIRST <= seconds < _END:  # (nan too) no datetime could say when it fired
        msg = (
            f"a timer needs a time a datetime can hold (years 1 to 9999); got {at!r}. "
            f"Hint: set it at ctx.time + a delay."
        )
        raise ValueError(msg)
    return seconds


@dataclass
class ProcessSpec:
    """Everything one process step's bucket logic needs."""

    pipeline: str
    step: str
    row: int
    counters: Counters
    on_event: Callable[[Any, Any, Context[Any]], Any]
    initial: Callable[[], Any]
    partitions: list[str]
    on_timer: Callable[[Any, Timer, Context[Any]], Any] | None = None
    ttl: float | None = None
    delay: float = 0.0
    idle: float = 0.0
    late_wanted: bool = False
    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    #: What the steps after need to know of when records are emitted (`Notes`).
    notes: Notes | None = None


def _entry(timer: tuple[Any, ...]) -> tuple[float, int, int, float]:
    """Return a snapshot's timer as ``(at, seq, entry, queued)``.

    A snapshot from before timers kept their queue entry has ``(at, seq)``:
    its entry is the one at ``at`` with that seq.

    >>> _entry((5.0, 7)), _entry((9.0, 8, 7, 5.0))
    ((5.0, 7, 7, 5.0), (9.0, 8, 7, 5.0))
    """
    if len(timer) == 2:
        at, seq = timer
        return (at, seq, seq, at)
    at, seq, entry, queued = timer
    return (at, seq, entry, queued)


def _ordered(queue: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Return a snapshot's queue with each event's seq as ``(partition, seq)``.

    A snapshot from before events were ordered by partition has plain
    numbers: those events keep their order, ahead of any partition's.

    >>> _ordered([(5.0, 0, 7, "k", "e"), (6.0, 1, 8, "k", "t")])
    [(5.0, 0, ('', 7), 'k', 'e'), (6.0, 1, 8, 'k', 't')]
    """
    if all(entry[1] != _EVENT or isinstance(entry[2], tuple) for entry in queue):
        return queue
    fixed = [
        (at, kind, ("", seq), key, item)
        if kind == _EVENT and not isinstance(seq, tuple)
        else (at, kind, seq, key, item)
        for at, kind, seq, key, item in queue
    ]
    heapq.heapify(fixed)
    return fixed


class ProcessLogic(
    Letters, Watermarks, StatefulBatchLogic[Marked, tuple[str, Any], dict[str, Any]]
):
    """The states, timers and held events of the keys of one bucket."""

    late_why = "events and timers before it were already handled in time order"

    def __init__(self, spec: ProcessSpec, resume: dict[str, Any] | None) -> None:
        """Start empty, or from a snapshot."""
        check_layout(spec.step, resume)
        self.spec = spec
        #: Whether ``initial`` returns one mutable object every time (None: not yet
        #: told, see `_initial`), and what it returned for the first key until then.
        self.copies: bool | None = None
        self.first: Any = _MISSING
        state = resume or {}
        self.start_watermarks(state, spec.partitions, spec.idle)
        self.states: dict[str, Any] = state.get("states", {})
        #: ``key -> {(kind, name): (at, seq, entry, queued)}``: the timers set, due at
        #: ``at`` in the order of ``seq`` (when they were set); ``entry`` and
        #: ``queued`` name the timer's one entry in its queue. A timer moved later
        #: keeps its entry, which queues it again at its time when it comes up, so a
        #: timer moved on by every event of a key takes one entry, not one an event.
        self.timers: dict[str, dict[tuple[str, str], tuple[float, int, int, float]]] = {
            key: {which: _entry(timer) for which, timer in mine.items()}
            for key, mine in state.get("timers", {}).items()
        }
        #: ``(at, kind of entry, seq, key, event or timer name)``, in event time; an
        #: event's seq is ``(its partition, seq)``: events of one time go in the order
        #: of their partitions, then of their arrival (each partition's own order).
        self.queue: list[tuple[float, int, Any, str, Any]] = _ordered(state.get("queue", []))
        #: ``(at, seq, key, name)``: processing-time timers.
        self.wall: list[tuple[float, int, str, str]] = state.get("wall", [])
        #: ``key -> its last event's time``, with ``ttl``: each key in it has one
        #: ttl entry in the queue, queued again at its time when it comes up early.
        self.last: dict[str, float] = state.get("last", {})
        self.seq: int = state.get("seq", 0)
        self.held = state.get("held", 0)
        #: Whether the input has ended and event time has reached the end of its data.
        self.ending = False
        #: The context handed to every call (reset after each).
        self.ctx: Context[Any] = Context()
        self.ctx._timed = spec.on_timer is not None
        self.mark_key = (spec.step, str(id(self)))
        opened = len(self.states) + self.held + sum(len(mine) for mine in self.timers.values())
        if opened:
            spec.counters.table()[spec.row][_OPEN] += opened

    # -- the bytewax protocol ------------------------------------------------

    def on_batch(self, values: list[Marked]) -> tuple[list[tuple[str, Any]], bool]:
        """Hold a batch's events; deliver what the watermark allows, in time order."""
        spec = self.spec
        row = spec.counters.table()[spec.row]
        out: list[tuple[str, Any]] = []
        incoming: list[tuple[str, float, Any, str]] = []
        # Partition by partition, in the order of their names: sorted by time
        # (a stable sort), a batch's events of one time go in that order too.
        for marked in sorted(values, key=_PARTITION) if len(values) > 1 else values:
            part = marked.partition
            tracked = part in self.wm
            if tracked and marked.judges and not marked.cuts:
                # Records a step on event time made, each judged against its making.
                row[_IN] += len(marked.records)
                self._take_made(marked, part, incoming, out, row)
                segments: list[tuple[list[tuple[str, float, Any]], float, float | None]] = [
                    ([], marked.latest, None)
                ]
            else:
                segments = marked.segments()
            for records, latest, made_at in segments:
                if records:
                    row[_IN] += len(records)
                    wm = self.judge(part, made_at, spec.delay) if tracked else self.closed
                    self._take(records, part, wm, incoming, out, row)
                if tracked and latest != _NEVER:
                    self.reached(latest)
                    if latest - spec.delay > self.wm[part]:
                        self.wm[part] = latest - spec.delay
            if tracked:
                self.idle[part] = marked.idle_since
                if marked.eof:
                    self.wm[part] = _DONE
        now = time.time()
        mark = self.low_mark(now)
        self._advance(mark, out, row, incoming)
        # At the end every processing-time timer fires too, before the end is told.
        self._wall(_DONE if mark == _DONE else now, out, row)
        self.report(mark, 0.0, out)
        if self.newest != _NEVER:
            spec.counters.marks[self.mark_key] = (mark, self.newest)
        return out, False

    def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
        """Fire processing-time timers; follow the watermark of idle partitions."""
        row = self.spec.counters.table()[self.spec.row]
        out: list[tuple[str, Any]] = []
        now = time.time()
        mark = self.low_mark(now)
        self._advance(mark, out, row)
        self._wall(_DONE if mark == _DONE else now, out, row)
        self.report(mark, 0.0, out)
        return out, False

    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        """Deliver everything, fire every timer, then drop the states: the input ended."""
        row = self.spec.counters.table()[self.spec.row]
        out: list[tuple[str, Any]] = []
        while self.queue or self.wall:
            self._advance(_DONE, out, row)
            self._wall(_DONE, out, row)
        row[_EXPIRED] += len(self.states)
        row[_OPEN] -= len(self.states)
        self.states.clear()
        self.last.clear()
        out.append(("w", _DONE))
        return out, True

    def notify_at(self) -> datetime | None:
        """When the wall clock next fires a timer or could move the watermark on."""
        due: list[datetime] = []
        if self.wall:
            due.append(_utc(self.wall[0][0]))
        if self.queue:
            found = self.wall_due(self.queue[0][0] + 1e-6)
            if found is not None:
                due.append(found)
        return min(due) if due else None

    def snapshot(self) -> dict[str, Any]:
        """State to resume from: watermarks, key states, timers, held events."""
        snap = {
            "wm": dict(self.wm),
            "closed": self.closed,
            "states": self.states,
            "timers": self.timers,
            "queue": list(self.queue),
            "wall": list(self.wall),
            "last": self.last,
            "seq": self.seq,
            "held": self.held,
            "newest": self.newest,
            "layout": BUCKET_LAYOUT,
        }
        check_state(self.spec.step, snap)
        return snap

    # -- holding and delivering ----------------------------------------------

    def _take(
        self,
        records: list[tuple[str, float, Any]],
        part: str,
        wm: float,
        incoming: list[tuple[str, float, Any, str]],
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        """Add the records not behind ``wm`` to ``incoming``, with their partition ``part``.

        The others are late.
        """
        for record in records:
            if record[1] < wm:
                break
        else:  # the usual case: none is behind
            incoming += [(key, ts, payload, part) for key, ts, payload in records]
            row[_AGG] += len(records)
            return
        for key, ts, payload in records:
            if ts < wm:
                self._late(payload, ts, wm, out, row)
            else:
                incoming.append((key, ts, payload, part))
                row[_AGG] += 1

    def _take_made(
        self,
        marked: Marked,
        part: str,
        incoming: list[tuple[str, float, Any, str]],
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        """Add a made stream's records to ``incoming``, each judged against its making.

        As `_take` for each run of `Marked.judges`, in one pass.
        """
        records = marked.records
        judges = marked.judges
        delay = self.spec.delay
        ends = [begin for begin, _ in judges[1:]] + [len(records)]
        if judges[0][0]:  # before the first note: judged as a source's
            wm = self.judge(part, None, delay)
            self._take(records[: judges[0][0]], part, wm, incoming, out, row)
        taken = 0
        for (begin, made_at), end in zip(judges, ends, strict=True):
            wm = self.judge(part, made_at, delay)
            for i in range(begin, end):
                key, ts, payload = records[i]
                if ts < wm:
                    self._late(payload, ts, wm, out, row)
                else:
                    incoming.append((key, ts, payload, part))
                    taken += 1
        row[_AGG] += taken

    def _advance(
        self,
        mark: float,
        out: list[tuple[str, Any]],
        row: list[int],
        incoming: list[tuple[str, float, Any, str]] | None = None,
    ) -> None:
        """Deliver the events and fire the timers that event time ``mark`` has passed.

        ``incoming``: the batch's records (not yet held), with their
        partitions. Those before ``mark`` are delivered straight from the
        list, in time order merged with the queue (events of one time in the
        order of their partitions, a partition's own in its order; timers of
        that time after them); the rest are held.

        When the input has ended (``mark`` is the end), event time first
        reaches the end of the data, the newest event time: what is due by
        then happens as it would have had the input gone on. Then every
        event still held is delivered and every timer still pending fires,
        once: a timer that ``on_timer`` sets from then on (a periodic timer)
        never fires, and is counted as ``unfired``.
        """
        if mark == _DONE and not self.ending:
            if self.newest != _NEVER:
                self._advance(math.nextafter(self.newest, _DONE), out, row, incoming)
                incoming = None
            self.ending = True
        queue = self.queue
        if incoming:
            incoming.sort(key=_TIME)  # stable: arrival order within one time
        elif not queue or queue[0][0] >= mark:
            if mark > self.closed:
                self.closed = mark
            return
        else:
            incoming = []
        spec = self.spec
        pop = heapq.heappop
        push = heapq.heappush
        ttl = spec.ttl
        last = self.last
        states = self.states
        on_event = spec.on_event
        ctx = self.ctx
        ctx._mark = mark
        ctx._wall = False
        delivered = 0
        i = 0
        n = len(incoming)
        while True:
            if i < n and incoming[i][1] < mark:
                key, at, payload, part = incoming[i]
                if queue and (
                    queue[0][0] < at
                    or (queue[0][0] == at and queue[0][1] == _EVENT and queue[0][2][0] <= part)
                ):
                    at, kind, seq, key, payload = pop(queue)
                    if kind == _EVENT:
                        delivered += 1
                else:
                    i += 1
                    kind = _EVENT
            elif queue and queue[0][0] < mark:
                at, kind, seq, key, payload = pop(queue)
                if kind == _EVENT:
                    delivered += 1
            else:
                break
            if kind == _EVENT:
                if ttl is not None:
                    if key not in last:  # else its ttl entry comes up first
                        self.seq += 1
                        push(queue, (at + ttl, _TTL, self.seq, key, at))
                    last[key] = at
                # One event: the user's function with the key's state (as `_fire`
                # calls on_timer, inline: this runs for every event).
                state = states.get(key, _MISSING)
                ctx.key = key
                ctx._at = at
                if state is _MISSING:
                    current = self._initial(partial(payload_text, payload), at, out, row)
                    if current is _MISSING:
                        continue
                else:
                    current = state
                try:
                    new = on_event(current, payload, ctx)
                except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                    ctx._out = ctx._timers = None
                    self._failed(payload_text(payload), at, exc, on_event, out, row, held=True)
                    continue
                if new is not state:
                    self._keep(key, state, new, row)
                if ctx._out is not None or ctx._timers is not None:
                    self._apply(key, ctx, out, row)
            elif kind == _TIMER:
                if not self._due(key, ("event", payload), at, seq, queue, row):
                    continue  # cancelled, or moved (and queued again)
                timer = Timer(key, _utc(at), payload, "event")
                self._fire(key, at, mark, timer, out, row)
            elif key in last:
                assert ttl is not None  # ttl entries are made with a ttl alone
                newest = last[key]
                if newest + ttl > at:
                    # An event of the key since: queued again at its own ttl.
                    self.seq += 1
                    push(queue, (newest + ttl, _TTL, self.seq, key, newest))
                    continue
                # No event of the key since: its state (if any) has lived out its ttl.
                del last[key]
                if key in states:
                    del states[key]
                    row[_EXPIRED] += 1
                    row[_OPEN] -= 1
        self.held -= delivered
        row[_OPEN] -= delivered
        if i < n:
            # Not yet passed by event time: held in the queue.
            seq = self.seq
            for key, at, payload, part in incoming[i:]:
                seq += 1
                push(queue, (at, _EVENT, (part, seq), key, payload))
            self.held += n - i
            row[_OPEN] += n - i
            self.seq = seq
        if mark > self.closed:
            self.closed = mark

    def _wall(self, now: float, out: list[tuple[str, Any]], row: list[int]) -> None:
        """Fire the processing-time timers due by ``now`` that were set before this call.

        One that their calls set, due at once, waits for the next call: a
        timer set again and again for now never holds the step up.
        """
        wall = self.wall
        before = self.seq
        later: list[tuple[float, int, str, str]] = []
        while wall and wall[0][0] <= now:
            entry = heapq.heappop(wall)
            at, seq, key, name = entry
            if seq > before:
                later.append(entry)
                continue
            if not self._due(key, ("processing", name), at, seq, wall, row):
                continue  # cancelled, or moved (and queued again)
            timer = Timer(key, _utc(at), name, "processing")
            mark = self.closed
            if mark == _DONE:
                mark = self.newest
            self._fire(key, mark if mark != _NEVER else at, mark, timer, out, row)
        for entry in later:
            heapq.heappush(wall, entry)

    def _fire(
        self,
        key: str,
        at: float,
        mark: float,
        timer: Timer,
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        """Call ``on_timer`` for a timer of ``key``; apply its effects if it succeeds."""
        on_timer = self.spec.on_timer
        assert on_timer is not None  # a timer is refused where there is none
        state = self.states.get(key, _MISSING)
        ctx = self.ctx
        ctx.key = key
        ctx._at = at
        ctx._mark = mark
        ctx._firing = timer.kind == "event"
        ctx._wall = not ctx._firing
        current = state
        if state is _MISSING:
            current = self._initial(partial(_timer_payload, timer), at, out, row)
            if current is _MISSING:
                return
        try:
            new = on_timer(current, timer, ctx)
        except Exception as exc:  # noqa: BLE001 - handed to the step's policy
            ctx._out = ctx._timers = None
            self._failed(_timer_payload(timer), at, exc, on_timer, out, row, held=True)
            return
        finally:
            ctx._firing = False
        if new is not state:
            self._keep(key, state, new, row)
            if new is not None and self.spec.ttl is not None:
                self._touch(key, at)
        if self.ending and ctx._timers is not None:
            # The input is over: a timer set now would never stop (a periodic
            # one sets the next). It replaces the one of its name, unfired.
            row[_UNFIRED] += sum(at is not None for _, _, at in ctx._timers)
            ctx._timers = [(kind, name, None) for kind, name, _ in ctx._timers]
        self._apply(key, ctx, out, row)

    def _initial(
        self, payload: Callable[[], str], at: float, out: list[tuple[str, Any]], row: list[int]
    ) -> Any:
        """Return a new key's first state, or `_MISSING` if ``initial`` raised (its dead letter).

        ``payload`` gives the dead letter's payload: the event's, or the timer's.
        The state is the key's own: an ``initial`` that returns one mutable
        object every time (``lambda: EMPTY``) gives each key a copy of it
        (`own`), instead of one state that every key (in this process) changes;
        a fresh one each time is kept as it is. Which it is, the second key
        tells (the first key's state is a copy, so the object stays as made).
        """
        initial = self.spec.initial
        try:
            made = initial()
            copies = self.copies
            if copies is None:
                if self.first is _MISSING:
                    self.first = made
                    return own(made)
                copies = self.copies = made is self.first and own(made) is not made
                self.first = None
            return own(made) if copies else made
        except Exception as exc:  # noqa: BLE001 - handed to the step's policy
            self._failed(payload(), at, exc, initial, out, row, held=True)
            return _MISSING

    def _touch(self, key: str, at: float) -> None:
        """Start ``key``'s ttl again at ``at``: a timer's call wrote its state.

        As an event does (inline in `_advance`): a state that a timer makes
        anew, after the key's state lived out its ttl, expires in its turn.
        """
        assert self.spec.ttl is not None
        if key not in self.last:  # else its ttl entry comes up first, and queues again
            self.seq += 1
            heapq.heappush(self.queue, (at + self.spec.ttl, _TTL, self.seq, key, at))
        if at > self.last.get(key, _NEVER):
            self.last[key] = at

    def _keep(self, key: str, state: Any, new: Any, row: list[int]) -> None:
        """Store a call's new state of ``key`` (None drops it); it had ``state`` (or none)."""
        if new is None:
            if state is not _MISSING:
                del self.states[key]
                row[_OPEN] -= 1
        else:
            self.states[key] = new
            if state is _MISSING:
                row[_OPEN] += 1

    def _apply(
        self, key: str, ctx: Context[Any], out: list[tuple[str, Any]], row: list[int]
    ) -> None:
        """Apply what a call that succeeded asked of its context; reset the context."""
        if ctx._timers is not None:
            self._set_timers(key, ctx._timers, row)
            ctx._timers = None
        emitted = ctx._out
        if emitted is not None:
            ctx._out = None
            notes = self.spec.notes
            if notes is None:
                out += [("r", record) for record in emitted]
            elif notes.readers is None:  # every record noted: one note for the call's
                self.noted(out, notes, ctx._at)
                out += [("r", record) for record in emitted]
            else:
                at = ctx._at
                behind = notes.behind
                for record in emitted:  # judged after this step against the call's time
                    if behind(record, at):
                        self.noted(out, notes, at)
                    elif self._made_in is out and self._made_at is not None:
                        self.made(out, None)
                    out.append(("r", record))
            row[_CREATED] += len(emitted)
            row[_OUT] += len(emitted)

    def _due(
        self,
        key: str,
        which: tuple[str, str],
        at: float,
        seq: int,
        queue: list[Any],
        row: list[int],
    ) -> bool:
        """Whether the queue entry ``(at, seq)`` of ``key``'s timer ``which`` fires now.

        If so, the timer is taken out (no longer counted as open). An entry
        that is not the timer's (the timer was cancelled, or moved earlier) is
        dropped; the timer's entry, when the timer was moved later (or set
        again), queues it again at its time and in the order of its last setting.
        """
        mine = self.timers.get(key)
        timer = mine.get(which) if mine else None
        if timer is None or timer[2] != seq:
            return False
        assert mine is not None
        when, order = timer[0], timer[1]
        if when != at or order != seq:
            mine[which] = (when, order, order, when)
            if which[0] == "event":
                heapq.heappush(queue, (when, _TIMER, order, key, which[1]))
            else:
                heapq.heappush(queue, (when, order, key, which[1]))
            return False
        del mine[which]
        row[_OPEN] -= 1
        if not mine:
            del self.timers[key]
        return True

    def _set_timers(
        self, key: str, changes: list[tuple[str, str, float | None]], row: list[int]
    ) -> None:
        """Apply a call's timer changes (a time None cancels), in the order made.

        A timer set at or after the time its queue entry is at keeps that
        entry (see `_due`); one set earlier gets a new entry. Pending timers
        are counted as open.
        """
        mine = self.timers.get(key)
        pending = len(mine) if mine else 0
        cancelled: dict[tuple[str, str], tuple[float, int, int, float]] = {}
        for kind, name, when in changes:
            which = (kind, name)
            if when is None:
                gone = mine.pop(which, None) if mine else None
                if gone is not None:
                    cancelled[which] = gone
                continue
            self.seq += 1
            if mine is None:
                mine = self.timers[key] = {}
            before = mine.get(which)
            if before is None and cancelled:
                before = cancelled.pop(which, None)
            if before is not None and before[3] <= when:
                mine[which] = (when, self.seq, before[2], before[3])
                continue
            mine[which] = (when, self.seq, self.seq, when)
            if kind == "event":
                heapq.heappush(self.queue, (when, _TIMER, self.seq, key, name))
            else:
                heapq.heappush(self.wall, (when, self.seq, key, name))
        row[_OPEN] += (len(mine) if mine else 0) - pending
        if mine is not None and not mine:
            del self.timers[key]
