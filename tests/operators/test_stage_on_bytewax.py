"""The operators work on a plain bytewax Dataflow, without the pipelines layer."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators import (
    Chunk,
    Counters,
    Exit,
    FilterOp,
    ForwardOp,
    MapOp,
    Packet,
    ParseOp,
    as_policy,
    run_stage,
    schema_adapter,
    stage,
)
from tests.helpers import Purchase, View


def _tree(counters: Counters) -> ParseOp:
    policy = as_policy("dead_letter")
    forward = ForwardOp(
        "route",
        2,
        [lambda e: isinstance(e, Purchase)],
        policy,
        mode="first",
        branches=[[MapOp("amount", 3, lambda e: 100 / e.amount, policy, [Exit(0)])]],
        otherwise=[Exit(1)],
    )
    humans = FilterOp("humans", 1, lambda e: e.user != "bot", policy, [forward])
    return ParseOp("parse", 0, schema_adapter(View | Purchase), policy, [humans])


RAW = [
    b'{"type": "view", "user": "a"}',
    b'{"type": "purchase", "user": "a", "amount": 4}',
    b'{"type": "purchase", "user": "b", "amount": 0}',  # map divides by zero
    b'{"type": "view", "user": "bot"}',
    b"{not json",
    b'{"type": "purchase", "user": "c"}',  # amount missing
    b"",
]


def test_run_stage_counts_and_dead_letters() -> None:
    counters = Counters(["parse", "humans", "route", "amount"])
    chunk = Chunk(list(RAW), "src", "p0", offset=10, file="f.jsonl", line=1)
    [packet] = run_stage([_tree(counters)], 2, "pipe", counters, [chunk])
    assert packet.exits[0] == [25.0]
    assert [e.user for e in packet.exits[1]] == ["a"]
    kinds = sorted((d.step, d.kind, d.origin.line if d.origin else None) for d in packet.dead)
    assert kinds == [
        ("amount", "user_error", None),
        ("parse", "parse", 5),
        ("parse", "validation", 6),
    ]
    totals = counters.totals()
    assert totals["parse"]["in"] == 6  # the blank line is not a record
    assert totals["parse"]["dead"] == 2 and totals["parse"]["out"] == 4
    assert totals["humans"]["filtered"] == 1
    assert totals["amount"]["dead"] == 1
    zero = next(d for d in packet.dead if d.kind == "user_error")
    assert zero.error_type == "ZeroDivisionError" and "<lambda line" in (zero.function or "")


def test_stage_as_a_bytewax_operator() -> None:
    counters = Counters(["parse", "humans", "route", "amount"])
    flow = Dataflow("plain")
    chunks = op.input("inp", flow, TestingSource([Chunk(list(RAW), "src", "p0")]))
    packets = stage("stage", chunks, [_tree(counters)], 2, "plain", counters)
    got: list[Packet] = []
    op.output("out", packets, TestingSink(got))
    run_main(flow)
    assert len(got) == 1 and got[0].exits[0] == [25.0] and len(got[0].dead) == 3


def test_chunks_longer_than_a_slice_keep_origins() -> None:
    counters = Counters(["parse"])
    items: list[Any] = [b'{"type": "view", "user": "u"}'] * 300
    items[257] = b"oops"
    root = ParseOp("parse", 0, schema_adapter(View), as_policy("dead_letter"), [Exit(0)])
    [packet] = run_stage([root], 1, "p", counters, [Chunk(items, "s", "p0", 1000, "f", 1)])
    assert len(packet.exits[0]) == 299
    [dead] = packet.dead
    assert dead.origin is not None and dead.origin.line == 258 and dead.origin.offset == 1257
