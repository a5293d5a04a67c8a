"""Joins of two keyed streams, and tables of latest values, in the fluent chain.

`join_streams` checks and adds a join step (windowed, interval, or as-of a
`Table`); `KeyedStream.join` and `KeyedStream.as_table` call it. The step's
logic is `operators._joining.JoinLogic`.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from pydantic import AwareDatetime

from operators import Event, GenerateSource, Joined, Policy, as_policy
from operators._process import Context, Timer
from operators._stage import check_arity, describe_function, returns_nothing
from operators.windows import (
    LONGEST,
    Clock,
    Count,
    EventTime,
    Window,
    event_time,
    seconds_of,
    to_seconds,
)
from pipelines._building.builder import Stream
from pipelines._building.graph import Node, Port, check_name, makes_marks

__all__ = [
    "JoinStream",
    "LateStream",
    "ProcessStream",
    "Table",
    "bounded",
    "check_clock",
    "early_upstream",
    "join_streams",
    "no_watermark",
    "process_stream",
    "unmarked_upstream",
]

T = TypeVar("T")

_HOWS = ("inner", "left", "outer")


class Table(Generic[T]):
    """A keyed stream seen as a table: the latest record per key, as of each moment.

    Made by `KeyedStream.as_table`; its one use is the right side of
    ``KeyedStream.join(table)``, which joins each event with the row of its
    key that was valid at the event's own time.
    """

    __slots__ = ("deleted", "stream", "ttl")

    def __init__(
        self, stream: Any, ttl: float | None, deleted: Callable[[T], object] | None
    ) -> None:
        """Hold the keyed stream, the rows' time to live and the delete predicate."""
        self.stream = stream
        self.ttl = ttl
        self.deleted = deleted

    def __repr__(self) -> str:
        """Show where the table's rows come from."""
        return f"Table(at={self.stream.step!r}, ttl={self.ttl})"

    def join(self, other: object, **options: object) -> NoReturn:
        """Refuse: a table is the right side of a join, the stream its left."""
        msg = (
            f"a table (of {self.stream.step!r}) is the right side of a join: the stream's "
            f"events each meet the row valid at their time. Hint: stream.join(table), "
            f"e.g. orders.join(customers.as_table())."
        )
        raise TypeError(msg)

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            """Explain that a table is no stream: what a stream does, its stream does."""
            if name.startswith("_") or name in self.__slots__:
                raise AttributeError(name)
            msg = (
                f"a table (of {self.stream.step!r}) has no {name}(): it is the right side of "
                f"a join, not a stream. Hint: call {name}() on the keyed stream before "
                f".as_table() (its rows as they come), or join a stream with the table, "
                f"e.g. orders.join(customers.as_table())."
            )
            raise AttributeError(msg)


def _bound(value: Any, step: str) -> float:
    """Turn an interval bound (a timedelta or seconds, any sign) into seconds.

    One beyond 1000 years either way is refused: a record is held until the
    watermark passes the end of its interval, and times are dates (which end
    with the year 9999), so every record would be refused at run time.
    """
    seconds = seconds_of(value)
    if seconds is None:
        msg = (
            f"join {step!r}: an interval bound must be a timedelta or a number of seconds; "
            f"got {value!r}. Hint: between=(timedelta(0), timedelta(minutes=10))."
        )
        raise TypeError(msg)
    if not abs(seconds) <= LONGEST:  # (nan and infinities too)
        msg = (
            f"join {step!r}: an interval bound must be finite and at most 1000 years either "
            f"way; got {value!r}: each record is held until the watermark passes the end of "
            f"its interval, and times are dates, which end with the year 9999. Hint: "
            f"between=(timedelta(0), timedelta(days=30)); for the latest record of a key at "
            f"each event's time, join a table: join(other.as_table())."
        )
        raise ValueError(msg)
    return seconds


def _returns(fn: Any) -> str | None:
    """Name the declared return type of a key function (None: not declared).

    Resolved where it can be, else as written, so that ``-> str`` in a module
    with postponed annotations and ``-> str`` in one without name one type.
    """
    try:
        declared = typing.get_type_hints(fn).get("return")
    except Exception:  # noqa: BLE001 - unresolvable: compared as written
        try:
            declared = inspect.signature(fn).return_annotation
        except (TypeError, ValueError):
            return None
        if declared is inspect.Signature.empty:
            return None
    if declared is None:
        return None
    if isinstance(declared, str):
        return declared
    return str(getattr(declared, "__qualname__", None) or declared)


def _clock(
    given: Clock | None, side: Any, step: str, which: str, *, what: str = "join"
) -> EventTime:
    """Check one side's clock: event time, read from a field its records have."""
    clock = event_time("time") if given is None else given
    if not isinstance(clock, EventTime):
        msg = (
            f"{what} {step!r}: the {which} side's clock must be event time "
            f"(windows.event_time(...)); got {clock!r}. A {what} step orders records by "
            f"their own times, so the result does not depend on arrival order."
        )
        raise TypeError(msg)
    classes = side.event_classes
    check_clock(clock, classes, f"{what} {step!r} ({which} side, from {side.step!r})")
    return clock


def check_clock(clock: Clock, classes: tuple[type[Event], ...] | None, where: str) -> None:
    """Check that the records of ``classes`` have the clock's field, a time with a zone.

    ``where`` names the step in the messages (``window on 'key_by'``).
    """
    if not isinstance(clock, EventTime) or clock.field is None or classes is None:
        return
    for cls in classes:
        fields = cls.model_fields
        if clock.field not in fields:
            msg = (
                f"{where}: event_time field {clock.field!r} is not a field of "
                f"{cls.__name__}; its fields are {sorted(fields)}."
            )
            raise ValueError(msg)
        dated = getattr(cls, "__evflow_dated__", None)
        if dated is not None and clock.field != "time":
            msg = (
                f"{where}: {cls.__name__}.{clock.field} is not when its result happened: a "
                f"step's results are dated {dated}, and the steps after it "
                f"judge them by that (the watermark it reports). Dated by {clock.field!r}, "
                f"results would fall late, or into the next window. Hint: keep the default "
                f"clock (the results' time) and read r.{clock.field} in the next step."
            )
            raise ValueError(msg)
        annotation = fields[clock.field].annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            # A time that may be None: a record without one is a dead letter then.
            kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = kinds[0] if len(kinds) == 1 else annotation
        if annotation is AwareDatetime or annotation in (int, float):
            continue
        msg = (
            f"{where}: event_time field {cls.__name__}.{clock.field} is "
            f"{getattr(annotation, '__name__', annotation)}, which allows timezone-naive "
            f"times. Hint: declare it as pydantic AwareDatetime (or epoch seconds as float)."
        )
        raise TypeError(msg)


def bounded(node: Node) -> bool:
    if node.kind == "read":
        source = node.params["source"]
        return not (isinstance(source, GenerateSource) and source.count is None)
    return all(bounded(port.node) for port in node.inputs)


def unmarked_upstream(node: Node) -> Node | None:
    """Return a keyed step upstream of ``node`` whose results carry no watermark, if any.

    Steps on event time (timed event-time aggregates, joins, process steps)
    report their watermarks with their results; running aggregates, count
    windows, processing-time windows and keyed dispatches do not, so no step
    on event time can follow them.
    """
    if node.kind in ("aggregate", "join", "process"):
        return None if makes_marks(node) else node
    if node.kind == "dispatch" and node.params["key"] is not None:
        return node  # each key's events handed on from its worker, with no watermark
    for port in node.inputs:
        found = unmarked_upstream(port.node)
        if found is not None:
            return found
    return None


def early_upstream(node: Node) -> Node | None:
    """Return an ``emit="early"`` aggregate whose results reach ``node`` unfiltered, if any.

    Only through steps that pass every record on as it is (key_by, inspect,
    merge): a filter or a map in between is the user's choice of what goes on.
    """
    if node.kind == "aggregate":
        return node if node.params.get("emit") == "early" else None
    if node.kind not in ("key_by", "inspect", "merge"):
        return None
    for port in node.inputs:
        found = early_upstream(port.node)
        if found is not None:
            return found
    return None


def no_watermark(step: str, what: str, found: Node) -> ValueError:
    """Say that an event-time step cannot follow ``found``."""
    if found.kind == "dispatch":
        label = "keyed"
        hint = (
            "put the event-time step before it, or keep the per-key state in a process step "
            "on event time instead (keyed.process(fn, initial=...): each key's events in "
            "event-time order, the watermark carried on)"
        )
    else:
        window = found.params.get("window")
        label = "running" if window is None else window.label
        hint = "put the event-time step before it, or use an event-time window there"
    msg = (
        f"{what} {step!r} comes after {found.name!r} ({found.kind}, {label}), whose results "
        f"carry no watermark (running aggregates, count windows, processing-time windows "
        f"and keyed dispatches), so a step on event time cannot follow it: it could not tell "
        f"when its windows close (on a live input, never) nor what is late. Hint: {hint}."
    )
    return ValueError(msg)


def join_streams(
    left: Any,
    other: Any,
    *,
    window: Window | None,
    between: tuple[timedelta | float, timedelta | float] | None,
    how: str,
    select: Callable[[Any, Any], Any] | None,
    missing: str,
    clock: Clock | tuple[Clock, Clock] | None,
    name: str | None,
    on_error: Policy,
) -> JoinStream[Any]:
    """Check and add a join of ``left`` (a keyed stream) with ``other``."""
    shown = check_name(name) if name else "join"
    table = other if isinstance(other, Table) else None
    right = table.stream if table is not None else other
    if not isinstance(right, Stream) or not hasattr(right, "_key"):
        got = type(other).__name__
        msg = (
            f"join {shown!r} on {left.step!r}: the other side must be a keyed stream "
            f"(or a table of one); got {got}. Hint: join(payments.key_by(lambda p: "
            f"p.order_id), window=windows.tumbling(minutes=10))."
        )
        raise TypeError(msg)
    if right.pipeline.name != left.pipeline.name:
        msg = (
            f"join {shown!r}: stream {right.step!r} belongs to pipeline "
            f"{right.pipeline.name!r}, not {left.pipeline.name!r}. Hint: read every source "
            f"from the same Pipeline(...)."
        )
        raise ValueError(msg)
    mine, theirs = _returns(left._key), _returns(right._key)
    if mine is not None and theirs is not None and mine != theirs:
        msg = (
            f"join {shown!r}: the two sides are keyed by different types ({mine} on "
            f"{left.step!r}, {theirs} on {right.step!r}), so no key can meet its match. "
            f"Hint: key both sides by the same value, e.g. str(order_id)."
        )
        raise TypeError(msg)
    if select is not None and not callable(select):
        msg = f"join {shown!r}: select must be a function of (left, right); got {select!r}."
        raise TypeError(msg)
    if select is not None:
        given = "the left record and the right one"
        hint = "select=lambda order, customer: (order.id, customer.tier if customer else None)."
        check_arity(select, 2, f"join {shown!r}", "select", given, hint)
        if returns_nothing(select):
            msg = (
                f"join {shown!r}: select {describe_function(select)} never returns a value "
                f"(each of its returns gives None), so every match would become None. "
                f"Hint: {hint}"
            )
            raise TypeError(msg)
    params: dict[str, Any] = {"select": select, "window": None, "lower": 0.0, "upper": 0.0}
    if table is not None:
        if window is not None or between is not None:
            msg = (
                f"join {shown!r}: a join with a table matches each event with the row valid "
                f"at its time; it takes no window= or between=. Hint: join(table) alone."
            )
            raise ValueError(msg)
        if missing not in ("none", "dead_letter"):
            msg = f"join {shown!r}: missing must be 'none' or 'dead_letter'; got {missing!r}."
            raise ValueError(msg)
        if how != "inner":
            msg = (
                f"join {shown!r}: how= is for joins of two streams; with a table, say what "
                f"happens to an event whose key has no row with missing='none' (emitted "
                f"with right=None) or missing='dead_letter'."
            )
            raise ValueError(msg)
        params.update(kind="table", ttl=table.ttl, deleted=table.deleted, missing=missing)
    else:
        if how not in _HOWS:
            hint = (
                "a right join is the left join of the other side: right.join(left, how='left')"
                if how == "right"
                else "how='inner' (pairs only), 'left' or 'outer' (also what met nothing)"
            )
            msg = f"join {shown!r}: how must be one of {_HOWS}; got {how!r}. Hint: {hint}."
            raise ValueError(msg)
        if missing != "none":
            msg = (
                f"join {shown!r}: missing= is for a join with a table; a join of two "
                f"streams says what happens to records that meet nothing with how= "
                f"('left' or 'outer' emit them with None). Hint: drop missing=, or "
                f"join(other.as_table(), missing={missing!r})."
            )
            raise ValueError(msg)
        if (window is None) == (between is None):
            msg = (
                f"join {shown!r}: give exactly one of window= (a windowed join) or "
                f"between=(lower, upper) (an interval join). Hint: join(other, "
                f"window=windows.tumbling(minutes=10)) or join(other, between=(0, 600))."
            )
            raise ValueError(msg)
        if window is not None:
            if not isinstance(window, Window) or isinstance(window, Count):
                msg = (
                    f"join {shown!r}: window= must be a tumbling, sliding or session "
                    f"window; got {window!r}. Hint: windows.tumbling(minutes=10)."
                )
                raise TypeError(msg)
            params.update(kind="window", window=window)
        else:
            assert between is not None
            if not (isinstance(between, tuple) and len(between) == 2):
                msg = (
                    f"join {shown!r}: between= must be (lower, upper); got {between!r}. "
                    f"Hint: between=(timedelta(0), timedelta(minutes=10))."
                )
                raise TypeError(msg)
            lower = _bound(between[0], shown)
            upper = _bound(between[1], shown)
            if lower > upper:
                msg = (
                    f"join {shown!r}: between=({lower:g}, {upper:g}) is empty: the lower "
                    f"bound is above the upper one. Hint: between=({upper:g}, {lower:g})."
                )
                raise ValueError(msg)
            params.update(kind="interval", lower=lower, upper=upper)
        params.update(ttl=None, deleted=None, missing="none")
    params["how"] = how
    clocks = clock if isinstance(clock, tuple) else (clock, clock)
    if len(clocks) != 2:
        msg = f"join {shown!r}: clock= must be one clock or (left clock, right clock)."
        raise TypeError(msg)
    params["clocks"] = (
        _clock(clocks[0], left, shown, "left"),
        _clock(clocks[1], right, shown, "right" if table is None else "table"),
    )
    for side in (left, right):
        found = unmarked_upstream(side._port.node)
        if found is not None:
            raise no_watermark(shown, "join", found)
    # A table keeps the latest value of each key, early or final: its stream may carry both.
    for side, named, latest in ((left, "left", False), (right, "right", table is not None)):
        early = None if latest else early_upstream(side._port.node)
        if early is not None:
            msg = (
                f"join {shown!r} would pair the early results of {early.name!r} "
                f"(emit='early') on its {named} side besides its final ones: each window's "
                f"value so far, again and again, each a pair of its own. Hint: keep the final "
                f"ones first, .filter(lambda r: r.final), before key_by(...); or join a table "
                f"of the latest values, .as_table()."
            )
            raise ValueError(msg)
    params["keys"] = (left._key, right._key)
    graph = left.pipeline.graph.union([right.pipeline.graph])
    detail = {"window": "window", "interval": "interval", "table": "table"}[params["kind"]]
    step = check_name(name) if name else graph.unique(left._auto("join", detail))
    node = Node(step, "join", (left._port, right._port), None, as_policy(on_error), params)
    pipe = left.pipeline._with(graph.add(node))
    classes: tuple[type[Event], ...] | None = (Joined,) if select is None else None
    late_classes = None
    if left.event_classes is not None and right.event_classes is not None:
        late_classes = left.event_classes + tuple(
            c for c in right.event_classes if c not in left.event_classes
        )
    return JoinStream(pipe, Port(node), classes, left._scope, late_classes)


class LateStream(Stream[T]):
    """The results of a step on event time; ``.late`` holds the records that came too late."""

    __slots__ = ("_late_classes",)

    def __init__(
        self,
        pipeline: Any,
        port: Port,
        classes: tuple[type[Event], ...] | None,
        scope: str,
        late_classes: tuple[type[Event], ...] | None,
    ) -> None:
        """Point at the step's results."""
        super().__init__(pipeline, port, classes, scope)
        self._late_classes = late_classes

    @property
    def late(self) -> Stream[Any]:
        """Records behind their partition's watermark; if not written, they become dead letters."""
        node = self._port.node
        return Stream(self._pipeline, Port(node, "late"), self._late_classes, f"{node.name}_late")


class JoinStream(LateStream[T]):
    """The results of a join; ``.late`` holds either side's records that came too late."""


class ProcessStream(LateStream[T]):
    """What a process step emits; ``.late`` holds the events that came too late."""


def process_stream(
    keyed: Any,
    on_event: Callable[[Any, Any, Context[Any]], Any],
    *,
    initial: Callable[[], Any],
    on_timer: Callable[[Any, Timer, Context[Any]], Any] | None,
    ttl: timedelta | float | None,
    clock: Clock | None,
    name: str | None,
    on_error: Policy,
) -> ProcessStream[Any]:
    """Check and add a keyed process step."""
    shown = check_name(name) if name else "process"
    hint = "process(on_event, initial=dict, on_timer=on_timer)."
    for what, fn, n, given in (
        ("on_event", on_event, 3, "the key's state, the event and the context"),
        ("initial", initial, 0, ""),
        ("on_timer", on_timer, 3, "the key's state, the timer and the context"),
    ):
        if fn is None:
            continue
        if not callable(fn):
            msg = (
                f"process {shown!r} on {keyed.step!r}: {what} must be a function; got "
                f"{fn!r}. Hint: {hint}"
            )
            raise TypeError(msg)
        check_arity(fn, n, f"process {shown!r} on {keyed.step!r}", what, given, hint)
    seconds = None if ttl is None else to_seconds(ttl, what=f"process {shown!r} ttl")
    time_clock = _clock(clock, keyed, shown, "input", what="process")
    found = unmarked_upstream(keyed._port.node)
    if found is not None:
        raise no_watermark(shown, "process", found)
    pipeline = keyed.pipeline
    graph = pipeline.graph
    step = check_name(name) if name else graph.unique(keyed._auto("process", _detail(on_event)))
    params = {
        "initial": initial,
        "on_timer": on_timer,
        "ttl": seconds,
        "clock": time_clock,
        "key": keyed._key,
    }
    node = Node(step, "process", (keyed._port,), on_event, as_policy(on_error), params)
    pipe = pipeline._with(graph.add(node))
    classes = keyed.event_classes
    return ProcessStream(pipe, Port(node), None, keyed._scope, classes)


def _detail(fn: Any) -> str | None:
    name = getattr(fn, "__name__", None)
    return None if name == "<lambda>" else name
