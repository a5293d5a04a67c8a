"""The fluent builder: immutable `Pipeline`, `Stream`, `KeyedStream`, `Routes`.

Every method returns a new value and leaves ``self`` as it was. A stream
holds the pipeline built so far (its graph) and the port it reads from;
``write`` returns the pipeline with the new sink. Branches built apart are
put back together with ``|`` (graph union).
"""

from __future__ import annotations

import keyword
import os
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, overload

from bytewax.inputs import DynamicSource, FixedPartitionedSource
from bytewax.outputs import DynamicSink

from operators import (
    Event,
    IsInstance,
    MemorySink,
    Policy,
    Sink,
    Source,
    as_policy,
    event_classes,
)
from operators._bytewax_io import BytewaxSink, BytewaxSource
from operators._event import never_carried
from operators._stage import check_arity, describe_function, returns_nothing
from pipelines._building.graph import Graph, Node, Port, auto_name, check_name
from pipelines._building.thrown import Made, by_user, used, watch

if TYPE_CHECKING:
    from operators.windows import Clock, Window
    from pipelines._building.keyed import KeyedStream, WindowedStream
    from pipelines._showing.result import RunResult

__all__ = ["Pipeline", "Routes", "Stream"]

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")
W = TypeVar("W")
E = TypeVar("E", bound=Event)

_RESERVED_ROUTES = {"write", "names", "pipeline", "streams"}


def _detail(fn: Any) -> str | None:
    name = getattr(fn, "__name__", None)
    if name is None or name == "<lambda>":
        return None
    return str(name)


def _everything(record: object) -> str:
    """Key every record alike: a window over the whole stream."""
    return "all"


#: The key `_everything` gives every record: the key step need not call it.
_everything.same_key = "all"  # type: ignore[attr-defined]


def _callable(fn: Any, step: str, kind: str, what: str, hint: str) -> None:
    """Refuse what is not a function of one record."""
    if not callable(fn):
        msg = (
            f"step {step!r} ({kind}): {what} must be callable; got "
            f"{type(fn).__name__} {fn!r}. Hint: {hint}"
        )
        raise TypeError(msg)
    check_arity(
        fn, 1, f"step {step!r} ({kind})", what, "the record", hint, iterates=kind == "flat_map"
    )
    outcome = _NOTHING_MEANS.get(kind)
    if outcome is not None and returns_nothing(fn):
        msg = (
            f"step {step!r} ({kind}): {what} {describe_function(fn)} never returns a value "
            f"(each of its returns gives None), so {outcome}"
        )
        raise TypeError(msg)


#: What a function that returns nothing would do in each step that uses its value.
_NOTHING_MEANS = {
    "map": "every record would become None. Hint: return the record (return e), or use "
    "inspect(fn) for a side effect alone.",
    "filter": "every record would be filtered out. Hint: return the test (return e.amount > 100).",
    "forward": "no record would take this route. Hint: return the test (return e.amount > 100).",
}


def _check_key_type(key: Any, step: str) -> None:
    """Refuse a key function declared to return something that is not a str.

    Keys are strings (they name partitions and buckets); a function
    annotated ``-> int`` would make every record a ``key_error`` dead letter.
    """
    try:
        declared = typing.get_type_hints(key).get("return")
    except Exception:  # noqa: BLE001 - unannotated or unresolvable: known at run time
        return
    if isinstance(declared, type) and not issubclass(declared, str):
        msg = (
            f"step {step!r} (key_by): key function {describe_function(key)} is declared to "
            f"return {declared.__name__}; keys are str. Hint: return str(...), for example "
            f"key_by(lambda e: str(e.user_id))."
        )
        raise TypeError(msg)


#: What a stream has and a pipeline has not (`Pipeline.__getattr__` explains them).
_STREAM_METHODS = frozenset(
    {"write", "filter", "map", "flat_map", "key_by", "merge", "inspect", "forward", "dispatch"}
    | {"window", "window_all", "aggregate", "join", "process", "as_table"}
)


class Pipeline:
    """A named dataflow graph, built by chaining and run with `run`.

    >>> from pipelines import sources, sinks
    >>> p = Pipeline("nums").read(sources.memory([1, 2, 3])).map(lambda x: x * 10)
    >>> result = p.write(sinks.memory("out")).run()
    >>> sorted(result.outputs["out"])
    [10, 20, 30]
    """

    __slots__ = ("__weakref__", "_dead", "_graph", "_made", "_name")

    _name: str
    _graph: Graph
    _dead: Sink | None
    _made: Made | None

    def __init__(self, name: str, *, _graph: Graph | None = None, _dead: Sink | None = None):
        """Start an empty pipeline called ``name`` (a plain identifier)."""
        object.__setattr__(self, "_name", check_name(name, "pipeline name"))
        object.__setattr__(self, "_graph", _graph or Graph())
        object.__setattr__(self, "_dead", _dead)
        object.__setattr__(self, "_made", None)

    if not TYPE_CHECKING:  # every attribute stays typed as declared

        def __getattribute__(self, key: str) -> Any:
            """Note that a pipeline ``write`` returned was used (see `thrown_away`)."""
            used(object.__getattribute__(self, "_made"))
            return object.__getattribute__(self, key)

        def __getattr__(self, key: str) -> Any:
            """Explain a stream's method asked of a pipeline."""
            if key in _STREAM_METHODS:
                name = object.__getattribute__(self, "_name")
                hint = (
                    "write the stream to each sink and combine: stream.write(a) | stream.write(b)"
                    if key == "write"
                    else f"add .{key}(...) to the stream before .write(...)"
                )
                msg = (
                    f"pipeline {name!r} has no {key}(): a pipeline is what .write(...) "
                    f"returns, and steps are added to streams. Hint: {hint}; or read another "
                    f"source with pipeline.read(source)."
                )
                raise AttributeError(msg)
            msg = f"'Pipeline' object has no attribute {key!r}"
            raise AttributeError(msg)

    def __setattr__(self, key: str, value: Any) -> None:
        """Refuse changes: pipelines are immutable values."""
        msg = f"Pipeline is immutable; cannot set {key!r}. Hint: methods return a new value."
        raise AttributeError(msg)

    @property
    def name(self) -> str:
        """The pipeline's name."""
        return self._name

    @property
    def graph(self) -> Graph:
        """The logical graph (read-only)."""
        return self._graph

    @property
    def dead_letter_sink(self) -> Sink | None:
        """Where dead letters are written, or None to keep them in the result."""
        return self._dead

    @property
    def steps(self) -> list[str]:
        """Step names in the order they were added."""
        return [n.name for n in self._graph]

    def _with(self, graph: Graph, dead: Sink | None = None) -> Pipeline:
        return Pipeline(self._name, _graph=graph, _dead=dead if dead is not None else self._dead)

    def rebuilt(
        self, change: Callable[[Node], dict[str, Any] | None], *, dead: Sink | None
    ) -> Pipeline:
        """Copy this pipeline with the parameters ``change`` returns for some steps replaced.

        ``change(node)`` returns the parameters to replace (a source, a sink),
        or None to keep the step as it is; ``dead`` is the copy's dead-letter
        sink. The test seam uses it to swap sources and sinks.
        """
        from pipelines._running.compile import check_thrown

        check_thrown(self._name, self._graph)  # the copy's steps are new: told here
        replaced: dict[str, Node] = {}
        for node in self._graph:
            params = change(node)
            inputs = tuple(Port(replaced[p.node.name], p.route) for p in node.inputs)
            merged = node.params if params is None else {**node.params, **params}
            replaced[node.name] = Node(node.name, node.kind, inputs, node.fn, node.policy, merged)
        return Pipeline(self._name, _graph=Graph(replaced), _dead=dead)

    def read(
        self, source: Source[T], *, name: str | None = None, on_error: Policy = "dead_letter"
    ) -> Stream[T]:
        """Start a stream from ``source`` (see `pipelines.sources`).

        ``on_error`` applies to records the source's schema rejects; parsing
        is deterministic, so ``retry`` there acts as ``dead_letter``. A
        bytewax source (Kafka's, files) is read as ``sources.bytewax(source)``.
        """
        if isinstance(source, FixedPartitionedSource | DynamicSource):
            source = BytewaxSource(source)
        if not isinstance(source, Source):
            msg = (
                f"pipeline {self._name!r}: read() needs a source; got "
                f"{type(source).__name__} {source!r}. Hint: read(sources.memory([...])) "
                f"or read(sources.jsonl('data/*.jsonl', schema=MyEvent)); a bytewax source "
                f"with read(sources.bytewax(source, schema=MyEvent))."
            )
            raise TypeError(msg)
        step = check_name(name) if name else self._graph.unique(auto_name("read", source.label))
        classes = event_classes(source.schema) if source.schema is not None else None
        node = Node(
            step, "read", policy=as_policy(on_error), params={"source": source, "classes": classes}
        )
        pipe = self._with(self._graph.add(node))
        return Stream(pipe, Port(node), classes)

    def dead_letters(self, sink: Sink) -> Pipeline:
        """Return this pipeline with its dead letters written to ``sink``."""
        if not isinstance(sink, Sink):
            msg = (
                f"pipeline {self._name!r}: dead_letters() needs a sink; got "
                f"{type(sink).__name__}. Hint: dead_letters(sinks.jsonl('dead.jsonl'))."
            )
            raise TypeError(msg)
        return self._with(self._graph, sink)

    def __or__(self, other: Pipeline) -> Pipeline:
        """Combine two pipelines built from the same start (branches)."""
        if not isinstance(other, Pipeline):
            return NotImplemented
        if other._name != self._name:
            msg = (
                f"cannot combine pipeline {self._name!r} with pipeline {other._name!r}. "
                f"Hint: build both branches from the same Pipeline(...)."
            )
            raise ValueError(msg)
        if self._dead is not None and other._dead is not None and self._dead is not other._dead:
            msg = (
                f"pipeline {self._name!r}: the pipelines being combined write dead "
                f"letters to different sinks. Hint: call dead_letters() once, on the result."
            )
            raise ValueError(msg)
        combined = self._with(self._graph.union([other._graph]), other._dead)
        graph = object.__getattribute__(combined, "_graph")
        pairs = ((self._graph, other._graph), (other._graph, self._graph)) if by_user() else ()
        for mine, theirs in pairs:
            # `a | b` as a statement: running `a` then would leave `b`'s steps out.
            held = {id(node) for node in mine}
            apart = [node for node in theirs if id(node) not in held]
            if apart:
                writes = [node for node in apart if node.kind == "write"]
                watch(combined, self._name, graph, (writes or apart)[-1], "|")
        return combined

    def check(self) -> None:
        """Check the whole graph before running; raise on the first problem."""
        from pipelines._running.compile import check

        check(self)

    def run(
        self,
        *,
        workers: int = 1,
        processes: int = 1,
        monitor: Any = None,
        formation_timeout: float = 30.0,
        recovery: str | os.PathLike[str] | None = None,
        snapshot_interval: float = 5.0,
        restart: int = 0,
        metrics_port: int | None = None,
        progress: bool | None = None,
    ) -> RunResult:
        """Run and return the result: ``workers`` threads in each of ``processes``.

        With ``processes > 1`` this process forks a cluster of that many on
        loopback (bytewax's own cluster); results do not depend on either count.
        ``monitor`` (one process) is called with the compiled pipeline before it
        runs, for live views. A cluster that has not formed within
        ``formation_timeout`` seconds is stopped with an error. With
        ``recovery`` (a directory, created private on first use), state is
        snapshotted every ``snapshot_interval`` seconds and a later run with the
        same directory resumes from the last snapshot. With ``restart`` (and
        ``recovery``) a cluster whose process dies starts again from the last
        snapshot, up to that many times. With ``metrics_port``, Prometheus
        metrics are served on ``127.0.0.1`` while the run lasts (process i of a
        cluster on ``metrics_port + i``). In a Jupyter notebook the counts show
        and update while the run lasts (``progress=False`` turns that off).
        """
        from pipelines._running.launch import run
        from pipelines._running.metrics import Metrics

        return run(
            self,
            workers=workers,
            processes=processes,
            monitor=monitor,
            formation_timeout=formation_timeout,
            recovery=recovery,
            snapshot_interval=snapshot_interval,
            restart=restart,
            metrics=None if metrics_port is None else Metrics(metrics_port),
            progress=progress,
        )

    def __repr__(self) -> str:
        """Show the name and steps."""
        return f"Pipeline({self._name!r}, steps={self.steps})"

    def __rich__(self) -> Any:
        """Render as a tree (rich protocol)."""
        from pipelines.render import to_tree

        return to_tree(self)

    def _repr_html_(self) -> str:
        """Show as a drawing of the graph in a notebook (see `pipelines.render`)."""
        from pipelines.render import to_html

        return to_html(self)

    def _repr_svg_(self) -> str:
        """Draw the graph as SVG (Graphviz when installed, evflow's layout otherwise)."""
        from pipelines.render import to_svg

        return to_svg(self)

    def preview(
        self,
        records: Iterable[Any] | Mapping[str, Iterable[Any]] | None = None,
        *,
        limit: int = 20,
    ) -> RunResult:
        """Run on a small sample in this process; every sink becomes a memory output.

        The sample is ``records`` (read by every source, parsed with its
        schema; a dict of lists by read step name gives each step named its
        own) or else the first ``limit`` records of each source. Memory
        sinks keep their names; any other sink becomes a memory output named
        after its write step. Nothing is written anywhere.
        The result shows as tables (HTML in a notebook, rich in a terminal).

        >>> from pipelines import sources, sinks
        >>> p = Pipeline("p").read(sources.memory(range(100))).map(lambda x: 10 // (x % 7))
        >>> result = p.write(sinks.jsonl("never_written.jsonl")).preview(limit=10)
        >>> result["jsonl_never_written"], result.dead
        ([10, 5, 3, 2, 2, 1, 10, 5], 2)
        """
        from pipelines._sample import preview

        return preview(self, records, limit=limit)


class Stream(Generic[T]):
    """A stream of records of type ``T`` inside a pipeline under construction."""

    __slots__ = ("__weakref__", "_classes", "_made", "_pipeline", "_port", "_scope")

    #: The keyed stream class that ``key_by`` gives: `pipelines._building.keyed` sets
    #: it when imported (the package imports it), so that this module does not
    #: import its own subclass.
    _keyed_class: ClassVar[Any]

    def __init__(
        self,
        pipeline: Pipeline,
        port: Port,
        classes: tuple[type[Event], ...] | None = None,
        scope: str = "",
    ) -> None:
        """Point at ``port`` of ``pipeline`` (use `Pipeline.read` instead).

        ``scope`` prefixes the default names of the steps added after it, so
        that branches of a forward name their steps apart (``big_map``).
        """
        self._pipeline = pipeline
        self._port = port
        self._classes = classes
        self._scope = scope
        graph = object.__getattribute__(pipeline, "_graph")
        name = object.__getattribute__(pipeline, "_name")
        self._made = watch(self, name, graph, port.node, f".{port.node.kind}(...)")

    if not TYPE_CHECKING:  # every attribute stays typed as declared

        def __getattribute__(self, key: str) -> Any:
            """Note that the stream was used (see `pipelines._building.thrown`)."""
            used(object.__getattribute__(self, "_made"))
            return object.__getattribute__(self, key)

    def _next(
        self, pipe: Pipeline, node: Node, classes: tuple[type[Event], ...] | None
    ) -> Stream[Any]:
        return Stream(pipe, Port(node), classes, self._scope)

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline built so far."""
        return self._pipeline

    @property
    def step(self) -> str:
        """The step (and route) this stream reads from."""
        return str(self._port)

    @property
    def event_classes(self) -> tuple[type[Event], ...] | None:
        """The event classes this stream may carry, when known."""
        return self._classes

    def __repr__(self) -> str:
        """Show where the stream is."""
        return f"{type(self).__name__}({self._pipeline.name!r}, at={self.step!r})"

    def _add(
        self,
        kind: str,
        fn: Any,
        name: str | None,
        detail: str | None,
        on_error: Policy,
        params: Mapping[str, Any] | None = None,
        inputs: tuple[Port, ...] | None = None,
        graph: Graph | None = None,
    ) -> tuple[Pipeline, Node]:
        graph = graph or self._pipeline.graph
        step = check_name(name) if name else graph.unique(self._auto(kind, detail))
        node = Node(
            step,
            kind,
            inputs if inputs is not None else (self._port,),
            fn,
            as_policy(on_error),
            dict(params or {}),
        )
        return self._pipeline._with(graph.add(node)), node

    def _then(self, node: Node) -> Stream[Any]:
        """Return the stream out of ``node``, a step added after this stream."""
        return Stream(
            self._pipeline._with(self._pipeline.graph.add(node)), Port(node), None, self._scope
        )

    def _auto(self, kind: str, detail: str | None) -> str:
        base = auto_name(kind, detail)
        return f"{self._scope}_{base}" if self._scope else base

    @overload
    def filter(
        self, predicate: type[E], *, name: str | None = ..., on_error: Policy = ...
    ) -> Stream[E]: ...

    @overload
    def filter(
        self, predicate: Callable[[T], object], *, name: str | None = ..., on_error: Policy = ...
    ) -> Stream[T]: ...

    def filter(
        self, predicate: Any, *, name: str | None = None, on_error: Policy = "dead_letter"
    ) -> Stream[Any]:
        """Keep the records for which ``predicate`` holds, or of one event class.

        >>> from pipelines import sources, testing
        >>> s = Pipeline("p").read(sources.memory(range(6))).filter(lambda x: x % 2 == 0)
        >>> sorted(testing.outputs(s))
        [0, 2, 4]
        """
        if isinstance(predicate, type):
            cls = predicate
            if not issubclass(cls, Event):
                msg = (
                    f"step {name or 'filter'!r} (filter): a class filter needs an Event "
                    f"subclass; got {cls.__name__}. Hint: filter(lambda e: isinstance(e, X))."
                )
                raise TypeError(msg)
            narrowed = self._narrowed(cls, name or f"filter_{cls.__name__}", "filter", "")
            pipe, node = self._add(
                "filter", IsInstance(cls), name, cls.__name__, on_error, {"cls": cls}
            )
            return self._same(pipe, node, narrowed)
        _callable(
            predicate,
            name or "filter",
            "filter",
            "predicate",
            "filter(lambda e: e.user != 'bot') or filter(MyEvent).",
        )
        pipe, node = self._add("filter", predicate, name, _detail(predicate), on_error)
        return self._same(pipe, node)

    def _narrowed(
        self, cls: type[Event], step: str, kind: str, what: str
    ) -> tuple[type[Event], ...]:
        """Return the classes of this stream's records that are ``cls``; refuse none.

        What a class filter keeps, or a class route takes (``what`` names it).
        """
        classes = self._classes
        known = None if classes is None else never_carried(classes, cls)
        if known is not None:
            takes = f"{what} takes {cls.__name__}, but " if what else ""
            verb = "route" if what else kind
            msg = (
                f"step {step!r} ({kind}): {takes}stream {self.step!r} carries {known}, never "
                f"{cls.__name__}. Hint: {verb} by one of {known}, or add {cls.__name__} to the "
                f"source schema."
            )
            raise TypeError(msg)
        return tuple(c for c in classes or (cls,) if issubclass(c, cls))

    def _same(
        self, pipe: Pipeline, node: Node, classes: tuple[type[Event], ...] | bool | None = True
    ) -> Stream[Any]:
        """Return the next stream of the same kind (keyed stays keyed); True keeps classes."""
        return self._rebuild(
            pipe, Port(node), self._classes if classes is True else classes or None
        )

    def _rebuild(
        self, pipe: Pipeline, port: Port, classes: tuple[type[Event], ...] | None
    ) -> Stream[Any]:
        return Stream(pipe, port, classes, self._scope)

    def map(
        self, fn: Callable[[T], U], *, name: str | None = None, on_error: Policy = "dead_letter"
    ) -> Stream[U]:
        """Replace each record with ``fn(record)``."""
        _callable(fn, name or "map", "map", "function", "map(lambda e: e.amount).")
        pipe, node = self._add("map", fn, name, _detail(fn), on_error)
        return self._next(pipe, node, None)

    def flat_map(
        self,
        fn: Callable[[T], Iterable[U]],
        *,
        name: str | None = None,
        on_error: Policy = "dead_letter",
    ) -> Stream[U]:
        """Replace each record with the records ``fn(record)`` returns (0 or more).

        ``fn`` returns a list, a tuple, a generator or another iterable of
        records; text, bytes, a dict or None (whose parts are no records) make
        a dead letter of the record (``TypeError``), not one record per part.
        """
        _callable(fn, name or "flat_map", "flat_map", "function", "flat_map(lambda e: e.items).")
        pipe, node = self._add("flat_map", fn, name, _detail(fn), on_error)
        return self._next(pipe, node, None)

    def inspect(
        self,
        fn: Callable[[T], object] = print,
        *,
        name: str | None = None,
        on_error: Policy = "dead_letter",
    ) -> Stream[T]:
        """Call ``fn(record)`` for its side effect (default: print); pass records on."""
        _callable(fn, name or "inspect", "inspect", "function", "inspect(print).")
        pipe, node = self._add("inspect", fn, name, _detail(fn), on_error)
        return self._same(pipe, node)

    def key_by(
        self, key: Callable[[T], str], *, name: str | None = None, on_error: Policy = "dead_letter"
    ) -> KeyedStream[T]:
        """Key records by ``key(record)`` (a str): keyed work is partitioned by it."""
        _callable(key, name or "key_by", "key_by", "key function", "key_by(lambda e: e.user).")
        _check_key_type(key, name or "key_by")
        pipe, node = self._add("key_by", key, name, _detail(key), on_error)
        keyed: KeyedStream[T] = self._keyed_class(
            pipe, Port(node), self._classes, self._scope, key=key
        )
        return keyed

    def window_all(
        self, window: Window, *, clock: Clock | None = None, name: str | None = None
    ) -> WindowedStream[T]:
        """Window the whole stream, unkeyed: one result per window for every record.

        The records are not funnelled through one worker: tumbling event-time
        windows whose aggregators merge are aggregated where the records are
        read (each worker's partial windows), and only the partials meet, to
        be merged into the one result of each window. Other windows (and
        ``.late`` written somewhere, which keeps late events whole) gather
        every record on one worker.

        >>> from datetime import datetime, timedelta, timezone
        >>> from operators import agg, windows
        >>> from pipelines import Pipeline, sinks, sources
        >>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> t = [t0 + timedelta(seconds=s) for s in (1, 2, 61)]
        >>> clicks = Pipeline("all").read(sources.memory([{"time": x} for x in t], partitions=2))
        >>> per_minute = clicks.window_all(
        ...     windows.tumbling(minutes=1), clock=windows.event_time(lambda r: r["time"])
        ... ).aggregate(n=agg.count())
        >>> sorted((r.start.minute, r.n) for r in per_minute.write(sinks.memory("o")).run()["o"])
        [(0, 2), (1, 1)]
        """
        keyed = self.key_by(_everything, name=name or self._pipeline.graph.unique("all"))
        windowed = keyed.window(window, clock=clock)
        windowed._everything = True
        return windowed

    @overload
    def merge(self, other: Stream[U], /, *, name: str | None = ...) -> Stream[T | U]: ...

    @overload
    def merge(
        self, other: Stream[U], second: Stream[V], /, *, name: str | None = ...
    ) -> Stream[T | U | V]: ...

    @overload
    def merge(
        self, other: Stream[U], second: Stream[V], third: Stream[W], /, *, name: str | None = ...
    ) -> Stream[T | U | V | W]: ...

    @overload
    def merge(self, *others: Stream[Any], name: str | None = ...) -> Stream[Any]: ...

    def merge(self, *others: Stream[Any], name: str | None = None) -> Stream[Any]:
        """Interleave this stream with ``others`` (of the same pipeline).

        The result carries every input's type: merging a ``Stream[Order]`` with
        a ``Stream[Refund]`` gives a ``Stream[Order | Refund]``.
        """
        graphs = []
        for other in others:
            if not isinstance(other, Stream):
                msg = (
                    f"step {name or 'merge'!r} (merge): can only merge streams; got "
                    f"{type(other).__name__}. Hint: a.merge(b, c)."
                )
                raise TypeError(msg)
            if other._pipeline.name != self._pipeline.name:
                msg = (
                    f"step {name or 'merge'!r} (merge): stream {other.step!r} belongs to "
                    f"pipeline {other._pipeline.name!r}, not {self._pipeline.name!r}. "
                    f"Hint: read every source from the same Pipeline(...)."
                )
                raise ValueError(msg)
            graphs.append(other._pipeline.graph)
        if not others:
            msg = f"step {name or 'merge'!r} (merge): nothing to merge. Hint: a.merge(b)."
            raise ValueError(msg)
        graph = self._pipeline.graph.union(graphs)
        inputs = (self._port, *(o._port for o in others))
        pipe, node = self._add("merge", None, name, None, "dead_letter", inputs=inputs, graph=graph)
        classes: tuple[type[Event], ...] | None = None
        if self._classes is not None and all(o._classes is not None for o in others):
            merged = list(self._classes)
            for o in others:
                merged += [c for c in o._classes or () if c not in merged]
            classes = tuple(merged)
        return Stream(pipe, Port(node), classes)

    def forward(
        self,
        by: Mapping[str, Callable[[T], object] | type[Event]] | None = None,
        /,
        *,
        otherwise: str | None = None,
        mode: Literal["first", "all"] = "first",
        name: str | None = None,
        on_error: Policy = "dead_letter",
        **routes: Callable[[T], object] | type[Event],
    ) -> Routes[T]:
        """Route records to named branches by predicates, or by event class.

        Routes are keywords (``forward(big=..., small=...)``) or a dict of
        them (``forward({"big": ..., "small": ...})``), in order. A route
        given an event class (``forward(views=View)``) takes its instances, as
        ``filter(View)`` keeps them.
        ``mode="first"`` sends each record to the first route that matches;
        ``mode="all"`` copies it to every route that matches. Records matching
        none go to the branch named by ``otherwise``, or are counted unrouted.

        >>> from pipelines import sources, sinks
        >>> routes = Pipeline("p").read(sources.memory(range(10))).forward(
        ...     big=lambda x: x >= 7, otherwise="rest")
        >>> result = routes.write(big=sinks.memory("big"), rest=sinks.memory("rest")).run()
        >>> sorted(result.outputs["big"]), len(result.outputs["rest"])
        ([7, 8, 9], 7)
        """
        step = name or "forward"
        if by is not None:
            if not isinstance(by, Mapping):
                msg = (
                    f"step {step!r} (forward): routes are named predicates; got "
                    f"{type(by).__name__} {by!r:.80}. Hint: forward(big=lambda e: e.amount "
                    f"> 100) or forward({{'big': lambda e: e.amount > 100}})."
                )
                raise TypeError(msg)
            twice = sorted(set(by) & set(routes))
            if twice:
                msg = (
                    f"step {step!r} (forward): route {twice[0]!r} given both in the dict "
                    f"and as a keyword. Hint: name each route once."
                )
                raise ValueError(msg)
            routes = {**by, **routes}
        if not routes:
            msg = (
                f"step {step!r} (forward): no routes given. Hint: "
                f"forward(big=lambda e: e.amount > 100, otherwise='rest')."
            )
            raise ValueError(msg)
        if mode not in ("first", "all"):
            msg = f"step {step!r} (forward): mode must be 'first' or 'all'; got {mode!r}."
            raise ValueError(msg)
        names = [*routes, *([otherwise] if otherwise is not None else [])]
        for route in names:
            if isinstance(route, type):
                msg = (
                    f"step {step!r} (forward): routes are named, by predicates; got the class "
                    f"{route.__name__} as a route's name. Hint: forward("
                    f"{route.__name__.lower()}={route.__name__}), or "
                    f"dispatch({{{route.__name__}: handler}}) to hand each class to a function."
                )
                raise TypeError(msg)
            if (
                not isinstance(route, str)
                or not route.isidentifier()
                or keyword.iskeyword(route)
                or route.startswith("_")
                or route in _RESERVED_ROUTES
            ):
                msg = (
                    f"step {step!r} (forward): route name {route!r} is not a usable "
                    f"identifier (no leading underscore, not one of "
                    f"{sorted(_RESERVED_ROUTES)}). Hint: otherwise='rest'."
                )
                raise ValueError(msg)
        if otherwise in routes:
            msg = (
                f"step {step!r} (forward): otherwise={otherwise!r} is also a route. "
                f"Hint: give the unmatched branch its own name."
            )
            raise ValueError(msg)
        tests: list[Callable[[Any], object]] = []
        carried: dict[str, tuple[type[Event], ...] | None] = {}
        for route, pred in routes.items():
            if isinstance(pred, type) and issubclass(pred, Event):
                # A class routes its instances, as filter(cls) keeps them.
                carried[route] = self._narrowed(pred, step, "forward", f"route {route!r}")
                tests.append(IsInstance(pred))
                continue
            _callable(pred, step, "forward", f"route {route!r}", f"forward({route}=lambda e: ...).")
            tests.append(pred)
        detail = "_".join(routes)
        pipe, node = self._add(
            "forward",
            tuple(tests),
            name,
            detail,
            on_error,
            {"routes": tuple(routes), "otherwise": otherwise, "mode": mode},
        )
        prefix = f"{self._scope}_" if self._scope else ""
        return Routes(
            pipe,
            {
                r: Stream(pipe, Port(node, r), carried.get(r, self._classes), prefix + r)
                for r in names
            },
        )

    @overload
    def dispatch(
        self,
        handlers: Mapping[type | str, Any],
        *,
        out: type[U],
        default: Any = ...,
        name: str | None = ...,
        on_error: Policy = ...,
        concurrency: int = ...,
    ) -> Stream[U]: ...

    @overload
    def dispatch(
        self,
        handlers: Mapping[type | str, Any],
        *,
        out: None = ...,
        default: Any = ...,
        name: str | None = ...,
        on_error: Policy = ...,
        concurrency: int = ...,
    ) -> Stream[Any]: ...

    def dispatch(
        self,
        handlers: Mapping[type | str, Any],
        *,
        out: type[Any] | None = None,
        default: Any = None,
        name: str | None = None,
        on_error: Policy = "dead_letter",
        concurrency: int = 16,
    ) -> Stream[Any]:
        """Hand each event to the handlers registered for its type; their results flow on.

        Keys are event classes (a subclass goes to its nearest registered base)
        or type names (``get_type()``); a handler is a function, an object with
        ``handle(event)``, or `stateful` (keyed streams). A handler returns
        nothing, one value, or an iterable of values. Events with no handler
        become dead letters (kind ``unhandled``) unless ``default`` is a handler;
        when the stream's classes are known, a class with no handler is an error
        here unless ``default`` is given (``"dead_letter"`` or a handler).
        ``async def`` handlers of a batch run concurrently, ``concurrency`` at a time.
        With ``out=Cls`` the results form a ``Stream[Cls]`` for type checkers, and
        a result that is not a ``Cls`` becomes a dead letter (``TypeError``)
        instead of flowing on.

        >>> from pipelines import sources, testing
        >>> s = Pipeline("d").read(sources.memory([1, "a", 2.5]))
        >>> sorted(map(str, testing.outputs(s.dispatch({int: lambda n: n * 10, str: str.upper},
        ...                                              default="dead_letter"))))
        ['10', 'A']
        """
        from pipelines._building.handlers import add_dispatch

        return add_dispatch(
            self,
            handlers,
            out=out,
            default=default,
            name=name,
            on_error=on_error,
            concurrency=concurrency,
            key=getattr(self, "_key", None),
        )

    def write(self, sink: Sink, *, name: str | None = None) -> Pipeline:
        """Write the stream to ``sink`` and return the pipeline (a bytewax ``DynamicSink`` too)."""
        if isinstance(sink, DynamicSink):
            sink = BytewaxSink(sink)
        if not isinstance(sink, Sink):
            msg = (
                f"step {name or 'write'!r} (write): write() needs a sink; got "
                f"{type(sink).__name__} {sink!r}. Hint: write(sinks.memory('out'))."
            )
            raise TypeError(msg)
        graph = self._pipeline.graph
        step = check_name(name) if name else graph.unique(self._auto(sink.label, None))
        node = Node(step, "write", (self._port,), params={"sink": sink})
        pipeline = self._pipeline._with(graph.add(node))
        made = watch(
            pipeline,
            self._pipeline.name,
            object.__getattribute__(pipeline, "_graph"),
            node,
            ".write(...)",
        )
        object.__setattr__(pipeline, "_made", made)
        return pipeline

    def preview(
        self,
        records: Iterable[Any] | Mapping[str, Iterable[Any]] | None = None,
        *,
        limit: int = 20,
    ) -> RunResult:
        """Run the steps so far on a small sample; this stream's records are output ``preview``.

        As `Pipeline.preview`, with this stream written to a memory output
        (a notebook's look at a chain before its sink is chosen).

        >>> from pipelines import Pipeline, sources
        >>> doubled = Pipeline("p").read(sources.memory(range(100))).map(lambda x: x * 2)
        >>> tuple(doubled.preview(limit=3)["preview"])
        (0, 2, 4)
        """
        return self.write(MemorySink("preview")).preview(records, limit=limit)

    def _at(self, pipeline: Pipeline) -> Stream[T]:
        """Return this stream, inside a larger pipeline that contains it."""
        return self._rebuild(pipeline, self._port, self._classes)

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            """Explain keyed-only methods on an unkeyed stream."""
            if name in ("window", "aggregate", "join", "as_table", "process"):
                whole = (
                    ", or window the whole stream: .window_all(windows.tumbling(minutes=1))"
                    ".aggregate(...)"
                    if name in ("window", "aggregate")
                    else ""
                )
                msg = (
                    f"stream {self.step!r} is not keyed, so it has no {name}(). Hint: "
                    f"key it first: .key_by(lambda e: e.user).{name}(...){whole}."
                )
                raise AttributeError(msg)
            if name in ("run", "check", "dead_letters"):
                msg = (
                    f"stream {self.step!r} is not written anywhere yet, so it has no {name}(): "
                    f"a pipeline does (what .write(...) returns). Hint: "
                    f".write(sinks.memory('out')).{name}(...), or .preview() to look at it."
                )
                raise AttributeError(msg)
            msg = f"{type(self).__name__!r} object has no attribute {name!r}"
            raise AttributeError(msg)


class Routes(Generic[T]):
    """The branches of a `Stream.forward`: ``routes.big``, ``routes["big"]``."""

    __slots__ = ("_pipeline", "_streams")

    def __init__(self, pipeline: Pipeline, streams: dict[str, Stream[T]]) -> None:
        """Hold one stream per route name."""
        self._pipeline = pipeline
        self._streams = streams

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline built so far."""
        return self._pipeline

    @property
    def names(self) -> list[str]:
        """The route names, ``otherwise`` last."""
        return list(self._streams)

    def __getattr__(self, route: str) -> Stream[T]:
        """Return the branch called ``route``."""
        try:
            return self._streams[route]
        except KeyError:
            msg = f"no route {route!r}; the routes are {list(self._streams)}."
            raise AttributeError(msg) from None

    def __getitem__(self, route: str) -> Stream[T]:
        """Return the branch called ``route``."""
        try:
            return self._streams[route]
        except KeyError:
            msg = f"no route {route!r}; the routes are {list(self._streams)}."
            raise KeyError(msg) from None

    def __iter__(self) -> Iterator[Stream[T]]:
        """Iterate over the branches."""
        return iter(self._streams.values())

    def __contains__(self, route: object) -> bool:
        """Whether ``route`` names a branch (``"big" in routes``), or is one.

        >>> from pipelines import sources
        >>> routes = Pipeline("p").read(sources.memory([1])).forward(big=lambda x: x > 5)
        >>> "big" in routes, "small" in routes, routes.big in routes
        (True, False, True)
        """
        if isinstance(route, str):
            return route in self._streams
        return any(route is stream for stream in self._streams.values())

    def write(self, **sinks: Sink) -> Pipeline:
        """Write each named branch to its sink and return the combined pipeline."""
        if not sinks:
            msg = (
                "Routes.write needs at least one route=sink. Hint: write(big=sinks.memory('big'))."
            )
            raise ValueError(msg)
        result = self._pipeline
        for route, sink in sinks.items():
            result = self[route]._at(result).write(sink)
        return result
