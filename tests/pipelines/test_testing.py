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
