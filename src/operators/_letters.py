"""Dead letters and late records of the keyed steps that hold records (joins, process steps)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from operators._deadletter import DeadLetter, payload_text
from operators._policy import ErrorPolicy, PipelineHalted
from operators._stage import COUNTER_FIELDS, Counters, describe_function

__all__ = ["Letters", "dead_item"]

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


class Letters:
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
        message = f"{name} raised {type(exc).__qualname__}: {exc}"
        out.append(self._dead("user_error", type(exc).__qualname__, message, payload, ts, name))
