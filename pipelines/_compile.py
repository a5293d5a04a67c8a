"""Compile a logical graph to a bytewax ``Dataflow``, fusing stateless steps.

Each read or merge step starts a *stage*: the tree of stateless steps that
follow it (filter, map, flat_map, inspect, key_by, forward) runs as one
bytewax step over chunks of records. A stage ends at sinks (all written by
one bytewax output step, with the stage's dead letters) and at merges (which
start the next stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.dataflow import Stream as BwStream

from operators import (
    Chunk,
    ChunkSource,
    Counters,
    Exit,
    FilterOp,
    FlatMapOp,
    ForwardOp,
    InspectOp,
    KeyCheckOp,
    MapOp,
    Packet,
    PacketSink,
    ParseOp,
    RunContext,
    Sink,
    schema_adapter,
    stage,
)
from operators import Node as StageNode
from pipelines._builder import Pipeline
from pipelines._graph import Node

__all__ = ["Compiled", "PipelineError", "check", "compile_pipeline"]

_OPS = {
    "filter": FilterOp,
    "map": MapOp,
    "flat_map": FlatMapOp,
    "inspect": InspectOp,
    "key_by": KeyCheckOp,
}


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
        raise PipelineError(msg)
    for (step, route), users in graph.consumers().items():
        if users:
            continue
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


@dataclass
class _Stage:
    root: Node
    exits: list[tuple[str, Node]] = field(default_factory=list)

    def exit(self, kind: str, node: Node) -> Exit:
        self.exits.append((kind, node))
        return Exit(len(self.exits) - 1)


@dataclass
class Compiled:
    """A compiled pipeline: the bytewax flow and the counters it fills."""

    flow: Dataflow
    counters: Counters
    kinds: dict[str, str]


def compile_pipeline(pipeline: Pipeline, ctx: RunContext, workers: int = 1) -> Compiled:
    """Build the bytewax ``Dataflow`` for ``pipeline`` (checked first)."""
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

    def tree(stage_: _Stage, port: tuple[str, str | None]) -> list[StageNode]:
        nodes: list[StageNode] = []
        for user in users[port]:
            if user.kind in ("write", "merge"):
                nodes.append(stage_.exit(user.kind, user))
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
                nodes.append(
                    _OPS[user.kind](user.name, row[user.name], user.fn, user.policy, nexts)
                )
        return nodes

    for node in graph:
        if node.kind not in ("read", "merge"):
            continue
        stage_ = _Stage(node)
        adapter = None
        if node.kind == "read":
            source = node.params["source"]
            if source.schema is not None:
                adapter = schema_adapter(source.schema)
            chunks: BwStream[Chunk] = op.input(node.name, flow, ChunkSource(source, counters))
        else:
            chunks = op.merge(node.name, *merge_inputs.pop(node.name))
        if workers > 1:
            chunks = op.redistribute(f"{node.name}_spread", chunks)
        root = ParseOp(
            node.name, row[node.name], adapter, node.policy, tree(stage_, (node.name, None))
        )
        packets = stage(
            f"{node.name}_stage", chunks, [root], len(stage_.exits), pipeline.name, counters
        )
        targets = [
            (i, row[target.name], target.params["sink"])
            for i, (kind, target) in enumerate(stage_.exits)
            if kind == "write"
        ]
        dead = None if dead_sink is None else (row[dead_step], dead_sink)
        op.output(f"{node.name}_out", packets, PacketSink(ctx, counters, targets, dead))
        for i, (kind, target) in enumerate(stage_.exits):
            if kind == "merge":
                unpacked = op.flat_map_batch(
                    f"{node.name}_to_{target.name}_{i}", packets, _Unpack(i, node.name)
                )
                merge_inputs.setdefault(target.name, []).append(unpacked)
    return Compiled(flow, counters, kinds)


class _Unpack:
    """Turn one exit of a stage's packets back into chunks."""

    def __init__(self, index: int, source: str) -> None:
        self.index = index
        self.source = source

    def __call__(self, packets: list[Packet]) -> list[Chunk]:
        i = self.index
        return [Chunk(p.exits[i], self.source, "stage") for p in packets if p.exits[i]]
