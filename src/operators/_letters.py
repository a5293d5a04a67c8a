"""Dead letters and late records of the keyed steps that hold records (joins, process steps)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from operators._deadletter import DeadLetter, explain, payload_text
from operators._event import field_reader
from operators._policy import ErrorPolicy, PipelineHalted
from operators._stage import COUNTER_FIELDS, Counters, describe_function

__all__ = ["Letters", "Making", "Notes", "dead_item"]

#: Microseconds in a second.
_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_OUT, _DEAD, _SKIPPED, _CREATED, _LATE = (
    COUNTER_FIELDS.index(f) for f in ("out", "dead", "skipped", "created", "late")
)


def _when(ts: float) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc) if math.isfinite(ts) else None


def _iso(ts: float) -> str:
    """Say an event time (or a watermark) as an ISO datetime.

    >>> _iso(60.0), _iso(float("inf"))
    ('1970-01-01T00:01:00+00:00', 'the end of input')
    """
    if ts == math.inf:
        return "the end of input"
    when = _when(ts)
    return when.isoformat() if when is not None else f"{ts:g}"


def dead_item(
    spec: Any,
    kind: str,
    error_type: str,
    message: str,
    payload: str,
    ts: float,
    function: str | None = None,
) -> tuple[str, DeadLetter]:
    """Make a dead letter of the keyed step ``spec`` describes, tagged for the split after it."""
    letter = DeadLetter.build(
        pipeline=spec.pipeline,
        step=spec.step,
        kind=kind,
        error_type=error_type,
        message=message,
        function=function,
        payload=payload,
        event_time=_when(ts),
    )
    return ("d", letter)


class Notes:
    """What the steps on event time after a step need to know of when it made its records.

    ``readers`` say how those steps read a record's time (a field's name or a
    function), where every way to them passes records on as they are
    (filters, key_by, forward, merges); None where a way changes them (a map):
    then each record's making time is noted. Otherwise only a record those
    steps would date before its making is noted (the others are on time
    however they are judged).

    >>> from datetime import datetime, timedelta, timezone
    >>> class R:
    ...     time = datetime(1970, 1, 1, 0, 1, tzinfo=timezone.utc)
    >>> Notes(["time"]).behind(R(), 60.0), Notes(["time"]).behind(R(), 61.0)
    (False, True)
    >>> Notes(None).behind(R(), 0.0), Notes(["time"]).dated, Notes([lambda r: 0]).dated
    (True, True, False)
    """

    __slots__ = ("dated", "grid", "readers")

    def __init__(
        self,
        readers: list[str | Callable[[Any], Any]] | None,
        grid: tuple[int, int, float] | None = None,
    ) -> None:
        """Read times as ``readers`` say (None: note every record).

        ``grid``: where every step that judges the records is a tumbling or
        sliding window, ``(step, offset, delay)``: its windows end at
        ``offset + k * step`` microseconds and it judges a record made at
        ``t`` against ``t - delay``. Records made at times it judges alike
        (no window end between) then share one note.
        """
        self.readers = (
            None
            if readers is None
            else [r if callable(r) else field_reader(r) for r in dict.fromkeys(readers)]
        )
        #: Whether the steps after read the ``time`` field alone: then evflow's own
        #: results (dated when they are made) need no note.
        self.dated = readers is not None and all(r == "time" for r in readers)
        self.grid = grid

    def cell(self, at: float) -> int:
        """Return which windows a record made at ``at`` is judged behind (see ``grid``).

        >>> notes = Notes(["time"], (10_000_000, 0, 2.0))  # 10 s windows, 2 s delay
        >>> notes.cell(31.0), notes.cell(32.0), notes.cell(41.999)
        (2, 3, 3)
        """
        assert self.grid is not None
        step, offset, delay = self.grid
        judged = at - delay
        k = math.floor((judged * _US - offset) / step)
        # Ends are compared as the window step computes them: (k * step + offset) / 1e6.
        while ((k + 1) * step + offset) / _US <= judged:
            k += 1
        while (k * step + offset) / _US > judged:
            k -= 1
        return k

    def behind(self, record: Any, at: float) -> bool:
        """Whether a step after this one could date ``record`` before ``at``."""
        if self.readers is None:
            return True
        if self.dated:
            # The usual case, as the step after reads it: a UTC time, by one subtraction.
            value = getattr(record, "time", None)
            if value.__class__ is datetime and value.tzinfo is timezone.utc:
                return not (value - _EPOCH).total_seconds() >= at
        for read in self.readers:
            try:
                value = read(record)
                ts = value.timestamp() if isinstance(value, datetime) else float(value)
            except Exception:  # noqa: BLE001 - the step after says what is wrong with it
                return True
            if not ts >= at:  # nan too
                return True
        return False


class Making:
    """A step on event time that notes, in its output, when it made its records."""

    def note(
        self,
        out: list[tuple[str, Any]],
        notes: Notes | None,
        record: Any,
        at: float,
        dated: bool = False,
    ) -> None:
        """Note that ``record`` (next in ``out``) was made at ``at``, where the steps after need it.

        ``dated``: the record is evflow's own result, dated ``at``.
        """
        if notes is None:
            return
        if (dated and notes.dated) or not notes.behind(record, at):
            self.made(out, None)
        else:
            self.noted(out, notes, at)

    def noted(self, out: list[tuple[str, Any]], notes: Notes, at: float) -> None:
        """Note that the next records in ``out`` (to be judged so) were made at ``at``."""
        if notes.grid is None:
            self.made(out, at)
            return
        cell = notes.cell(at)
        if self._made_in is out and self._made_at is not None and self._made_cell == cell:
            return  # judged as the record noted before it
        self.made(out, at)
        self._made_cell = cell

    #: The output list and time of the last `made` note (the list is held, not its id).
    _made_in: list[tuple[str, Any]] | None = None
    _made_at: float | None = None
    #: The `Notes.cell` of the last note, where it was made by one.
    _made_cell: int | None = None

    def made(self, out: list[tuple[str, Any]], at: float | None) -> None:
        """Note in ``out`` that the records after this are made at event time ``at``.

        Steps after this one judge them against that (see `Chunk.made`); None:
        against their partition's watermark (for records not behind their
        making, see `Notes`). A note is written only where it changes.
        """
        if self._made_in is not out:
            if at is None:
                return  # the records of an output before its first note: the same
            self._made_in = out
            self._made_at = at
            self._made_cell = None
            out.append(("t", at))
        elif self._made_at != at:
            self._made_cell = None
            self._made_at = at
            out.append(("t", at))


class Letters(Making):
    """Make a step's dead letters and send its late records on.

    The step's ``spec`` has ``pipeline``, ``step``, ``counters``,
    ``late_wanted`` and ``policy``; ``late_why`` says why a record behind its
    partition's watermark is late for this kind of step.
    """

    spec: Any
    late_why = "it can no longer be handled in time order"

    def _dead(self, kind: str, error_type: str, message: str, payload: str, ts: float,
              function: str | None = None) -> tuple[str, DeadLetter]:  # fmt: skip
        return dead_item(self.spec, kind, error_type, message, payload, ts, function)

    def _late(
        self, record: Any, ts: float, wm: float, out: list[tuple[str, Any]], row: list[int]
    ) -> None:
        """Send on (or dead-letter) a record behind its partition's watermark ``wm``."""
        row[_LATE] += 1
        if self.spec.late_wanted:
            if self.spec.notes is not None:
                self.made(out, wm)  # judged after this step against what it was behind
            out.append(("l", record))
            row[_OUT] += 1
            return
        row[_DEAD] += 1
        message = (
            f"event time {_iso(ts)} is behind the watermark {_iso(wm)} of its partition: "
            f"{self.late_why}; write the step's .late stream to a sink to keep late events apart"
        )
        out.append(self._dead("late", "LateEvent", message, payload_text(record), ts))

    def _failed(
        self,
        payload: str,
        ts: float,
        exc: Exception,
        fn: Callable[..., Any],
        out: list[tuple[str, Any]],
        row: list[int],
        *,
        held: bool = False,
    ) -> None:
        """Apply the step's error policy to a failing user function.

        ``held``: the record was already taken into the step's state, so its
        dead letter (or its skip) is a record the step made.
        """
        spec = self.spec
        policy: ErrorPolicy = spec.policy
        if held:
            row[_CREATED] += 1
        if policy.mode == "skip":
            row[_SKIPPED] += 1
            return
        name = describe_function(fn)
        if policy.mode == "halt":
            halted = PipelineHalted(spec.pipeline, spec.step, name, payload)
            halted.__cause__ = exc
            counters: Counters = spec.counters
            counters.halt(halted)
        row[_DEAD] += 1
        message = f"{name} raised {type(exc).__qualname__}: {explain(exc)}"
        out.append(self._dead("user_error", type(exc).__qualname__, message, payload, ts, name))
