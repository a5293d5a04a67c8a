"""Keyed streams: windows and aggregates, with the legal order in the types.

``key_by`` gives a `KeyedStream`; only it has ``window`` and ``aggregate``;
``window`` gives a `WindowedStream`, whose only step is ``aggregate``; that
gives an `AggregateStream` of typed result records, with the late events
of the window apart on ``.late``.
"""

from __future__ import annotations

import keyword
import re
import zlib
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, overload

from pydantic import AwareDatetime, create_model

from operators import Context, Event, Joined, Policy, Timer, as_policy
from operators._stage import check_arity
from operators.agg import Aggregator, kinds_of
from operators.windows import Clock, Count, EventTime, Window, event_time, to_seconds
from pipelines._building.builder import Pipeline, Stream
from pipelines._building.graph import Graph, Node, Port, check_name
from pipelines._building.joins import (
    JoinStream,
    ProcessStream,
    Table,
    bounded,
    check_clock,
    early_upstream,
    join_streams,
    no_watermark,
    process_stream,
    unmarked_upstream,
)

__all__ = ["AggregateStream", "AnyResult", "KeyedStream", "WindowResult", "WindowedStream"]

T = TypeVar("T")
U = TypeVar("U")
Out = TypeVar("Out")
S = TypeVar("S")
E = TypeVar("E", bound=Event)
L = TypeVar("L")

_RESERVED = {"key", "start", "end", "type", "id", "time", "final"}


class WindowResult(Event):
    """One aggregate result: the key, the window (None for running aggregates), values.

    Each aggregate step makes its own subclass with one field per named
    aggregator; its ``type`` is the step name and its ``id`` is
    ``step/key/window start``, so results are the same on every run. A
    subclass named with ``aggregate(into=...)`` keeps its own ``type`` (its
    lower-cased name, or the literal it declares), so its records validate
    as that class when read back.
    """

    #: What a result's ``time`` is: a clock on another field is refused after it.
    __evflow_dated__: ClassVar[str] = (
        "their window's last instant (one microsecond before end; a running aggregate's: "
        "the wall clock)"
    )

    key: str
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    #: False for an early result (``aggregate(emit="early")``): the window's value
    #: so far, before it closed; True for the one result of a closed window.
    final: bool = True


class AnyResult(WindowResult):
    """The base of the result class each aggregate step makes (without ``into=``).

    Its named values are fields made at build time: to a type checker they are
    attributes of any type. Name your own `WindowResult` subclass with
    ``aggregate(into=...)`` to have them checked.
    """

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


#: The result model of an aggregate (your own with ``aggregate(into=...)``).
R = TypeVar("R", bound=WindowResult)


class KeyedStream(Stream[T]):
    """A stream keyed by a function of its records; it alone can be aggregated."""

    __slots__ = ("_key",)

    def __init__(
        self,
        pipeline: Pipeline,
        port: Port,
        classes: tuple[type[Event], ...] | None = None,
        scope: str = "",
        *,
        key: Callable[[Any], str],
    ) -> None:
        """Point at ``port``, keyed by ``key`` (use `Stream.key_by` instead)."""
        super().__init__(pipeline, port, classes, scope)
        self._key = key

    def _rebuild(
        self, pipe: Pipeline, port: Port, classes: tuple[type[Event], ...] | None
    ) -> Stream[Any]:
        return KeyedStream(pipe, port, classes, self._scope, key=self._key)

    @overload
    def filter(
        self, predicate: type[E], *, name: str | None = ..., on_error: Policy = ...
    ) -> KeyedStream[E]: ...

    @overload
    def filter(
        self, predicate: Callable[[T], object], *, name: str | None = ..., on_error: Policy = ...
    ) -> KeyedStream[T]: ...

    def filter(
        self, predicate: Any, *, name: str | None = None, on_error: Policy = "dead_letter"
    ) -> KeyedStream[Any]:
        """Keep records for which ``predicate`` holds (or of one class); stays keyed."""
        result = super().filter(predicate, name=name, on_error=on_error)
        assert isinstance(result, KeyedStream)
        return result

    def inspect(
        self,
        fn: Callable[[T], object] = print,
        *,
        name: str | None = None,
        on_error: Policy = "dead_letter",
    ) -> KeyedStream[T]:
        """Call ``fn(record)`` for its side effect; stays keyed."""
        result = super().inspect(fn, name=name, on_error=on_error)
        assert isinstance(result, KeyedStream)
        return result

    def as_table(
        self,
        *,
        ttl: timedelta | float | None = None,
        deleted: Callable[[T], object] | None = None,
    ) -> Table[T]:
        """View this stream as a changelog: the latest record per key, as of each moment.

        A row of a key replaces the one before; a row for which ``deleted``
        holds removes the key. With ``ttl`` a row is valid that long after
        its own event time, and is dropped from state once no event to come
        can be joined with it. The table is the right side of `join`.
        """
        seconds = None if ttl is None else to_seconds(ttl, what="as_table ttl")
        if deleted is not None and not callable(deleted):
            msg = (
                f"as_table on {self.step!r}: deleted= must be a predicate of a row; got "
                f"{deleted!r}. Hint: deleted=lambda c: c.closed."
            )
            raise TypeError(msg)
        if deleted is not None:
            where = f"as_table on {self.step!r}"
            check_arity(deleted, 1, where, "deleted", "a row", "deleted=lambda c: c.closed.")
        return Table(self, seconds, deleted)

    @overload
    def join(
        self,
        other: Table[U],
        *,
        missing: Literal["none", "dead_letter"] = ...,
        select: None = None,
        clock: Clock | tuple[Clock, Clock] | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
    ) -> JoinStream[Joined[T, U]]: ...

    @overload
    def join(
        self,
        other: Table[U],
        *,
        missing: Literal["none", "dead_letter"] = ...,
        select: Callable[[T, U | None], Out],
        clock: Clock | tuple[Clock, Clock] | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
    ) -> JoinStream[Out]: ...

    @overload
    def join(
        self,
        other: KeyedStream[U],
        *,
        window: Window | None = ...,
        between: tuple[timedelta | float, timedelta | float] | None = ...,
        how: Literal["inner", "left", "outer"] = ...,
        select: None = None,
        clock: Clock | tuple[Clock, Clock] | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
    ) -> JoinStream[Joined[T, U]]: ...

    @overload
    def join(
        self,
        other: KeyedStream[U],
        *,
        window: Window | None = ...,
        between: tuple[timedelta | float, timedelta | float] | None = ...,
        how: Literal["inner"] = ...,
        select: Callable[[T, U], Out],
        clock: Clock | tuple[Clock, Clock] | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
    ) -> JoinStream[Out]: ...

    @overload
    def join(
        self,
        other: KeyedStream[U],
        *,
        window: Window | None = ...,
        between: tuple[timedelta | float, timedelta | float] | None = ...,
        how: Literal["left"],
        select: Callable[[T, U | None], Out],
        clock: Clock | tuple[Clock, Clock] | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
    ) -> JoinStream[Out]: ...

    @overload
    def join(
        self,
        other: KeyedStream[U],
        *,
        window: Window | None = ...,
        between: tuple[timedelta | float, timedelta | float] | None = ...,
        how: Literal["outer"],
        select: Callable[[T | None, U | None], Out],
        clock: Clock | tuple[Clock, Clock] | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
    ) -> JoinStream[Out]: ...

    def join(
        self,
        other: Any,
        *,
        window: Window | None = None,
        between: tuple[timedelta | float, timedelta | float] | None = None,
        how: str = "inner",
        missing: str = "none",
        select: Callable[[Any, Any], Any] | None = None,
        clock: Clock | tuple[Clock, Clock] | None = None,
        name: str | None = None,
        on_error: Policy = "dead_letter",
    ) -> JoinStream[Any]:
        """Join this stream with another keyed stream, or with a table, per key on event time.

        - ``window=``: the records of both sides that fall into the same
          window (tumbling, sliding, session) meet when it closes;
        - ``between=(lower, upper)``: a record at ``t`` meets the other
          side's records at ``t + lower`` to ``t + upper``, as soon as both
          are there;
        - a `Table` (``other.as_table(...)``): each record meets the row of
          its key valid at its own time; ``missing`` says what happens when
          there is none (``"none"``: emitted with ``right=None``;
          ``"dead_letter"``: an ``unmatched`` dead letter).

        ``how`` (stream joins): ``"inner"`` emits pairs only; ``"left"``
        also the left records that met nothing, with ``right=None``;
        ``"outer"`` also such right records. Results are `Joined` records
        (``key``, ``left``, ``right``, the window's ``start`` and ``end``),
        or what ``select(left, right)`` returns. Records behind their
        partition's watermark go to ``.late``. Both sides run on event time
        (``clock``: one clock, or one per side; default the ``time`` field);
        the output depends neither on how the two inputs interleave nor on
        the batch size or the worker count.

        >>> from datetime import datetime, timezone
        >>> from pipelines import Event, Pipeline, sources, sinks
        >>> class Order(Event):
        ...     user: str
        >>> class Pay(Event):
        ...     user: str
        >>> t = lambda s: datetime.fromtimestamp(s, timezone.utc)
        >>> p = Pipeline("shop")
        >>> orders = p.read(sources.memory([Order(user="ada", time=t(0))]), name="orders")
        >>> pays = p.read(sources.memory([Pay(user="ada", time=t(5))]), name="pays")
        >>> by_user = lambda e: e.user
        >>> pays = pays.key_by(by_user, name="pay_user")
        >>> paid = orders.key_by(by_user).join(pays, between=(0, 60))
        >>> (j,) = paid.write(sinks.memory("o")).run()["o"]
        >>> j.key, j.left.type, j.right.type
        ('ada', 'order', 'pay')
        """
        return join_streams(
            self,
            other,
            window=window,
            between=between,
            how=how,
            select=select,
            missing=missing,
            clock=clock,
            name=name,
            on_error=on_error,
        )

    def process(
        self,
        on_event: Callable[[S, T, Context[Out]], S | None],
        *,
        initial: Callable[[], S],
        on_timer: Callable[[S, Timer, Context[Out]], S | None] | None = None,
        ttl: timedelta | float | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        on_error: Policy = "dead_letter",
    ) -> ProcessStream[Out]:
        """Handle each key's events in event-time order, with state and timers.

        ``on_event(state, event, ctx)`` returns the key's new state (None
        drops it); the first call of a key gets ``initial()``. ``ctx.emit(x)``
        sends a record on, ``ctx.timer(at, name)`` sets an event-time timer
        (``on_timer(state, timer, ctx)`` is called once the watermark passes
        it), ``ctx.processing_timer(at, name)`` a wall-clock one,
        ``ctx.cancel(name)`` removes one. Events are delivered once the
        watermark passes their time, in time order, a key's timers after its
        events of the same time, so the output does not depend on the
        schedule; state and timers are in the snapshots. With ``ttl`` a key's
        state is dropped once event time passes its last event by ``ttl``. At
        the end of a bounded input every timer fires (a timer that ``on_timer``
        sets then never does: it is counted as ``unfired``); the states left
        are then dropped and counted as ``expired`` in the summary.

        >>> from datetime import datetime, timedelta, timezone
        >>> from pipelines import Event, Pipeline, sources, sinks
        >>> class Login(Event):
        ...     user: str
        >>> t = lambda s: datetime.fromtimestamp(s, timezone.utc)
        >>> def count(n, e, ctx):  # say how many logins each user made in 60 s
        ...     if n == 0:
        ...         ctx.timer(ctx.time + timedelta(seconds=60))
        ...     return n + 1
        >>> def report(n, timer, ctx):
        ...     ctx.emit((timer.key, n))
        ...     return None
        >>> logins = [Login(user=u, time=t(s)) for u, s in [("ada", 0), ("ada", 30), ("ada", 90)]]
        >>> p = Pipeline("logins").read(sources.memory(logins)).key_by(lambda e: e.user)
        >>> done = p.process(count, initial=int, on_timer=report).write(sinks.memory("o")).run()
        >>> print(*done["o"])
        ('ada', 2) ('ada', 1)
        """
        return process_stream(
            self,
            on_event,
            initial=initial,
            on_timer=on_timer,
            ttl=ttl,
            clock=clock,
            name=name,
            on_error=on_error,
        )

    def window(self, window: Window, *, clock: Clock | None = None) -> WindowedStream[T]:
        """Window each key's records; the next step is ``aggregate``.

        ``clock`` defaults to ``event_time("time")`` (the events' own time,
        no delay allowed); `operators.windows.processing_time` uses the wall clock.
        """
        if not isinstance(window, Window):
            msg = (
                f"window() needs a window; got {type(window).__name__} {window!r}. Hint: "
                f"window(windows.tumbling(seconds=60))."
            )
            raise TypeError(msg)
        clock = event_time("time") if clock is None else clock
        if not isinstance(clock, Clock):
            msg = (
                f"window(clock=...) needs windows.event_time(...) or "
                f"windows.processing_time(); got {clock!r}."
            )
            raise TypeError(msg)
        check_clock(clock, self._classes, f"window on {self.step!r}")
        return WindowedStream(self, window, clock)

    @overload
    def aggregate(
        self,
        *,
        into: type[R],
        emit: Literal["final", "running"] = ...,
        ttl: timedelta | float | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
        **aggregators: Aggregator,
    ) -> AggregateStream[R, T]: ...

    @overload
    def aggregate(
        self,
        *,
        into: None = None,
        emit: Literal["final", "running"] = ...,
        ttl: timedelta | float | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
        **aggregators: Aggregator,
    ) -> AggregateStream[AnyResult, T]: ...

    def aggregate(
        self,
        *,
        into: type[WindowResult] | None = None,
        emit: Literal["final", "running"] = "final",
        ttl: timedelta | float | None = None,
        name: str | None = None,
        on_error: Policy = "dead_letter",
        **aggregators: Aggregator,
    ) -> AggregateStream[Any, T]:
        """Keep a running aggregate per key, without windows.

        ``emit="running"`` emits the key's result after every event;
        ``emit="final"`` once, when a bounded input ends. With ``ttl`` a key
        idle that long (wall clock) is dropped, its final result emitted first.
        ``into`` names the result model (see `WindowedStream.aggregate`).
        """
        if emit not in ("final", "running"):
            msg = f"aggregate: emit must be 'final' or 'running'; got {emit!r}."
            raise ValueError(msg)
        seconds = None if ttl is None else to_seconds(ttl, what="aggregate ttl")
        if emit == "final" and seconds is None and not bounded(self._port.node):
            msg = (
                f"aggregate on {self.step!r}: emit='final' needs a bounded input, but a "
                f"source upstream never ends, so no result would ever come. Hint: "
                f"window it first (.window(windows.tumbling(seconds=60)).aggregate(...)), "
                f"use emit='running', or give a ttl."
            )
            raise ValueError(msg)
        return _aggregate(
            self, None, None, name, on_error, aggregators, emit=emit, ttl=seconds, into=into
        )


class WindowedStream(Generic[T]):
    """A keyed stream cut into windows; its one step is ``aggregate``."""

    __slots__ = ("_clock", "_everything", "_keyed", "_window")

    def __init__(self, keyed: KeyedStream[T], window: Window, clock: Clock) -> None:
        """Hold the keyed stream, window and clock (use `KeyedStream.window`)."""
        self._keyed = keyed
        self._window = window
        self._clock = clock
        #: A window over the whole stream (`Stream.window_all`): combine where read.
        self._everything = False

    def __repr__(self) -> str:
        """Show the window."""
        return f"WindowedStream(at={self._keyed.step!r}, window={self._window.label})"

    @overload
    def aggregate(
        self,
        *,
        into: type[R],
        emit: Literal["final", "early"] = ...,
        every: timedelta | float | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
        combine: bool = ...,
        **aggregators: Aggregator,
    ) -> AggregateStream[R, T]: ...

    @overload
    def aggregate(
        self,
        *,
        into: None = None,
        emit: Literal["final", "early"] = ...,
        every: timedelta | float | None = ...,
        name: str | None = ...,
        on_error: Policy = ...,
        combine: bool = ...,
        **aggregators: Aggregator,
    ) -> AggregateStream[AnyResult, T]: ...

    def aggregate(
        self,
        *,
        into: type[WindowResult] | None = None,
        emit: Literal["final", "early"] = "final",
        every: timedelta | float | None = None,
        name: str | None = None,
        on_error: Policy = "dead_letter",
        combine: bool = True,
        **aggregators: Aggregator,
    ) -> AggregateStream[Any, T]:
        """Aggregate each key's windows: one result record per key and window.

        Late events (behind the watermark) go to ``.late`` of the result.
        ``into`` is your own subclass of `WindowResult` with one field per
        aggregator (and defaults for any other field): the results are of that
        class, so a type checker knows their fields (``w.totl`` is an error).
        Without it, each step makes its own result class.

        On more than one process, tumbling event-time windows whose aggregators
        merge are first aggregated where the events are read, and partial
        windows cross to the process of their key instead of the events,
        pickled (``combine=False`` turns that off). Results are the same; only an
        event that reaches a window already closed while its partition was
        idle, or across a resume, is dead-lettered by its id without its
        payload (unless ``.late`` is written, which keeps late events whole).

        ``emit="early"`` also emits each open window's value so far, every
        ``every`` (wall clock) while events change it: early results have
        ``final=False`` and an id ending ``/early-N``; the one result of the
        closed window has ``final=True``, exact as ever. Steps after it see
        both: filter on ``r.final`` to keep only the final ones.
        """
        if emit not in ("final", "early"):
            msg = f"aggregate: emit must be 'final' or 'early' for a window; got {emit!r}."
            raise ValueError(msg)
        seconds = None
        if emit == "early":
            if every is None:
                msg = (
                    "aggregate(emit='early') needs every=: how often (wall clock) an open "
                    "window emits its value so far. Hint: every=timedelta(seconds=5)."
                )
                raise ValueError(msg)
            if isinstance(self._window, Count):
                msg = "aggregate(emit='early') needs a tumbling, sliding or session window."
                raise ValueError(msg)
            seconds = to_seconds(every, what="aggregate every")
        elif every is not None:
            msg = "aggregate: every= is for emit='early'. Hint: add emit='early'."
            raise ValueError(msg)
        return _aggregate(
            self._keyed,
            self._window,
            self._clock,
            name,
            on_error,
            aggregators,
            emit=emit,
            every=seconds,
            combine=combine and emit == "final",
            into=into,
            everything=self._everything,
        )


class AggregateStream(Stream[R], Generic[R, L]):
    """The results of an aggregate; ``.late`` holds the events that came too late."""

    __slots__ = ("_late",)

    def __init__(
        self,
        pipeline: Pipeline,
        port: Port,
        classes: tuple[type[Event], ...],
        scope: str,
        late: Stream[L],
    ) -> None:
        """Point at the results, with the late stream beside them."""
        super().__init__(pipeline, port, classes, scope)
        self._late = late

    @property
    def late(self) -> Stream[L]:
        """Events behind the watermark; if not written anywhere, they become dead letters."""
        return self._late._at(self._pipeline)

    @property
    def result_model(self) -> type[WindowResult]:
        """The pydantic model of this step's result records."""
        model: type[WindowResult] = self._port.node.params["result_model"]
        return model


def _aggregate(
    keyed: KeyedStream[Any],
    window: Window | None,
    clock: Clock | None,
    name: str | None,
    on_error: Policy,
    aggregators: dict[str, Aggregator],
    *,
    emit: str = "final",
    ttl: float | None = None,
    every: float | None = None,
    combine: bool = False,
    into: type[WindowResult] | None = None,
    everything: bool = False,
) -> AggregateStream[Any, Any]:
    label = "running" if window is None else window.label
    step = check_name(name) if name else None
    shown = step or f"aggregate_{label}"
    if not aggregators:
        msg = (
            f"step {shown!r} (aggregate): no aggregators given. Hint: "
            f"aggregate(views=agg.count(), revenue=agg.sum('amount'))."
        )
        raise ValueError(msg)
    for out_name, aggregator in aggregators.items():
        if not isinstance(aggregator, Aggregator):
            msg = (
                f"step {shown!r} (aggregate): {out_name}= must be an aggregator from "
                f"operators.agg (or a subclass of agg.Aggregator); got "
                f"{type(aggregator).__name__} {aggregator!r}. Hint: {out_name}=agg.count()."
            )
            raise TypeError(msg)
        if out_name in _RESERVED or keyword.iskeyword(out_name) or out_name.startswith("_"):
            msg = (
                f"step {shown!r} (aggregate): {out_name!r} cannot name a result value "
                f"(reserved: {sorted(_RESERVED)}). Hint: pick another name."
            )
            raise ValueError(msg)
        if hasattr(WindowResult, out_name):
            msg = (
                f"step {shown!r} (aggregate): {out_name!r} cannot name a result value: every "
                f"result has a {out_name!r} of its own (results are events), which it would "
                f"hide. Hint: pick another name, such as {out_name + '_n'!r}."
            )
            raise ValueError(msg)
        if keyed.event_classes is not None:
            aggregator.check(keyed.event_classes, shown)
    if isinstance(clock, EventTime):
        found = unmarked_upstream(keyed._port.node)
        if found is not None:
            raise no_watermark(shown, "aggregate", found)
    early = early_upstream(keyed._port.node)
    if early is not None:
        msg = (
            f"aggregate {shown!r} would take in the early results of {early.name!r} "
            f"(emit='early') besides its final ones: each window's value so far, again and "
            f"again, would be counted with it. Hint: keep the final ones first, "
            f".filter(lambda r: r.final), before key_by(...) or window_all(...)."
        )
        raise ValueError(msg)
    pipeline = keyed.pipeline
    graph: Graph = pipeline.graph
    step = step or graph.unique(keyed._auto("aggregate", f"{label}_{'_'.join(aggregators)}"))
    model = (
        _result_model(step, aggregators, keyed.event_classes)
        if into is None
        else _check_into(into, aggregators, keyed.event_classes)
    )
    node = Node(
        step,
        "aggregate",
        (keyed._port,),
        keyed._key,
        as_policy(on_error),
        {
            "window": window,
            "clock": clock,
            "aggregators": dict(aggregators),
            "result_model": model,
            "emit": emit,
            "ttl": ttl,
            "every": every,
            "everything": everything,
            "combine": combine,
            "classes": keyed.event_classes,
        },
    )
    pipe = pipeline._with(graph.add(node))
    late: Stream[Any] = Stream(pipe, Port(node, "late"), keyed.event_classes, f"{step}_late")
    return AggregateStream(pipe, Port(node), (model,), keyed._scope, late)


def _check_into(
    into: Any, aggregators: dict[str, Aggregator], classes: tuple[type[Event], ...] | None
) -> type[WindowResult]:
    """Check a result model the user names: a WindowResult with a field per aggregator.

    Each field must be able to hold what its aggregator gives (see `_fits`).
    """
    if not (isinstance(into, type) and issubclass(into, WindowResult)):
        msg = (
            f"aggregate(into=...) must be a subclass of WindowResult; got {into!r}. Hint: "
            f"class Totals(WindowResult): n: int = 0."
        )
        raise TypeError(msg)
    fields = into.model_fields
    missing = [n for n in aggregators if n not in fields]
    if missing:
        msg = (
            f"aggregate(into={into.__name__}): {into.__name__} has no field for {missing}; "
            f"its fields are {sorted(fields)}. Hint: add {missing[0]}: ... = None to it."
        )
        raise ValueError(msg)
    base = WindowResult.model_fields
    unfilled = [
        n for n, f in fields.items() if n not in aggregators and n not in base and f.is_required()
    ]
    if unfilled:
        msg = (
            f"aggregate(into={into.__name__}): fields {unfilled} are filled by no aggregator "
            f"and have no default. Hint: give them defaults, or aggregate into them."
        )
        raise ValueError(msg)
    for name, aggregator in aggregators.items():
        declared = fields[name].annotation
        made = aggregator.typed(classes)
        if not _fits(made, declared):
            msg = (
                f"aggregate(into={into.__name__}): field {name!r} is {_shown(declared)}, but "
                f"{aggregator.label} gives {_shown(made)}: its results would be written "
                f"as what their class says they are not. Hint: declare {name}: "
                f"{_shown(made)} (or a type that holds it) in {into.__name__}."
            )
            raise TypeError(msg)
    return into


def _fits(made: Any, declared: Any) -> bool:
    """Whether a field ``declared`` so can hold some value of type ``made`` (an int a float too).

    Lenient where a type says little: ``made`` is what the values may be (for
    dicts, each kind of number), so one kind that fits is enough.

    >>> _fits(int, float), _fits(int | float, int), _fits(list[Any], list[str]), _fits(Any, str)
    (True, True, True, True)
    >>> _fits(int, str), _fits(float, int), _fits(list[Any], int)
    (False, False, False)
    """
    made_kinds, declared_kinds = kinds_of(made), kinds_of(declared)
    if made_kinds is None or declared_kinds is None:
        return True
    return any(
        issubclass(m, d) or (m is int and d in (float, Decimal))
        for m in made_kinds
        for d in declared_kinds
    )


def _shown(annotation: Any) -> str:
    """Name a type as it is written: ``int``, ``list[typing.Any]``."""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _result_model(
    step: str, aggregators: dict[str, Aggregator], classes: tuple[type[Event], ...] | None
) -> type[WindowResult]:
    fields: dict[str, Any] = {
        "type": (Literal[step], step),
    }
    for out_name, aggregator in aggregators.items():
        fields[out_name] = (aggregator.typed(classes), None)
    camel = "".join(part.capitalize() for part in step.split("_")) + "Result"
    model: type[WindowResult] = create_model(camel, __base__=AnyResult, **fields)
    # Results travel between processes pickled, by name: give each model a
    # stable, unique name in this module.
    spec = ",".join(f"{n}={a.label}:{_stable(fields[n][0])}" for n, a in aggregators.items())
    name = f"{camel}_{zlib.crc32(spec.encode()):08x}"
    model.__module__ = __name__
    model.__qualname__ = name
    globals()[name] = model
    return model


def _stable(annotation: Any) -> str:
    """Name a type the same way in every process (no object addresses).

    >>> _stable(int), _stable(int | None), _stable(type("T", (), {"__repr__": lambda s: "?"})())
    ('builtins.int', 'int | None', '?')
    """
    if isinstance(annotation, type):
        return f"{annotation.__module__}.{annotation.__qualname__}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(annotation))


Stream._keyed_class = KeyedStream  # what key_by gives (see Stream._keyed_class)
