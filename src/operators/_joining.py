"""Keyed joins of two streams on exact event time: windowed, interval, as-of a table.

A join step reads two keyed streams (sides 0 and 1). Each side is keyed and
timed in its own upstream stage (`operators._keying.ClockOp`) and grouped
into key buckets (`operators._keying.Bucketize`), as for a windowed
aggregate; the two sides' bucket streams meet in one bytewax
``stateful_batch`` step whose `JoinLogic` holds both sides of the keys of one
bucket. Every source partition of either side has its own watermark
(``"0:read/p"``, ``"1:read/p"``): an event is judged against its own
partition's watermark just before it, and the minimum over all partitions
decides what can be emitted or forgotten. So the output depends neither on
how the two inputs interleave nor on the batch size nor on the worker count.

The three kinds:

- ``window``: both sides' events of a key fall into the same windows
  (tumbling, sliding or session); when a window closes, its pairs are
  emitted (inner), plus the rows of one side that met none on the other
  (left: the left side; outer: both sides) with ``None`` for the other.
- ``interval``: a left event at ``t`` meets each right event at ``s`` with
  ``t + lower <= s <= t + upper``. A pair is emitted as soon as its second
  event arrives; a left event is forgotten once the watermark passes
  ``t + upper``, a right one once it passes ``s - lower`` (no on-time event
  can meet it any more), unmatched ones emitted then for left/outer joins.
- ``table``: side 1 is a changelog (the latest row per key wins; a row the
  ``deleted`` predicate holds for removes the key). Each side-0 event at
  ``t`` is held until the watermark passes ``t``, then joined with the row
  valid at ``t``: the newest row of its key dated at or before ``t``, unless
  it is a delete marker or older than ``ttl``. Events of a key with no valid
  row are emitted with ``None`` (``missing="none"``) or dead-lettered as
  ``unmatched``. Rows no later event can use are dropped.

Late events (behind their own partition's watermark: for windows, behind
the end of each of their windows) go to the step's late stream, or become
``late`` dead letters.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from bytewax.operators import StatefulBatchLogic
from pydantic import AwareDatetime

from operators._deadletter import payload_text
from operators._event import Event, given_id, id_part, record_part
from operators._keying import BUCKET_LAYOUT, Marked, check_layout, check_shape
from operators._letters import Letters, Notes
from operators._owned import own
from operators._pickles import check_state
from operators._policy import ErrorPolicy
from operators._stage import COUNTER_FIELDS, Counters
from operators._windowing import (
    _TICK,
    Watermarks,
    _utc,
    construct_valid,
    just_before,
    kept,
    overlapping,
    pop_session,
    sort_sessions,
    tumbling_of,
)
from operators.windows import Session, Sliding, Tumbling, Window

__all__ = ["JoinLogic", "JoinSpec", "Joined"]

A = TypeVar("A")
B = TypeVar("B")

_IN, _OUT, _DEAD, _SKIPPED, _CREATED, _AGG, _OPEN, _LATE = (
    COUNTER_FIELDS.index(f)
    for f in ("in", "out", "dead", "skipped", "created", "aggregated", "open", "late")
)
_NEVER = -math.inf
_DONE = math.inf


class Joined(Event, Generic[A, B]):
    """One result of a join: the key and the two records that met.

    ``left`` or ``right`` is None for a row of a left or outer join that met
    nothing (and for a table join's event whose key had no row then).
    ``start`` and ``end`` are the window's bounds (windowed joins only).
    ``time`` is the newer of the two records' event times (a windowed
    join's results: the window's last instant; a record of a left or outer
    interval join that met nothing: the end of its interval), ``type`` the
    join step's name, and ``id`` is made from the step, the key, the window's
    start (windowed joins) and the two records' ids, so the same input gives
    the same results on every run, each with an id of its own.
    """

    #: What a result's ``time`` is: a clock on another field is refused after it.
    __evflow_dated__: ClassVar[str] = (
        "the newer record's time (a windowed join's: its window's last instant)"
    )

    type: str = "joined"
    key: str
    left: A | None = None
    right: B | None = None
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None


_JOINED_FIELDS = frozenset(Joined.model_fields)


@dataclass
class JoinSpec:
    """Everything one join step's bucket logic needs."""

    pipeline: str
    step: str
    row: int
    counters: Counters
    kind: str
    #: Side-tagged source partitions: ``"0:read/p"`` (left), ``"1:read/p"`` (right).
    partitions: list[str]
    delays: tuple[float, float] = (0.0, 0.0)
    idle: float = 0.0
    how: str = "inner"
    window: Window | None = None
    lower: float = 0.0
    upper: float = 0.0
    ttl: float | None = None
    deleted: Callable[[Any], object] | None = None
    missing: str = "none"
    select: Callable[[Any, Any], Any] | None = None
    late_wanted: bool = False
    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    #: What the steps after need to know of when results are made (`Notes`).
    notes: Notes | None = None

    @property
    def shape(self) -> str:
        """Say what the join's state is made of: a resume from another shape is refused."""
        if self.kind == "interval":
            return f"the records of an interval join between {self.lower} and {self.upper} s"
        if self.kind == "table":
            return f"the rows and records of a table join with ttl {self.ttl}"
        return f"the records of a join of windows {self.window!r}"


def _row_order(row: tuple[float, str, int, bool, Any]) -> tuple[float, str, int]:
    return (row[0], row[1], row[2])


#: An interval entry's time (``[ts, record, matched]``): the key its sides are sorted by.
_TS = operator.itemgetter(0)


#: A window's start as a part of a result's id (windows share starts: kept).
_start_text = kept(lambda start: f"{start:.6f}")


def _id_of(record: Any) -> str:
    """Return a record's id as a part of a result's id (``-`` for no record).

    A given id (`given_id`: an event's, a dict's ``"id"``) is read at once;
    other records (an event made without an id, a digest for none) as
    `record_part` names them.
    """
    found = given_id(record)
    if found is not None:
        return id_part(found)
    return "-" if record is None else record_part(record)


def _parts_of(side: list[tuple[float, Any]]) -> list[str]:
    """Return the id parts of a closed window's records on one side.

    Identical records without ids (one digest) are told apart by their count
    (``%23digest.1`` for the second): which of them is which does not matter,
    so every run names the window's pairs alike.
    """
    parts = [_id_of(record) for _, record in side]
    if len(parts) > 1 and len(set(parts)) < len(parts):
        seen: dict[str, int] = {}
        for at, part in enumerate(parts):
            if part.startswith("%23"):
                count = seen[part] = seen.get(part, -1) + 1
                if count:
                    parts[at] = f"{part}.{count}"
    return parts


_Sided = tuple[int, Marked]


class JoinLogic(Letters, Watermarks, StatefulBatchLogic[_Sided, tuple[str, Any], dict[str, Any]]):
    """Both sides of a join for the keys of one bucket."""

    late_why = "it can no longer meet every record it should"

    def __init__(self, spec: JoinSpec, resume: dict[str, Any] | None) -> None:
        """Start empty, or from a snapshot."""
        check_layout(spec.step, resume)
        check_shape(spec.step, resume, spec.shape)
        self.spec = spec
        state = resume or {}
        self.start_watermarks(state, spec.partitions, spec.idle)
        #: window: ``(key, start) -> [end, lefts, rights]`` (sessions: ``key ->
        #: [[start, end, lefts, rights], ...]``); interval: ``key -> [lefts,
        #: rights]`` of ``[ts, record, matched]``; table: ``key -> rows``.
        self.held: dict[Any, Any] = state.get("held", {})
        if isinstance(spec.window, Session):
            sort_sessions(self.held)
        if spec.kind == "interval":
            # Each side in time order (a snapshot of an earlier evflow may hold
            # them in arrival order): a record meets and leaves by bisection.
            for sides in self.held.values():
                for entries in sides:
                    entries.sort(key=_TS)
        #: window: ``(closes, key, start)``; interval and table: ``(due, key)``.
        self.heap: list[tuple[Any, ...]] = state.get("heap", [])
        #: table: side-0 events waiting for the watermark, ``(ts, n, key, record)``.
        self.pending: list[tuple[float, int, str, Any]] = state.get("pending", [])
        self.n: int = state.get("n", 0)
        self.mark_key = (spec.step, str(id(self)))
        window = spec.window
        #: How far before the watermark a result can be dated (see `report`).
        self.lag = window.gap if isinstance(window, Session) else 0.0
        opened = state.get("open", 0)
        if opened:
            spec.counters.table()[spec.row][_OPEN] += opened

    # -- the bytewax protocol ------------------------------------------------

    def on_batch(self, values: list[tuple[int, Marked]]) -> tuple[list[tuple[str, Any]], bool]:
        """Take a batch of either side's records; emit what the watermark allows."""
        spec = self.spec
        row = spec.counters.table()[spec.row]
        out: list[tuple[str, Any]] = []
        for side, marked in values:
            part = f"{side}:{marked.partition}"
            tracked = part in self.wm
            delay = spec.delays[side]
            for records, latest, made_at in marked.segments():
                if records:
                    row[_IN] += len(records)
                    wm = self.judge(part, made_at, delay) if tracked else self.closed
                    self._take(side, part, records, wm, out, row)
                if tracked and latest != _NEVER:
                    self.reached(latest)
                    if latest - delay > self.wm[part]:
                        self.wm[part] = latest - delay
            if tracked:
                self.idle[part] = marked.idle_since
                if marked.eof:
                    self.wm[part] = _DONE
        mark = self.low_mark(time.time())
        self._close(mark, out, row)
        self.report(mark, self.lag, out)
        if self.newest != _NEVER:
            spec.counters.marks[self.mark_key] = (mark, self.newest)
        return out, False

    def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
        """Emit what wall-clock progress allows (idle partitions)."""
        spec = self.spec
        row = spec.counters.table()[spec.row]
        out: list[tuple[str, Any]] = []
        mark = self.low_mark(time.time())
        self._close(mark, out, row)
        self.report(mark, self.lag, out)
        return out, False

    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        """Both inputs ended: emit and forget everything held."""
        spec = self.spec
        row = spec.counters.table()[spec.row]
        out: list[tuple[str, Any]] = []
        self._close(_DONE, out, row)
        out.append(("w", _DONE))
        return out, True

    def notify_at(self) -> datetime | None:
        """When wall-clock progress could next emit or forget something."""
        due = [self.heap[0][0]] if self.heap else []
        if self.pending:
            due.append(self.pending[0][0])
        if not due:
            return None
        return self.wall_due(min(due) + (0.0 if self.spec.kind == "window" else 1e-6))

    def snapshot(self) -> dict[str, Any]:
        """State to resume from: watermarks, held records, what is due."""
        snap = {
            "wm": dict(self.wm),
            "closed": self.closed,
            "held": self.held,
            "heap": list(self.heap),
            "pending": list(self.pending),
            "n": self.n,
            "newest": self.newest,
            "open": self._open(),
            "layout": BUCKET_LAYOUT,
            "shape": self.spec.shape,
        }
        check_state(self.spec.step, snap)
        return snap

    def _open(self) -> int:
        kind = self.spec.kind
        if kind == "window":
            if isinstance(self.spec.window, Session):
                return sum(len(v) for v in self.held.values())
            return len(self.held)
        if kind == "interval":
            return sum(len(lefts) + len(rights) for lefts, rights in self.held.values())
        return sum(len(rows) for rows in self.held.values()) + len(self.pending)

    # -- taking records ------------------------------------------------------

    def _take(
        self,
        side: int,
        part: str,
        records: list[tuple[str, float, Any]],
        wm: float,
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        kind = self.spec.kind
        if kind == "window":
            self._take_windowed(side, records, wm, out, row)
        elif kind == "interval":
            self._take_interval(side, records, wm, out, row)
        else:
            self._take_table(side, part, records, wm, out, row)

    def _take_windowed(
        self,
        side: int,
        records: list[tuple[str, float, Any]],
        wm: float,
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        window = self.spec.window
        assert window is not None
        held = self.held
        heap = self.heap
        if isinstance(window, Session):
            gap = window.gap
            for key, ts, record in records:
                if ts + gap <= wm:
                    self._late(record, ts, wm, out, row)
                    continue
                row[_AGG] += 1
                sessions: list[list[Any]] | None = held.get(key)
                if sessions is None:
                    sessions = held[key] = []
                start, end = ts, ts + gap
                lo, hi = overlapping(sessions, start, end)
                if lo == hi:
                    joined: list[Any] = [start, end, [], []]
                    sessions.insert(lo, joined)
                    row[_OPEN] += 1
                    grown = True
                else:
                    # The sessions the record overlaps and the record make one
                    # session: the others' records go into the largest one.
                    first, last = sessions[lo], sessions[hi - 1]
                    parts = sessions[lo:hi]
                    joined = max(parts, key=lambda p: len(p[2]) + len(p[3]))
                    for p in parts:
                        if p is not joined:
                            joined[2] += p[2]
                            joined[3] += p[3]
                    # A session that only grew at its end keeps its closing
                    # entry (`pop_session` moves it on when it comes up).
                    grown = start < first[0] or hi - lo > 1
                    joined[0], joined[1] = min(start, first[0]), max(end, last[1])
                    sessions[lo:hi] = [joined]
                    row[_OPEN] -= hi - lo - 1
                    start, end = joined[0], joined[1]
                joined[2 + side].append((ts, record))
                if grown:
                    heapq.heappush(heap, (end + gap, key, start))
            return
        if isinstance(window, Tumbling):
            self._take_tumbling(window, side, records, wm, out, row)
            return
        assert isinstance(window, Sliding)
        for key, ts, record in records:
            spans = [span for span in window.assign(ts) if span[1] > wm]
            if not spans:
                self._late(record, ts, wm, out, row)
                continue
            row[_AGG] += 1
            for start, end in spans:
                slot = held.get((key, start))
                if slot is None:
                    slot = held[(key, start)] = [end, [], []]
                    heapq.heappush(heap, (end, key, start))
                    row[_OPEN] += 1
                slot[1 + side].append((ts, record))

    def _take_tumbling(
        self,
        window: Tumbling,
        side: int,
        records: list[tuple[str, float, Any]],
        wm: float,
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        """`_take_windowed` for tumbling windows: one window per record, found inline."""
        held = self.held
        heap = self.heap
        # The window of the record before (times come mostly in order): a
        # record ``lo <= ts < hi`` is in it too, without rounding.
        lo = hi = start = end = 0.0
        taken = opened = 0
        for key, ts, record in records:
            if not lo <= ts < hi:
                start, end, lo, hi = tumbling_of(window, ts)
            if end <= wm:
                self._late(record, ts, wm, out, row)
                continue
            taken += 1
            slot = held.get((key, start))
            if slot is None:
                slot = held[(key, start)] = [end, [], []]
                heapq.heappush(heap, (end, key, start))
                opened += 1
            slot[1 + side].append((ts, record))
        row[_AGG] += taken
        row[_OPEN] += opened

    def _take_interval(
        self,
        side: int,
        records: list[tuple[str, float, Any]],
        wm: float,
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        spec = self.spec
        lower, upper = spec.lower, spec.upper
        held = self.held
        for key, ts, record in records:
            if ts < wm:
                self._late(record, ts, wm, out, row)
                continue
            row[_AGG] += 1
            row[_OPEN] += 1
            sides = held.get(key)
            if sides is None:
                sides = held[key] = [[], []]
            entry = [ts, record, False]
            if side == 0:
                # The right records at ts + lower to ts + upper, in time order.
                rights = sides[1]
                lo = bisect.bisect_left(rights, ts + lower, key=_TS)
                hi = bisect.bisect_right(rights, ts + upper, key=_TS)
                for other in rights[lo:hi]:
                    self._emit(key, record, other[1], ts, other[0], None, None, out, row)
                    other[2] = entry[2] = True
                bisect.insort_right(sides[0], entry, key=_TS)
                heapq.heappush(self.heap, (ts + upper, key))
            else:
                # The left records at lt with lt + lower <= ts <= lt + upper: found
                # by bisection a little wide (the subtractions round), then tested
                # exactly as written.
                lefts = sides[0]
                slack = (abs(ts) + abs(lower) + abs(upper)) * 1e-13
                lo = bisect.bisect_left(lefts, ts - upper - slack, key=_TS)
                hi = bisect.bisect_right(lefts, ts - lower + slack, key=_TS)
                for other in lefts[lo:hi]:
                    if other[0] + lower <= ts <= other[0] + upper:
                        self._emit(key, other[1], record, other[0], ts, None, None, out, row)
                        other[2] = entry[2] = True
                bisect.insort_right(sides[1], entry, key=_TS)
                heapq.heappush(self.heap, (ts - lower, key))

    def _take_table(
        self,
        side: int,
        part: str,
        records: list[tuple[str, float, Any]],
        wm: float,
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        spec = self.spec
        held = self.held
        for key, ts, record in records:
            if ts < wm:
                self._late(record, ts, wm, out, row)
                continue
            self.n += 1
            if side == 0:
                row[_AGG] += 1
                row[_OPEN] += 1
                heapq.heappush(self.pending, (ts, self.n, key, record))
                continue
            removes = False
            if spec.deleted is not None:
                try:
                    removes = bool(spec.deleted(record))
                except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                    self._failed(payload_text(record), ts, exc, spec.deleted, out, row)
                    continue
            row[_AGG] += 1
            row[_OPEN] += 1
            rows = held.setdefault(key, [])
            # Of two rows with one time, the one of the later partition (by name)
            # wins, or the later one of the same partition: the same on every run.
            bisect.insort(rows, (ts, part, self.n, removes, record), key=_row_order)
            if removes:
                heapq.heappush(self.heap, (ts, key))
            elif spec.ttl is not None:
                heapq.heappush(self.heap, (ts + spec.ttl, key))
            self._prune(key, self.closed, row)

    # -- emitting and forgetting -----------------------------------------------

    def _close(self, upto: float, out: list[tuple[str, Any]], row: list[int]) -> None:
        kind = self.spec.kind
        if kind == "window":
            self._close_windows(upto, out, row)
        elif kind == "interval":
            self._close_interval(upto, out, row)
        else:
            self._close_table(upto, out, row)
        if upto > self.closed:
            self.closed = upto

    def _close_windows(self, upto: float, out: list[tuple[str, Any]], row: list[int]) -> None:
        heap = self.heap
        held = self.held
        window = self.spec.window
        gap = window.gap if isinstance(window, Session) else 0.0
        while heap and heap[0][0] <= upto:
            closes, key, start = heapq.heappop(heap)
            if isinstance(window, Session):
                found = pop_session(held, key, start, closes, gap, heap)
                if found is None:
                    continue  # not due yet, or merged into another session since
                end, lefts, rights = found[1], found[2], found[3]
            else:
                end, lefts, rights = held.pop((key, start))
            row[_OPEN] -= 1
            self._pairs(key, lefts, rights, start, end, out, row)

    def _pairs(
        self,
        key: str,
        lefts: list[tuple[float, Any]],
        rights: list[tuple[float, Any]],
        start: float,
        end: float,
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        """Emit a closed window's pairs (and unmatched rows, for left and outer joins)."""
        how = self.spec.how
        if len(lefts) > 1:
            lefts.sort(key=_TS)
        if len(rights) > 1:
            rights.sort(key=_TS)
        last = just_before(end)  # every result of the window is dated its last instant
        made = end - _TICK
        # A `Joined` result's id holds both records' parts: found once per record.
        named = self.spec.select is None
        if lefts and rights:
            if not named:  # what select makes has no id from evflow
                for lt, left in lefts:
                    for rt, right in rights:
                        self._emit(key, left, right, lt, rt, start, end, out, row, last, made)
                return
            lparts = _parts_of(lefts) if len(lefts) > 1 else [_id_of(lefts[0][1])]
            rparts = _parts_of(rights) if len(rights) > 1 else [_id_of(rights[0][1])]
            for i, (lt, left) in enumerate(lefts):
                lp = lparts[i]
                j = 0
                for rt, right in rights:
                    rp = rparts[j]
                    j += 1  # noqa: SIM113 - a counter: cheaper than a tuple per pair
                    self._emit(key, left, right, lt, rt, start, end, out, row, last, made, lp, rp)
        elif lefts and how != "inner":
            alone: Sequence[str | None] = _parts_of(lefts) if named else [None] * len(lefts)
            for (lt, left), part in zip(lefts, alone, strict=True):
                self._emit(key, left, None, lt, _NEVER, start, end, out, row, last, made, part)
        elif rights and how == "outer":
            alone = _parts_of(rights) if named else [None] * len(rights)
            for (rt, right), part in zip(rights, alone, strict=True):
                self._emit(
                    key, None, right, _NEVER, rt, start, end, out, row, last, made, "-", part
                )

    def _close_interval(self, upto: float, out: list[tuple[str, Any]], row: list[int]) -> None:
        spec = self.spec
        how = spec.how
        heap = self.heap
        held = self.held
        lower, upper = spec.lower, spec.upper
        while heap and heap[0][0] < upto:
            _, key = heapq.heappop(heap)
            sides = held.get(key)
            if sides is None:
                continue
            lefts, rights = sides
            # Each side is in time order, so what the watermark has passed is a
            # prefix of it (a record's due time grows with its time).
            gone = 0
            for entry in lefts:
                if entry[0] + upper >= upto:
                    break
                gone += 1
                if how != "inner" and not entry[2]:
                    # Dated when it was known to meet nothing: the end of its interval.
                    done = entry[0] + upper
                    self._emit(
                        key, entry[1], None, entry[0], _NEVER, None, None, out, row,
                        _utc(done), done,
                    )  # fmt: skip
            if gone:
                del lefts[:gone]
                row[_OPEN] -= gone
            gone = 0
            for entry in rights:
                if entry[0] - lower >= upto:
                    break
                gone += 1
                if how == "outer" and not entry[2]:
                    done = entry[0] - lower
                    self._emit(
                        key, None, entry[1], _NEVER, entry[0], None, None, out, row,
                        _utc(done), done,
                    )  # fmt: skip
            if gone:
                del rights[:gone]
                row[_OPEN] -= gone
            if not lefts and not rights:
                del held[key]

    def _close_table(self, upto: float, out: list[tuple[str, Any]], row: list[int]) -> None:
        spec = self.spec
        held = self.held
        pending = self.pending
        while pending and pending[0][0] < upto:
            ts, _, key, record = heapq.heappop(pending)
            row[_OPEN] -= 1
            found = None
            rows = held.get(key)
            if rows:
                at = bisect.bisect_right(rows, ts, key=lambda r: r[0]) - 1
                if at >= 0:
                    rt, _, _, removes, value = rows[at]
                    if not removes and (spec.ttl is None or ts - rt <= spec.ttl):
                        found = (rt, value)
            if found is not None:
                self._emit(key, record, found[1], ts, found[0], None, None, out, row)
            elif spec.missing == "none":
                self._emit(key, record, None, ts, _NEVER, None, None, out, row)
            else:
                self._unmatched(key, record, ts, out, row)
        if upto == _DONE:
            # The input ended: no event is to come, and no row is needed.
            row[_OPEN] -= sum(len(rows) for rows in held.values())
            held.clear()
            self.heap.clear()
            return
        # Rows that no event still to come can be joined with.
        mark = min(upto, pending[0][0]) if pending else upto
        heap = self.heap
        while heap and heap[0][0] < mark:
            _, key = heapq.heappop(heap)
            self._prune(key, mark, row)

    def _prune(self, key: str, mark: float, row: list[int]) -> None:
        """Drop the rows of ``key`` that no event at ``mark`` or later can be joined with."""
        rows = self.held.get(key)
        if not rows or mark == _NEVER:
            return
        at = bisect.bisect_right(rows, mark, key=lambda r: r[0]) - 1
        if at < 0:
            return
        ts, _, _, removes, _ = rows[at]
        ttl = self.spec.ttl
        if (removes and ts < mark) or (ttl is not None and ts + ttl < mark):
            # The row valid at mark is a delete marker, or has expired. (A marker dated
            # mark itself is kept: a row of its time from a partition whose name sorts
            # before its own may still come, and must lose to it.)
            at += 1
        if at:
            del rows[:at]
            row[_OPEN] -= at
        if not rows:
            del self.held[key]

    def _emit(
        self,
        key: str,
        left: Any,
        right: Any,
        lt: float,
        rt: float,
        start: float | None,
        end: float | None,
        out: list[tuple[str, Any]],
        row: list[int],
        when: datetime | None = None,
        made_at: float | None = None,
        lpart: str | None = None,
        rpart: str | None = None,
    ) -> None:
        """Emit a pair (a `Joined`, or what ``select`` makes of it), dated ``when``.

        ``when`` (``made_at`` in seconds) is by default the newer record's time;
        ``lpart`` and ``rpart``, the records' parts of its id, are by default
        read from them (`_id_of`).
        """
        spec = self.spec
        row[_CREATED] += 1
        # The records are held in the step's state and meet others later: each
        # result has its own copy of a mutable one, which later steps may change.
        left = own(left)
        right = own(right)
        if spec.select is not None:
            try:
                value = spec.select(left, right)
            except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                pair = {"key": key, "left": payload_text(left), "right": payload_text(right)}
                text = json.dumps(pair, sort_keys=True)
                self._failed(text, max(lt, rt), exc, spec.select, out, row)
                return
        else:
            # A pair meets in each sliding window that holds both: its start tells them apart.
            window = "" if start is None else f"{_start_text(start)}/"
            if lpart is None:
                lpart = _id_of(left)
            if rpart is None:
                rpart = _id_of(right)
            ident = f"{spec.step}/{id_part(key)}/{window}{lpart}/{rpart}"
            fields = {
                "type": spec.step,
                "id": ident,
                "time": when or _utc(max(lt, rt)),
                "key": key,
                "left": left,
                "right": right,
                "start": None if start is None else _utc(start),
                "end": None if end is None else _utc(end),
            }
            value = construct_valid(Joined, fields, _JOINED_FIELDS)
        if spec.notes is not None:
            at = max(lt, rt) if made_at is None else made_at
            self.note(out, spec.notes, value, at, dated=spec.select is None)
        out.append(("r", value))
        row[_OUT] += 1

    # -- what cannot be joined -------------------------------------------------

    def _unmatched(
        self, key: str, record: Any, ts: float, out: list[tuple[str, Any]], row: list[int]
    ) -> None:
        # The event was held (aggregated); its dead letter is a record the step made.
        row[_CREATED] += 1
        row[_DEAD] += 1
        message = (
            f"no row of key {key!r} was valid in the table at {_utc(ts).isoformat()} (none "
            f"yet, deleted, or older than the table's ttl). Hint: join(..., missing='none') "
            f"emits such events with right=None."
        )
        out.append(self._dead("unmatched", "Unmatched", message, payload_text(record), ts))
