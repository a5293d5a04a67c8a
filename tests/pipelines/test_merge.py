"""merge and fan-out: several streams into one, one stream into several sinks."""

from __future__ import annotations

from pipelines import Pipeline, sinks, sources


def test_merge_interleaves_sources_and_keeps_counts() -> None:
    p = Pipeline("mg")
    a = p.read(sources.memory([1, 2, 3], name="a"))
    b = p.read(sources.memory([10, 20], name="b"))
    merged = a.merge(b.map(lambda x: x + 1)).filter(lambda x: x != 2)
    result = merged.write(sinks.memory("out")).run(workers=2)
    assert sorted(result["out"]) == [1, 3, 11, 21]
    assert result.read == 5 and result.counts["merge"].received == 5 and result.reconciles


def test_one_stream_written_twice_counts_the_copy() -> None:
    s = Pipeline("t").read(sources.memory([1, 2]))
    result = (s.write(sinks.memory("a")) | s.write(sinks.memory("b"))).run()
    assert sorted(result["a"]) == sorted(result["b"]) == [1, 2]
    # The read step handed on 2 records, each to two readers: "out" says 2, the
    # second reader's copies are counted apart (not as doubled out and created).
    step = result.counts["read_memory"]
    assert (step.out, step.created, step.copies) == (2, 0, 2)
    assert result.copies == 2 and result.written == 4 and result.reconciles
