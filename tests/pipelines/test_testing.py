"""The test seam: run a pipeline on given records instead of its sources."""

from __future__ import annotations

from pathlib import Path

from pipelines import Pipeline, sinks, sources, testing
from tests.helpers import Purchase, View, line


def test_records_replace_every_source_and_keep_its_schema(tmp_path: Path) -> None:
    p = (
        Pipeline("seam")
        .read(sources.jsonl(tmp_path / "never-read-*.jsonl", schema=View | Purchase))
        .filter(Purchase)
        .map(lambda e: e.amount)
        .write(sinks.memory("amounts"))
    )
    records = [line(type="purchase", user="a", amount=2), line(type="view", user="b"), "{"]
    for workers in (1, 2):
        result = testing.run(p, records, workers=workers)
        assert result["amounts"] == [2.0]
        assert [d.kind for d in result.dead_letters] == ["parse"]
        assert result.read == 3 and result.reconciles
    # The pipeline itself is unchanged: it still reads its files.
    assert p.graph["read_jsonl_never_read"].params["source"].path.endswith("*.jsonl")


def test_records_with_an_explicit_schema() -> None:
    p = Pipeline("seam").read(sources.memory([])).write(sinks.memory("o"))
    result = testing.run(p, [{"type": "view", "user": "u"}], schema=View)
    assert isinstance(result["o"][0], View)


def test_replace_sources_splits_the_records_into_partitions() -> None:
    from pipelines import Pipeline, sinks, sources, testing

    p = Pipeline("split").read(sources.memory(["x"])).write(sinks.memory("o"))
    split = testing.replace_sources(p, range(10), partitions=2)
    [source] = [n.params["source"] for n in split.graph if n.kind == "read"]
    assert source.partitions() == ["part0", "part1"]
    assert sorted(split.run()["o"]) == list(range(10))
    found = testing.explore(p, range(10), partitions=2, runs=2, vary=("workers",))
    assert sum(found.outputs["memory_o"].values()) == 10


def test_each_side_of_a_join_gets_its_own_records_by_read_step_name(tmp_path: Path) -> None:
    # One list went to every source: a join's two sides both read orders and
    # customers alike (each side's schema made dead letters of the other's).
    from datetime import datetime, timedelta, timezone

    import pytest

    from operators import Event

    class Order(Event):
        customer: str

    class Customer(Event):
        customer: str
        tier: str

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    p = Pipeline("shop")
    orders = p.read(sources.jsonl(tmp_path / "orders-*.jsonl", schema=Order), name="orders")
    table = p.read(sources.jsonl(tmp_path / "cust-*.jsonl", schema=Customer), name="customers")
    joined = orders.key_by(lambda o: o.customer).join(
        table.key_by(lambda c: c.customer, name="customer_key").as_table(),
        select=lambda o, c: (o.id, c.tier if c else None),
    )
    flow = joined.write(sinks.memory("out"))
    records = {
        "orders": [Order(customer="ada", id="o1", time=t0 + timedelta(minutes=1))],
        "customers": [Customer(customer="ada", tier="gold", time=t0).model_dump_json()],
    }
    result = testing.run(flow, records, workers=2)
    assert result["out"] == [("o1", "gold")] and result.dead_letters == [] and result.reconciles
    found = testing.explore(flow, records, runs=3, vary=("batch", "workers"))
    assert list(found.outputs["memory_out"]) == ['["o1", "gold"]']
    with pytest.raises(ValueError, match=r"records for 'order': .* read steps are 'orders', 'cu"):
        testing.run(flow, {"order": []})
    # A preview takes the same dict: each side its own sample.
    assert flow.preview(records)["out"] == [("o1", "gold")]
    assert testing.preview(flow, records)["out"] == [("o1", "gold")]


def test_a_stream_where_a_pipeline_is_needed_is_refused_with_what_to_pass() -> None:
    # Each of these failed with a bare AttributeError ('Stream' object has no
    # attribute 'graph'): a careless user passes the stream before its write.
    import pytest

    from operators import agg

    stream = Pipeline("p").read(sources.memory([1, 2, 3])).map(lambda x: x + 1, name="plus")
    counts = stream.key_by(lambda x: str(x)).aggregate(n=agg.count())
    calls = {
        "testing.run": lambda s: testing.run(s, [5]),
        "testing.explore": lambda s: testing.explore(s, runs=1),
        "testing.preview": lambda s: testing.preview(s),
        "testing.replace_sources": lambda s: testing.replace_sources(s, [5]),
    }
    for name, call in calls.items():
        for given, step in ((stream, "plus"), (counts, "aggregate_running_n")):
            with pytest.raises(
                TypeError,
                match=rf"^{name} takes a pipeline .*a stream at step {step!r} .*"
                rf"Hint: write it first, {name}\(stream.write",
            ):
                call(given)
    with pytest.raises(TypeError, match=r"^testing.run takes a pipeline; got int 5\. Hint"):
        testing.run(5)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^testing.outputs takes a stream .*got Pipeline .*testing.run\(pipeline\)"
    ):
        testing.outputs(stream.write(sinks.memory("o")))  # type: ignore[arg-type]
    # What the hints say works.
    assert testing.run(stream.write(sinks.memory("out")), [5])["out"] == [6]
    assert sorted(testing.outputs(stream)) == [2, 3, 4]
    # testing.head reads a source: a stream or a pipeline is told where to go instead
    # (it failed with "'Stream' object has no attribute 'partitions'").
    for given in (stream, counts, stream.write(sinks.memory("o"))):
        with pytest.raises(
            TypeError,
            match=r"^testing.head takes a source; got (Stream|KeyedStream|Pipeline|\w+) "
            r".*Hint: testing.outputs\(stream\)",
        ):
            testing.head(given, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"limit must be a whole number of records; got -1"):
        testing.head(sources.memory([1]), -1)
    assert testing.head(sources.memory([1, 2, 3]), 2) == [1, 2]
