"""Compile a logical graph to a bytewax ``Dataflow``, fusing stateless steps.

Each read or merge step starts a *stage*: the tree of stateless steps that
follow it (filter, map, flat_map, inspect, key_by, forward) runs as one
bytewax step over chunks of records. A stage ends at sinks (all written by
one bytewax output step, with the stage's dead letters) and at merges (which
start the next stage).
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.dataflow import Stream as BwStream

from operators import (
    Chunk,
    ChunkSource,
    Counters,
    CsvSource,
    ExactOutput,
    ExactSink,
    Exit,
    FilterOp,
    FlatMapOp,
    ForwardOp,
    InspectOp,
    JsonlSink,
    JsonlSource,
    KeyCheckOp,
    MapOp,
    MemorySink,
    Packet,
    PacketSink,
    ParseOp,
    ResumeError,
    RunContext,
    Sink,
    event_classes,
    schema_adapter,
    stage,
)
from operators import Node as StageNode
from operators._dispatch import Dispatch, Dispatcher, DispatchLogic, DispatchOp, HandlerRef
from operators._joining import JoinLogic, JoinSpec
from operators._keying import (
    BUCKET_KEYS,
    BUCKETS,
    Bucketize,
    ClockOp,
    Crossing,
    EarlyGuard,
    Marked,
    Sent,
    SplitOp,
)
from operators._letters import Notes
from operators._process import ProcessLogic, ProcessSpec
from operators._sources import file_pattern
from operators._windowing import Combiner, WindowLogic, WindowSpec, can_combine
from operators.windows import Count, EventTime, Sliding, Tumbling, Window
from pipelines._building.graph import Graph, Node, early_ancestor, later_aggregate, makes_marks
from pipelines._building.thrown import thrown_away, thrown_write

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline

__all__ = ["Compiled", "PipelineError", "check", "check_thrown", "compile_pipeline"]

_NEVER = -math.inf
_DONE = math.inf

_OPS = {
    "filter": FilterOp,
    "map": MapOp,
    "flat_map": FlatMapOp,
    "inspect": InspectOp,
    "key_by": KeyCheckOp,
}


def _clock_op(node: Node, index: int, key: Any, clock: Any, exit_: Exit) -> ClockOp:
    """Key and time the events entering keyed step ``node`` (counted in row ``index``).

    It also refuses an event whose windows (or interval) would lie outside
    the dates a datetime holds: how far they reach around an event, and the
    exact test for one near those ends.
    """
    window = node.params.get("window")
    if window is not None:
        reach, fits = window.reach(), window.fits
    elif node.kind == "join" and node.params["kind"] == "interval":
        far = max(abs(node.params["lower"]), abs(node.params["upper"]))
        reach, fits = (far, far), None
    else:
        reach, fits = (0.0, 0.0), Window().fits
    early = early_ancestor(node) if node.kind == "aggregate" else None
    return ClockOp(
        node.name,
        index,
        key,
        clock,
        node.policy,
        [exit_],
        reach=reach,
        fits=fits,
        early_from=None if early is None else early.name,
    )


def _guarded(
    made: StageNode, node: Node, users: dict[tuple[str, str | None], list[Node]]
) -> StageNode:
    """Guard a map that early results may reach and whose records reach an aggregate.

    What the map makes of an early result is none any more: the aggregate
    could not tell it apart, and would count it again (see `EarlyGuard`).
    """
    if node.kind != "map":
        return made
    early = early_ancestor(node)
    later = None if early is None else later_aggregate(node, users)
    if early is None or later is None:
        return made
    assert isinstance(made, MapOp)
    return EarlyGuard(made, early.name, later.name)


class PipelineError(ValueError):
    """A pipeline that cannot run as built (found before anything runs)."""


def check(pipeline: Pipeline) -> None:
    """Check that the graph can run: it reads, writes, and every branch ends in a sink."""
    graph = pipeline.graph
    if not any(n.kind == "read" for n in graph):
        msg = (
            f"pipeline {pipeline.name!r} reads nothing. Hint: "
            f"Pipeline({pipeline.name!r}).read(sources.memory([...]))."
        )
        thrown = thrown_write(pipeline.name) if not len(graph) else None
        if thrown is not None:
            msg = (
                f"pipeline {pipeline.name!r} reads nothing: it is the empty pipeline, and its "
                f"steps are in the pipeline that .write(...) returned at {thrown.where}, which "
                f"was thrown away. Hint: keep what .write(...) returns and run it: flow = "
                f"Pipeline({pipeline.name!r}).read(...).write(...); flow.run()."
            )
        raise PipelineError(msg)
    check_thrown(pipeline.name, graph)
    for (step, route), users in graph.consumers().items():
        if users or route == "late":
            continue  # unwritten late events become dead letters
        node = graph[step]
        if route is not None:
            msg = (
                f"pipeline {pipeline.name!r}: branch {route!r} of step {step!r} "
                f"(forward) never reaches a sink. Hint: routes.{route}.write(sinks."
                f"memory({route!r})), combine branch pipelines with |, or drop the route."
            )
        else:
            msg = (
                f"pipeline {pipeline.name!r}: the output of step {step!r} ({node.kind}) "
                f"never reaches a sink. Hint: end that branch with .write(...), and "
                f"combine branch pipelines with |."
            )
        raise PipelineError(msg)
    _check_files(pipeline)
    _check_memory(pipeline)


def check_thrown(name: str, graph: Graph) -> None:
    """Refuse a step built on ``graph``'s steps whose stream or pipeline was thrown away."""
    thrown = thrown_away(graph)
    if thrown is not None:
        node = thrown.node
        msg = f"pipeline {name!r}: step {node.name!r} ({node.kind}, at {thrown.where}) "
        if thrown.what == "|":
            msg += (
                "is not part of it: the pipeline that | combined it into was thrown away (the "
                "pipelines combined are left as they were), so that branch would never run. "
                "Hint: keep and run the combination: flow = first | second; flow.run()."
            )
        elif node.kind == "write":
            msg += (
                "is not part of it: the pipeline that .write(...) returned was thrown away, so "
                "that branch would never run. Hint: keep both branches and combine them, e.g. "
                "first = stream.filter(...).write(...); second = stream.map(...).write(...); "
                "(first | second).run(); or leave that line out if the branch is not wanted."
            )
        else:
            msg += (
                f"is not part of it: the stream that {thrown.what} returned was thrown away, "
                f"so the steps after it read the stream before it. Hint: methods return a new "
                f"stream and leave the old one as it was: stream = stream{thrown.what}; or "
                f"leave that line out if the step is not wanted."
            )
        raise PipelineError(msg)


def _check_memory(pipeline: Pipeline) -> None:
    """Refuse two memory sinks of one name: their records would mix in one output.

    And a memory dead-letter sink named as an output: letters would pass for results.
    """
    dead = pipeline.dead_letter_sink
    dead_name = dead.name if isinstance(dead, MemorySink) else None
    kept: dict[str, str] = {}
    for node in pipeline.graph:
        sink = node.params.get("sink") if node.kind == "write" else None
        if not isinstance(sink, MemorySink):
            continue
        if sink.name == dead_name:
            msg = (
                f"pipeline {pipeline.name!r}: its dead-letter sink and step {node.name!r} "
                f"would both keep their records in the memory output {dead_name!r}, so dead "
                f"letters would pass for results. Hint: dead_letters(sinks.memory('dead'))."
            )
            raise PipelineError(msg)
        other = kept.setdefault(sink.name, node.name)
        if other != node.name:
            msg = (
                f"pipeline {pipeline.name!r}: steps {other!r} and {node.name!r} would both keep "
                f"their records in the memory output {sink.name!r}, mixed in one list "
                f"(result[{sink.name!r}]). Hint: give each sink a name of its own, or write "
                f"a.merge(b) once."
            )
            raise PipelineError(msg)


def _check_files(pipeline: Pipeline) -> None:
    """Refuse file sinks that would write a file the run reads, or one file twice.

    A run empties the files it writes before anything is read (a fresh run),
    so writing a file it also reads would lose the input, or read its own
    output back.
    """
    writers: list[tuple[str, Any]] = [
        (f"step {node.name!r}", node.params.get("sink"))
        for node in pipeline.graph
        if node.kind == "write"
    ]
    writers.append(("its dead-letter sink", pipeline.dead_letter_sink))
    written: dict[str, tuple[str, str]] = {}
    for who, sink in writers:
        if not isinstance(sink, JsonlSink):
            continue
        path = os.path.realpath(sink.path)
        if os.path.isdir(path):
            msg = (
                f"pipeline {pipeline.name!r}: {who} would write {sink.path!r}, which is a "
                f"directory. Hint: write to a file in it, e.g. "
                f"sinks.jsonl({os.path.join(sink.path, 'out.jsonl')!r})."
            )
            raise PipelineError(msg)
        if path in written:
            other, shown = written[path]
            msg = (
                f"pipeline {pipeline.name!r}: {other} and {who} would both write {shown!r}: "
                f"their records would overwrite each other. Hint: write one of them to "
                f"another file, or write a.merge(b) once."
            )
            raise PipelineError(msg)
        written[path] = (who, sink.path)
    for node in pipeline.graph:
        source = node.params.get("source") if node.kind == "read" else None
        if not isinstance(source, JsonlSource | CsvSource):
            continue
        pattern = os.path.abspath(file_pattern(source.path))
        read = {os.path.realpath(f) for f in glob.glob(pattern)}
        read.add(os.path.realpath(source.path))
        for path, (who, shown) in written.items():
            if path in read or fnmatch.fnmatchcase(path, pattern):
                msg = (
                    f"pipeline {pipeline.name!r}: {who} would write {shown!r}, which step "
                    f"{node.name!r} reads ({source.path!r}): a run empties the files it writes "
                    f"before it reads, so the input would be lost, or the output read back. "
                    f"Hint: write to another file."
                )
                raise PipelineError(msg)


@dataclass
class _Stage:
    root: Node
    exits: list[tuple[str, Node]] = field(default_factory=list)
    #: Whether records of several paths of this stage meet at a merge (`merge_exit`).
    rejoined: bool = False

    def exit(self, kind: str, node: Node) -> Exit:
        self.exits.append((kind, node))
        return Exit(len(self.exits) - 1)

    def merge_exit(self, node: Node) -> Exit:
        """Return the one exit to merge ``node`` for every path of this stage that reaches it.

        Several paths (routes of a forward, two steps reading one stream) that
        meet again at a merge share its exit, and the stage then goes record by
        record (`rejoined`): the merged records keep their partition's order, as
        a step on event time after the merge judges each against the records
        before it (a route's records all before another's would make the
        other's late).
        """
        for index, (kind, target) in enumerate(self.exits):
            if kind == "merge" and target is node:
                self.rejoined = True
                return Exit(index)
        return self.exit("merge", node)


@dataclass
class Compiled:
    """A compiled pipeline: the bytewax flow and the counters it fills."""

    flow: Dataflow
    counters: Counters
    kinds: dict[str, str]
    #: The partitions of each step whose state is kept by partition (sources,
    #: exactly-once files), by engine step id: a resumed run must have them all.
    partitions: dict[str, Callable[[], list[str]]] = field(default_factory=dict)
    #: The engine's sources: told when the run has ended (`ChunkSource.finish`).
    sources: list[ChunkSource] = field(default_factory=list)


def compile_pipeline(
    pipeline: Pipeline,
    ctx: RunContext,
    processes: int = 1,
    *,
    exact_files: bool = False,
    durable: Callable[[str, str], tuple[bool, Any]] | None = None,
    buckets: int = BUCKETS,
) -> Compiled:
    """Build the bytewax ``Dataflow`` for ``pipeline`` (checked first).

    ``processes`` is the number of processes in the cluster: with more than
    one, events would cross between them pickled, so windows that can be are
    aggregated before the key exchange (within one process, workers hand
    records over without pickling, and combining would only add work).
    With ``exact_files`` (a run with recovery), each exactly-once sink (a
    jsonl file, Redis stream) has one writer whose position is in the
    snapshots; on resume it undoes what was written after it: exactly once.
    ``durable(step_id, partition)`` (with recovery) finds a source partition's
    position in the store, for readers that acknowledge upstream what it covers.
    ``buckets``: how many key buckets keyed steps spread keys over (`bucket_count`).
    """
    check(pipeline)
    graph = pipeline.graph
    kinds = {n.name: n.kind for n in graph}
    dead_sink: Sink | None = pipeline.dead_letter_sink
    dead_step = graph.unique("dead_letters")
    if dead_sink is not None:
        kinds[dead_step] = "dead_letters"
    counters = Counters(list(kinds))
    row = {name: i for i, name in enumerate(kinds)}
    users = graph.consumers()
    flow = Dataflow(pipeline.name)
    merge_inputs: dict[str, list[BwStream[Chunk]]] = {}
    partitions: dict[str, Callable[[], list[str]]] = {}
    agg_inputs: dict[str, BwStream[tuple[str, Marked]]] = {}
    join_inputs: dict[str, list[BwStream[tuple[str, tuple[int, Marked]]]]] = {}
    # With recovery, an exactly-once dead-letter sink (a jsonl file) is written
    # exactly once too: the dead letters of every stage travel to its one writer.
    exact_dead = exact_files and isinstance(dead_sink, ExactSink)
    dead_path = dead_sink.partition if isinstance(dead_sink, ExactSink) else ""
    dead_streams: list[BwStream[tuple[str, list[Any]]]] = []
    engine_sources: list[ChunkSource] = []

    def crossing(target: Node) -> Crossing | None:
        """On several processes: check that what ``target`` takes can cross between them."""
        if processes == 1:
            return None
        return Crossing(counters, pipeline.name, target.name, processes)

    def tree(stage_: _Stage, port: tuple[str, str | None]) -> list[StageNode]:
        nodes: list[StageNode] = []
        joined: set[str] = set()
        for user in users[port]:
            if user.kind == "join":
                if user.name in joined:
                    continue  # a join of a stream with itself: both sides at once
                joined.add(user.name)
                for side, inport in enumerate(user.inputs):
                    if (inport.node.name, inport.route) != port:
                        continue
                    exit_ = stage_.exit(f"join{side}", user)
                    clock = user.params["clocks"][side]
                    key = user.params["keys"][side]
                    nodes.append(_clock_op(user, row[user.name], key, clock, exit_))
            elif user.kind == "merge":
                nodes.append(stage_.merge_exit(user))
            elif user.kind == "write":
                nodes.append(stage_.exit(user.kind, user))
            elif user.kind in ("aggregate", "process"):
                exit_ = stage_.exit("aggregate", user)
                clock = user.params["clock"]
                # An aggregate's function is its key; a process step's is its handler.
                key = user.params["key"] if user.kind == "process" else user.fn
                nodes.append(_clock_op(user, row[user.name], key, clock, exit_))
            elif user.kind == "dispatch" and user.params["key"] is not None:
                # Keyed: each key's events go, in order, to the worker of its bucket.
                exit_ = stage_.exit("aggregate", user)
                key = user.params["key"]
                nodes.append(
                    ClockOp(
                        user.name, row[user.name], key, None, user.policy, [exit_], kind="dispatch"
                    )
                )
            elif user.kind == "dispatch":
                nexts = tree(stage_, (user.name, None))
                nodes.append(
                    DispatchOp(user.name, row[user.name], _dispatch(pipeline, user), nexts)
                )
            elif user.kind == "forward":
                routes = user.params["routes"]
                otherwise = user.params["otherwise"]
                nodes.append(
                    ForwardOp(
                        user.name,
                        row[user.name],
                        user.fn,
                        user.policy,
                        mode=user.params["mode"],
                        branches=[tree(stage_, (user.name, r)) for r in routes],
                        otherwise=None
                        if otherwise is None
                        else tree(stage_, (user.name, otherwise)),
                    )
                )
            else:
                nexts = tree(stage_, (user.name, None))
                made = _OPS[user.kind](user.name, row[user.name], user.fn, user.policy, nexts)
                nodes.append(_guarded(made, user, users))
        return nodes

    for node in graph:
        keyed_dispatch = node.kind == "dispatch" and node.params["key"] is not None
        if (
            node.kind not in ("read", "merge", "aggregate", "join", "process")
            and not keyed_dispatch
        ):
            continue
        stage_ = _Stage(node)
        root: StageNode
        if node.kind == "join":
            sides = join_inputs.pop(node.name)
            both = op.merge(f"{node.name}_sides", *sides)
            join_spec = _join_spec(pipeline, node, row[node.name], counters, users, buckets)
            outputs = op.stateful_batch(node.name, both, _JoinBuilder(join_spec))
            chunks = op.flat_map_batch(
                f"{node.name}_chunks",
                outputs,
                _ToChunk(node.name, makes_marks(node), join_spec.notes is not None),
            )
            root = SplitOp(
                tree(stage_, (node.name, None)), tree(stage_, (node.name, "late")), row[node.name]
            )
        elif node.kind == "process":
            process_spec = _process_spec(pipeline, node, row[node.name], counters, users, buckets)
            outputs = op.stateful_batch(
                node.name, agg_inputs.pop(node.name), _ProcessBuilder(process_spec)
            )
            chunks = op.flat_map_batch(
                f"{node.name}_chunks",
                outputs,
                _ToChunk(node.name, makes_marks(node), process_spec.notes is not None),
            )
            root = SplitOp(
                tree(stage_, (node.name, None)), tree(stage_, (node.name, "late")), row[node.name]
            )
        elif keyed_dispatch:
            builder = _DispatchBuilder(_dispatch(pipeline, node), counters, row[node.name])
            outputs = op.stateful_batch(node.name, agg_inputs.pop(node.name), builder)
            chunks = op.flat_map_batch(
                f"{node.name}_chunks",
                outputs,
                _ToChunk(node.name),
            )
            root = SplitOp(tree(stage_, (node.name, None)), [], row[node.name])
        elif node.kind == "aggregate":
            # Keyed state: bytewax routes key buckets to workers.
            spec = _window_spec(pipeline, node, row[node.name], counters, users, buckets)
            outputs = op.stateful_batch(node.name, agg_inputs.pop(node.name), _LogicBuilder(spec))
            chunks = op.flat_map_batch(
                f"{node.name}_chunks",
                outputs,
                _ToChunk(node.name, makes_marks(node), spec.notes is not None),
            )
            root = SplitOp(
                tree(stage_, (node.name, None)), tree(stage_, (node.name, "late")), row[node.name]
            )
        else:
            adapter = classes = None
            nexts = tree(stage_, (node.name, None))
            if node.kind == "read":
                source = node.params["source"]
                if source.schema is not None:
                    adapter = schema_adapter(source.schema)
                    classes = event_classes(source.schema)
                # Steps past the stage's sinks (keyed steps, merges) take several
                # chunks at once; a stage that only writes reads one at a time.
                ahead = any(kind != "write" for kind, _ in stage_.exits)
                engine_source = ChunkSource(source, counters, durable, read_ahead=ahead)
                engine_sources.append(engine_source)
                chunks = op.input(node.name, flow, engine_source)
                partitions[f"{pipeline.name}.{node.name}"] = source.partitions
            else:
                chunks = op.merge(node.name, *merge_inputs.pop(node.name))
            root = ParseOp(node.name, row[node.name], adapter, node.policy, nexts, classes)
        packets = stage(
            f"{node.name}_stage",
            chunks,
            [root],
            len(stage_.exits),
            pipeline.name,
            counters,
            one_by_one=stage_.rejoined,
        )
        targets = []
        for i, (kind, target) in enumerate(stage_.exits):
            if kind != "write":
                continue
            sink = target.params["sink"]
            if exact_files and isinstance(sink, ExactSink):
                records = op.flat_map_batch(
                    f"{node.name}_to_{target.name}_{i}",
                    packets,
                    _Records(i, sink.partition, crossing(target)),
                )
                exact = ExactOutput(
                    sink,
                    ctx,
                    counters,
                    row[target.name],
                    dead_row=None if dead_sink is None else row[dead_step],
                )
                op.output(f"{target.name}_exact", records, exact)
                partitions[f"{pipeline.name}.{target.name}_exact"] = exact.list_parts
            else:
                targets.append((i, row[target.name], sink))
        dead = None if dead_sink is None or exact_dead else (row[dead_step], dead_sink)
        op.output(
            f"{node.name}_out",
            packets,
            PacketSink(
                ctx,
                counters,
                targets,
                dead,
                dead_elsewhere=row[dead_step] if exact_dead else None,
            ),
        )
        if exact_dead:
            dead_streams.append(
                op.flat_map_batch(
                    f"{node.name}_dead_letters", packets, _DeadRecords(ctx, dead_path)
                )
            )
        for i, (kind, target) in enumerate(stage_.exits):
            if kind == "merge":
                unpacked = op.flat_map_batch(
                    f"{node.name}_to_{target.name}_{i}", packets, _Unpack(i, node.name)
                )
                merge_inputs.setdefault(target.name, []).append(unpacked)
            elif kind == "aggregate":
                combine = None
                delay = None
                if target.kind == "aggregate":
                    # Across processes records cross pickled: combining saves that.
                    # A window over the whole stream combines always, so that
                    # the records are not all funnelled through one worker.
                    if processes > 1 or target.params.get("everything"):
                        combine = _combiner(target, users)
                    clock = target.params["clock"]
                    window = target.params["window"]
                    timed = window is not None and not isinstance(window, Count)
                    if timed and isinstance(clock, EventTime):
                        delay = clock.max_delay  # late events are judged in Bucketize
                elif target.kind == "process":
                    delay = target.params["clock"].max_delay
                marked = op.flat_map_batch(
                    f"{node.name}_to_{target.name}_{i}",
                    packets,
                    Bucketize(i, buckets, combine=combine, delay=delay, crossing=crossing(target)),
                )
                agg_inputs[target.name] = marked
            elif kind.startswith("join"):
                side = int(kind[4:])
                clock = target.params["clocks"][side]
                marked = op.flat_map_batch(
                    f"{node.name}_to_{target.name}_{i}",
                    packets,
                    Bucketize(i, buckets, delay=clock.max_delay, crossing=crossing(target)),
                )
                tagged = op.map(f"{node.name}_to_{target.name}_{i}_side", marked, _Side(side))
                join_inputs.setdefault(target.name, []).append(tagged)
    if dead_streams:
        assert isinstance(dead_sink, ExactSink)
        merged = dead_streams[0]
        if len(dead_streams) > 1:
            merged = op.merge(f"{dead_step}_merge", *dead_streams)
        exact = ExactOutput(dead_sink, ctx, counters, row[dead_step], letters=True)
        op.output(f"{dead_step}_exact", merged, exact)
        partitions[f"{pipeline.name}.{dead_step}_exact"] = exact.list_parts
    return Compiled(flow, counters, kinds, partitions, engine_sources)


def _source_partitions(node: Node, buckets: int) -> list[str]:
    """Return the ``step/partition`` ids of every partition upstream of ``node``.

    A source's partitions, or the key buckets of a step on event time.
    """
    if node.kind == "read":
        return [f"{node.name}/{p}" for p in node.params["source"].partitions()]
    ids: list[str] = []
    for port in node.inputs:
        if makes_marks(port.node):
            ids += [
                i for i in (f"{port.node.name}/{b}" for b in BUCKET_KEYS[:buckets]) if i not in ids
            ]
            continue
        ids += [i for i in _source_partitions(port.node, buckets) if i not in ids]
    return ids


def _join_spec(
    pipeline: Pipeline,
    node: Node,
    row: int,
    counters: Counters,
    users: dict[tuple[str, str | None], list[Node]],
    buckets: int,
) -> JoinSpec:
    params = node.params
    clocks = params["clocks"]
    partitions = [
        f"{side}:{part}"
        for side, port in enumerate(node.inputs)
        for part in _source_partitions(port.node, buckets)
    ]
    return JoinSpec(
        pipeline=pipeline.name,
        step=node.name,
        row=row,
        counters=counters,
        kind=params["kind"],
        partitions=partitions,
        delays=(clocks[0].max_delay, clocks[1].max_delay),
        idle=max(clocks[0].idle_timeout, clocks[1].idle_timeout),
        how=params["how"],
        window=params["window"],
        lower=params["lower"],
        upper=params["upper"],
        ttl=params["ttl"],
        deleted=params["deleted"],
        missing=params["missing"],
        select=params["select"],
        late_wanted=bool(users[(node.name, "late")]),
        policy=node.policy,
        notes=_notes_after(node, users),
    )


def _process_spec(
    pipeline: Pipeline,
    node: Node,
    row: int,
    counters: Counters,
    users: dict[tuple[str, str | None], list[Node]],
    buckets: int,
) -> ProcessSpec:
    params = node.params
    clock = params["clock"]
    return ProcessSpec(
        pipeline=pipeline.name,
        step=node.name,
        row=row,
        counters=counters,
        on_event=node.fn,
        initial=params["initial"],
        partitions=_source_partitions(node, buckets),
        on_timer=params["on_timer"],
        ttl=params["ttl"],
        delay=clock.max_delay,
        idle=clock.idle_timeout,
        late_wanted=bool(users[(node.name, "late")]),
        policy=node.policy,
        notes=_notes_after(node, users),
    )


def _combiner(node: Node, users: dict[tuple[str, str | None], list[Node]]) -> Combiner | None:
    """Return the pre-exchange aggregation for an aggregate step, where it applies."""
    params = node.params
    window = params["window"]
    aggs = list(params["aggregators"].values())
    if not params.get("combine") or users[(node.name, "late")]:
        return None  # written late events must stay whole
    if not can_combine(window, params["clock"], aggs):
        return None
    return Combiner(window, aggs, params["clock"].max_delay)


def _window_spec(
    pipeline: Pipeline,
    node: Node,
    row: int,
    counters: Counters,
    users: dict[tuple[str, str | None], list[Node]],
    buckets: int,
) -> WindowSpec:
    aggregators = node.params["aggregators"]
    return WindowSpec(
        pipeline=pipeline.name,
        step=node.name,
        row=row,
        counters=counters,
        window=node.params["window"],
        clock=node.params["clock"],
        names=list(aggregators),
        aggs=list(aggregators.values()),
        result_model=node.params["result_model"],
        partitions=_source_partitions(node, buckets),
        late_wanted=bool(users[(node.name, "late")]),
        emit=node.params["emit"],
        ttl=node.params["ttl"],
        every=node.params.get("every"),
        policy=node.policy,
        notes=_notes_after(node, users),
        classes=node.params.get("classes"),
    )


def _dispatch(pipeline: Pipeline, node: Node) -> Dispatch:
    """Build the delivery logic of a dispatch step (handlers indexed once)."""
    # One HandlerRef per handler object and one list per set of handlers, however
    # many types share them: delivery then touches the same few objects for
    # every event, whatever the number of registered types.
    made: dict[int, HandlerRef] = {}
    lists: dict[tuple[int, ...], list[HandlerRef]] = {}

    def ref(handler: Any) -> HandlerRef:
        found = made.get(id(handler))
        if found is None:
            found = made[id(handler)] = HandlerRef(handler, len(made))
        return found

    def refs_for(handlers: list[Any]) -> list[HandlerRef]:
        refs = [ref(h) for h in handlers]
        return lists.setdefault(tuple(id(r) for r in refs), refs)

    table = {event_type: refs_for(hs) for event_type, hs in node.params["table"].items()}
    default = refs_for(node.params["default"])
    return Dispatch(
        pipeline.name,
        node.name,
        Dispatcher(table, default, every=node.params.get("every", False)),
        node.policy,
        node.params["concurrency"],
        node.params.get("out"),
    )


L = TypeVar("L")


def _resumed(counters: Counters, step: str, resume: Any | None, build: Callable[[], L]) -> L:
    """Build a key bucket's logic; a snapshot it cannot resume from halts the run.

    The failure becomes one `ResumeError` naming the step (the runner adds
    the store), instead of an engine panic.
    """
    try:
        return build()
    except ResumeError as exc:
        counters.halt(exc)
    except Exception as exc:
        if resume is None:
            raise
        counters.halt(ResumeError.of(step, exc))


class _DispatchBuilder:
    """Build (or resume) the handler states of one key bucket."""

    def __init__(self, dispatch: Dispatch, counters: Counters, row: int) -> None:
        self.dispatch = dispatch
        self.counters = counters
        self.row = row

    def __call__(self, resume: Any | None) -> DispatchLogic:
        counters = self.counters
        return _resumed(
            counters,
            counters.steps[self.row],
            resume,
            lambda: DispatchLogic(self.dispatch, counters, self.row, resume),
        )


class _LogicBuilder:
    """Build (or resume) the window state of one key bucket."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec

    def __call__(self, resume: Any | None) -> WindowLogic:
        spec = self.spec
        return _resumed(spec.counters, spec.step, resume, lambda: WindowLogic(spec, resume))


class _JoinBuilder:
    """Build (or resume) both sides' state of one key bucket of a join."""

    def __init__(self, spec: JoinSpec) -> None:
        self.spec = spec

    def __call__(self, resume: Any | None) -> JoinLogic:
        spec = self.spec
        return _resumed(spec.counters, spec.step, resume, lambda: JoinLogic(spec, resume))


class _ProcessBuilder:
    """Build (or resume) the key states and timers of one key bucket of a process step."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec

    def __call__(self, resume: Any | None) -> ProcessLogic:
        spec = self.spec
        return _resumed(spec.counters, spec.step, resume, lambda: ProcessLogic(spec, resume))


class _Side:
    """Tag a join side's bucket items with the side (0: left, 1: right)."""

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, item: tuple[str, Marked]) -> tuple[str, tuple[int, Marked]]:
        return (item[0], (self.side, item[1]))


#: Steps that pass records on as they are (a step on event time after them reads them so).
_AS_THEY_ARE = ("filter", "inspect", "key_by", "forward", "merge")


def _notes_after(node: Node, users: dict[tuple[str, str | None], list[Node]]) -> Notes | None:
    """Say what the steps on event time reading what ``node`` makes need to know of it.

    They judge each record against when ``node`` made it (`Notes`). None
    where no such step reads it: past stateless steps and merges, up to the
    next keyed step (whose own results are judged anew).
    """
    readers: list[str | Callable[[Any], Any]] = []
    grids: list[tuple[int, int, float] | None] = []
    changed = found = False
    seen: set[tuple[str, bool]] = set()
    ways: list[tuple[tuple[str, str | None], bool]] = [
        ((node.name, None), True),
        ((node.name, "late"), True),
    ]
    while ways:
        port, unchanged = ways.pop()
        for user in users.get(port, []):
            clocks: list[Any] = []
            if user.kind == "join":
                clocks = [
                    user.params["clocks"][side]
                    for side, inport in enumerate(user.inputs)
                    if (inport.node.name, inport.route) == port
                ]
            elif user.kind == "process" or (user.kind == "aggregate" and makes_marks(user)):
                clocks = [user.params["clock"]]
            elif user.kind in ("write", "aggregate") or (
                user.kind == "dispatch" and user.params["key"] is not None
            ):
                continue
            else:
                way = user.kind in _AS_THEY_ARE and unchanged
                if (user.name, way) not in seen:
                    seen.add((user.name, way))
                    ways += [((user.name, route), way) for route in user.ports()]
                continue
            for clock in clocks:
                if isinstance(clock, EventTime):
                    found = True
                    changed = changed or not unchanged
                    readers.append(clock.fn or clock.field or "time")
                    grids.append(_grid(user, clock))
    if not found:
        return None
    grid = grids[0] if all(g == grids[0] for g in grids) else None
    return Notes(None if changed else readers, grid)


def _grid(user: Node, clock: EventTime) -> tuple[int, int, float] | None:
    """Where step ``user`` is a tumbling or sliding window: where its windows end (`Notes`)."""
    window = user.params.get("window") if user.kind == "aggregate" else None
    if isinstance(window, Tumbling):
        return (window.size_us, window.offset_us, clock.max_delay)
    if isinstance(window, Sliding):
        every = window.every_us
        return (every, (window.offset_us + window.size_us) % every, clock.max_delay)
    return None


class _ToChunk:
    """Gather a keyed step's outputs into chunks: one per key bucket, with its watermark.

    A step on event time reports how far each of its buckets has got
    (``("w", mark)`` items) and, before its records, when it made them
    (``("t", at)`` items): each bucket is a partition of the stream it
    makes, so steps on event time after it judge its results as they judge
    a source's events, each against when it was made (`Chunk.made`). Other
    keyed steps make one chunk per batch.
    """

    def __init__(self, step: str, marks: bool = False, judged: bool = False) -> None:
        """``judged``: a step on event time reads the stream (the step's `Notes`)."""
        self.step = step
        self.marks: dict[str, float] | None = {} if marks else None
        self.judged = judged

    def __call__(self, items: list[tuple[str, Any]]) -> list[Chunk]:
        marks = self.marks
        if marks is None:
            values = [value for _, value in items if value[0] != "w" and value[0] != "t"]
            return [Chunk(values, self.step, "out")] if values else []
        groups: dict[str, tuple[list[Any], list[tuple[int, float | None]]]] = {}
        done: list[Chunk] = []
        step = self.step
        judged = self.judged
        for bucket, value in items:
            group = groups.get(bucket)
            if group is None:
                group = groups[bucket] = ([], [])
            tag = value[0]
            if tag == "t":
                if judged:
                    made = group[1]
                    if made and made[-1][0] == len(group[0]):
                        made[-1] = (len(group[0]), value[1])  # no record made at the one before
                    else:
                        made.append((len(group[0]), value[1]))
            elif tag == "w":
                if value[1] == _DONE and bucket in marks and marks[bucket] != _DONE:
                    # The end: the last mark before it goes on on its own (where
                    # the steps after this one end their data), then the end.
                    held, made = group
                    done.append(
                        Chunk(held, step, bucket, mark=marks[bucket], made=_runs(held, made))
                    )
                    groups[bucket] = ([], [])
                marks[bucket] = value[1]
            else:
                group[0].append(value)
        return done + [
            Chunk(held, step, bucket, mark=marks.get(bucket, _NEVER), made=_runs(held, made))
            for bucket, (held, made) in groups.items()
        ]


def _runs(
    held: list[Any], made: list[tuple[int, float | None]]
) -> list[tuple[int, float | None]] | None:
    """Return a chunk's runs of records made at one time (None: none noted)."""
    if made and made[-1][0] == len(held):
        made.pop()  # noted after the last record: nothing made then
    if not made:
        return None
    if made[0][0]:
        made.insert(0, (0, None))  # the records before the first note: not noted
    return made


class _Records:
    """Take one exit's records out of a stage's packets, for a keyed sink."""

    def __init__(self, index: int, key: str, crossing: Crossing | None = None) -> None:
        """``crossing``: check that the records can cross between processes."""
        self.index = index
        self.key = key
        self.crossing = crossing

    def __call__(self, packets: list[Packet]) -> list[tuple[str, list[Any]]]:
        i = self.index
        crossing = self.crossing
        if crossing is not None:
            return [(self.key, Sent(p.exits[i], crossing)) for p in packets if p.exits[i]]
        return [(self.key, p.exits[i]) for p in packets if p.exits[i]]


class _DeadRecords:
    """Take a stage's dead letters out of its packets, for the exactly-once file."""

    def __init__(self, ctx: RunContext, path: str) -> None:
        self.ctx = ctx
        self.path = path

    def __call__(self, packets: list[Packet]) -> list[tuple[str, list[Any]]]:
        out: list[tuple[str, list[Any]]] = []
        for p in packets:
            if p.dead:
                self.ctx.keep_dead(p.dead, keep=False)
                out.append((self.path, p.dead))
        return out


class _Unpack:
    """Turn one exit of a stage's packets back into chunks."""

    def __init__(self, index: int, source: str) -> None:
        self.index = index
        self.source = source

    def __call__(self, packets: list[Packet]) -> list[Chunk]:
        i = self.index
        return [
            Chunk(
                p.exits[i],
                p.source,
                p.partition,
                eof=p.eof,
                idle_since=p.idle_since,
                mark=p.mark,
                made=None if p.made is None else p.made[i],
            )
            for p in packets
            if p.exits[i] or p.eof or p.idle_since is not None or p.mark is not None
        ]
