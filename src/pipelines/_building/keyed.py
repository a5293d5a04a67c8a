"""Keyed streams: windows and aggregates, with the legal order in the types.

``key_by`` gives a `KeyedStream`; only it has ``window`` and ``aggregate``;
``window`` gives a `WindowedStream`, whose only step is ``aggregate``; that
gives an `AggregateStream` of typed result records, with the late events
of the window apart on ``.late``.
"""

from __future__ import annotations

import keyword
import zlib
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from pydantic import AwareDatetime, create_model

from operators import Event, GenerateSource, Policy, as_policy
from operators.agg import Aggregator
from operators.windows import Clock, EventTime, Window, event_time, to_seconds
from pipelines._building.builder import Pipeline, Stream
from pipelines._building.graph import Graph, Node, Port, check_name

__all__ = ["AggregateStream", "AnyResult", "KeyedStream", "WindowResult", "WindowedStream"]

T = TypeVar("T")
E = TypeVar("E", bound=Event)
L = TypeVar("L")

_RESERVED = {"key", "start", "end", "type", "id", "time"}


class WindowResult(Event):
    """One aggregate result: the key, the window (None for running aggregates), values.

    Each aggregate step makes its own subclass with one field per named
    aggregator; its ``type`` is the step name and its ``id`` is
    ``step/key/window start``, so results are the same on every run.
    """

    key: str
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None


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
        _check_clock(clock, self._classes, self.step)
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
        if emit == "final" and seconds is None and not _bounded(self._port.node):
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

    __slots__ = ("_clock", "_keyed", "_window")

    def __init__(self, keyed: KeyedStream[T], window: Window, clock: Clock) -> None:
        """Hold the keyed stream, window and clock (use `KeyedStream.window`)."""
        self._keyed = keyed
        self._window = window
        self._clock = clock

    def __repr__(self) -> str:
        """Show the window."""
        return f"WindowedStream(at={self._keyed.step!r}, window={self._window.label})"

    @overload
    def aggregate(
        self,
        *,
        into: type[R],
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
        name: str | None = ...,
        on_error: Policy = ...,
        combine: bool = ...,
        **aggregators: Aggregator,
    ) -> AggregateStream[AnyResult, T]: ...

    def aggregate(
        self,
        *,
        into: type[WindowResult] | None = None,
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
        """
        return _aggregate(
            self._keyed,
            self._window,
            self._clock,
            name,
            on_error,
            aggregators,
            combine=combine,
            into=into,
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


def _check_clock(clock: Clock, classes: tuple[type[Event], ...] | None, step: str) -> None:
    if not isinstance(clock, EventTime) or clock.field is None or classes is None:
        return
    for cls in classes:
        fields = cls.model_fields
        if clock.field not in fields:
            msg = (
                f"window on {step!r}: event_time field {clock.field!r} is not a field of "
                f"{cls.__name__}; its fields are {sorted(fields)}."
            )
            raise ValueError(msg)
        annotation = fields[clock.field].annotation
        if annotation is AwareDatetime or annotation in (int, float):
            continue
        msg = (
            f"window on {step!r}: event_time field {cls.__name__}.{clock.field} is "
            f"{getattr(annotation, '__name__', annotation)}, which allows timezone-naive "
            f"times. Hint: declare it as pydantic AwareDatetime (or epoch seconds as float)."
        )
        raise TypeError(msg)


def _bounded(node: Node) -> bool:
    if node.kind == "read":
        source = node.params["source"]
        return not (isinstance(source, GenerateSource) and source.count is None)
    return all(_bounded(port.node) for port in node.inputs)


def _upstream_aggregates(node: Node) -> bool:
    if node.kind == "aggregate":
        return True
    return any(_upstream_aggregates(port.node) for port in node.inputs)


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
    combine: bool = False,
    into: type[WindowResult] | None = None,
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
        if keyed.event_classes is not None:
            aggregator.check(keyed.event_classes, shown)
    node_up = keyed._port.node
    if isinstance(clock, EventTime) and _upstream_aggregates(node_up):
        msg = (
            f"step {shown!r} (aggregate): event-time windows after another aggregate "
            f"are not supported yet. Hint: use clock=windows.processing_time() here."
        )
        raise ValueError(msg)
    pipeline = keyed.pipeline
    graph: Graph = pipeline.graph
    step = step or graph.unique(keyed._auto("aggregate", f"{label}_{'_'.join(aggregators)}"))
    model = _result_model(step, aggregators) if into is None else _check_into(into, aggregators)
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
            "combine": combine,
        },
    )
    pipe = pipeline._with(graph.add(node))
    late: Stream[Any] = Stream(pipe, Port(node, "late"), keyed.event_classes, f"{step}_late")
    return AggregateStream(pipe, Port(node), (model,), keyed._scope, late)


def _check_into(into: Any, aggregators: dict[str, Aggregator]) -> type[WindowResult]:
    """Check a result model the user names: a WindowResult with a field per aggregator."""
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
    return into


def _result_model(step: str, aggregators: dict[str, Aggregator]) -> type[WindowResult]:
    fields: dict[str, Any] = {
        "type": (Literal[step], step),
    }
    for out_name, aggregator in aggregators.items():
        fields[out_name] = (aggregator.result_type, None)
    camel = "".join(part.capitalize() for part in step.split("_")) + "Result"
    model: type[WindowResult] = create_model(camel, __base__=AnyResult, **fields)
    # Results travel between processes pickled, by name: give each model a
    # stable, unique name in this module.
    spec = ",".join(f"{n}={a.label}" for n, a in aggregators.items())
    name = f"{camel}_{zlib.crc32(spec.encode()):08x}"
    model.__module__ = __name__
    model.__qualname__ = name
    globals()[name] = model
    return model


Stream._keyed_class = KeyedStream  # what key_by gives (see Stream._keyed_class)
