"""Random events through random chains agree with the reference interpreter."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import Pipeline, Stream, sinks, sources
from tests.reference import interpret

FILTERS = [lambda x: x % 2 == 0, lambda x: x > 0, lambda x: 10 // x > 0]
MAPS = [lambda x: x + 1, lambda x: x * 3, lambda x: 100 // (x - 5)]
FLAT_MAPS = [lambda x: [x, -x], lambda x: [] if x % 3 else [x]]
KEYS = [lambda x: str(x % 4), lambda x: x if x > 40 else "k"]


def grow(data: st.DataObject, stream: Stream[Any], depth: int, sinks_made: list[int]) -> Pipeline:
    for _ in range(data.draw(st.integers(0, 3))):
        kind = data.draw(st.sampled_from(["filter", "map", "flat_map", "key_by", "inspect"]))
        if kind == "filter":
            stream = stream.filter(data.draw(st.sampled_from(FILTERS)))
        elif kind == "map":
            stream = stream.map(data.draw(st.sampled_from(MAPS)))
        elif kind == "flat_map":
            stream = stream.flat_map(data.draw(st.sampled_from(FLAT_MAPS)))
        elif kind == "key_by":
            stream = stream.key_by(data.draw(st.sampled_from(KEYS)))
        else:
            stream = stream.inspect(lambda x: None)
    if depth < 2 and data.draw(st.booleans()):
        preds = data.draw(st.lists(st.sampled_from(FILTERS), min_size=1, max_size=2))
        routes = stream.forward(
            mode=data.draw(st.sampled_from(["first", "all"])),
            otherwise="other" if data.draw(st.booleans()) else None,
            **{f"r{i}": p for i, p in enumerate(preds)},
        )
        branches = [grow(data, branch, depth + 1, sinks_made) for branch in routes]
        result = branches[0]
        for b in branches[1:]:
            result = result | b
        return result
    sinks_made.append(len(sinks_made))
    return stream.write(sinks.memory(f"out{sinks_made[-1]}"))


def canon(outputs: dict[str, list[Any]]) -> dict[str, Counter[Any]]:
    return {k: Counter(v) for k, v in outputs.items() if v}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    events=st.lists(st.integers(-50, 50), max_size=300),
    workers=st.sampled_from([1, 2]),
    batch=st.sampled_from([1, 7, 1000]),
)
def test_compiled_pipeline_agrees_with_reference(
    data: st.DataObject, events: list[int], workers: int, batch: int
) -> None:
    start = Pipeline("prop").read(sources.memory(events, partitions=2, batch_size=batch))
    pipeline = grow(data, start, 0, [])
    expected = interpret(pipeline)
    result = pipeline.run(workers=workers)
    assert canon(result.outputs) == canon(expected.outputs)
    got_dead = Counter({s: c.dead for s, c in result.counts.items() if c.dead})
    assert got_dead == expected.dead
    assert result.filtered == expected.filtered and result.unrouted == expected.unrouted
    assert result.reconciles
