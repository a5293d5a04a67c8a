"""Any bytewax source or sink in a pipeline: evflow's parsing, dead letters and counts around it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bytewax.connectors.files import FileSource
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource

from operators import Event, windows
from pipelines import Pipeline, sinks, sources
from tests.helpers import counted_per_user


class Click(Event):
    user: str


def test_a_bytewax_file_source_is_parsed_with_dead_letters_that_name_it(tmp_path: Path) -> None:
    path = tmp_path / "clicks.jsonl"
    lines = [json.dumps({"type": "click", "user": f"u{i}"}) for i in range(250)]
    lines[7] = '{"type": "click"'  # broken
    path.write_text("\n".join(lines) + "\n")
    p = Pipeline("files").read(sources.bytewax(FileSource(path, batch_size=40), schema=Click))
    result = p.write(sinks.memory("o")).run()
    assert len(result["o"]) == 249 and all(isinstance(c, Click) for c in result["o"])
    (letter,) = result.dead_letters
    assert letter.kind == "parse" and letter.origin is not None
    assert letter.origin.partition.endswith(str(path)) and letter.origin.offset == 7
    assert result.reconciles and result.read == 250


def test_a_bytewax_partition_resumes_from_its_own_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "n.txt"
    path.write_text("".join(f"{i}\n" for i in range(100)))
    source = sources.bytewax(FileSource(path, batch_size=30))
    (part,) = source.partitions()
    reader = source.open(part, "read", None)
    first = reader.next_chunk()
    assert first is not None and first.items == [str(i) for i in range(30)]
    position = reader.position()
    reader.close()
    again = source.open(part, "read", position)
    rest: list[Any] = []
    while True:
        try:
            chunk = again.next_chunk()
        except StopIteration:
            break
        rest += chunk.items if chunk else []
    again.close()
    assert rest == [str(i) for i in range(30, 100)]


class _Numbers(StatelessSourcePartition[int]):
    def __init__(self) -> None:
        self.left = list(range(10))

    def next_batch(self) -> list[int]:
        if not self.left:
            raise StopIteration
        batch, self.left = self.left[:4], self.left[4:]
        return batch


class Numbers(DynamicSource[int]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Numbers:
        return _Numbers()


class _Collect(StatelessSinkPartition[Any]):
    def __init__(self, into: list[Any], fail: bool) -> None:
        self.into = into
        self.fail = fail

    def write_batch(self, items: list[Any]) -> None:
        if self.fail and any(x == 3 for x in items):
            raise ConnectionError("the broker went away")
        self.into.extend(items)


class Collect(DynamicSink[Any]):
    def __init__(self, fail: bool = False) -> None:
        self.got: list[Any] = []
        self.fail = fail

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Collect:
        return _Collect(self.got, self.fail)


def test_a_bytewax_dynamic_source_and_sink_go_straight_into_read_and_write() -> None:
    sink = Collect()
    result = Pipeline("dyn").read(Numbers()).map(lambda n: n * 2).write(sink).run()
    assert sorted(sink.got) == [n * 2 for n in range(10)]
    assert result.written == 10 and result.reconciles


def test_a_failing_bytewax_sink_batch_becomes_dead_letters() -> None:
    sink = Collect(fail=True)
    lines = TestingSource(list(range(10)), batch_size=5)
    result = Pipeline("failing").read(sources.bytewax(lines)).write(sinks.bytewax(sink)).run()
    assert sorted(sink.got) == [5, 6, 7, 8, 9]
    assert len(result.dead_letters) == 5
    assert all("the broker went away" in d.message for d in result.dead_letters)
    assert result.reconciles


def test_what_is_not_a_bytewax_source_or_sink_is_refused() -> None:
    with pytest.raises(TypeError, match="needs a bytewax source"):
        sources.bytewax([1, 2, 3])
    with pytest.raises(TypeError, match="needs a bytewax DynamicSink"):
        sinks.bytewax("out.txt")
    with pytest.raises(TypeError, match=r"read\(sources.bytewax\(source, schema=MyEvent\)\)"):
        Pipeline("p").read([1, 2])  # type: ignore[arg-type]


class Message:
    def __init__(self, value: bytes | None) -> None:
        self.value = value


def test_value_takes_the_record_out_of_each_message_and_a_failure_is_a_dead_letter() -> None:
    messages = [Message(b'{"type": "click", "user": "ada"}'), Message(None), Message(b"{")]

    def value(m: Message) -> bytes:
        if m.value is None:
            raise ValueError("a message with no value")
        return m.value

    source = sources.bytewax(TestingSource(messages), value=value, schema=Click)
    result = Pipeline("msgs").read(source).write(sinks.memory("o")).run()
    assert [c.user for c in result["o"]] == ["ada"]
    assert sorted(d.kind for d in result.dead_letters) == ["parse", "parse"]
    assert any("a message with no value" in d.message for d in result.dead_letters)
    assert result.reconciles


def test_a_value_that_fails_without_a_schema_is_a_dead_letter_not_a_record() -> None:
    # Without a schema the failed message went on as a record (an Unreadable object
    # in the output), and the run reconciled.
    messages = [Message(b"one"), Message(None), Message(b"three")]

    def value(m: Message) -> bytes:
        if m.value is None:
            raise ValueError("a message with no value")
        return m.value

    source = sources.bytewax(TestingSource(messages), value=value)
    result = Pipeline("raw_msgs").read(source).write(sinks.memory("o")).run()
    assert result["o"] == [b"one", b"three"]
    [letter] = result.dead_letters
    assert letter.kind == "parse" and letter.message == "a message with no value"
    assert "value line" in str(letter.function) and result.reconciles


class Stamped:
    """A message as Kafka's source gives it: a value and a ``(kind, milliseconds)`` timestamp."""

    def __init__(self, value: bytes, ms: int | None) -> None:
        self.value = value
        self.timestamp = None if ms is None else (1, ms)


def test_time_dates_each_event_read_without_one_by_its_message() -> None:
    # Without it, such events were dated when they were parsed: a step on event time
    # refused every one (or, before that, counted them in the window of the read).
    base = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in milliseconds
    messages = [
        Stamped(b'{"user": "ada"}', base),
        Stamped(b'{"user": "ada"}', base + 30_000),
        Stamped(b'{"user": "ada"}', base + 90_000),
        Stamped(b'{"user": "bob", "time": "2026-01-01T00:01:30Z"}', base),  # its own is kept
        Stamped(b'{"user": "cy"}', None),  # no time known: dated when parsed, then refused
        Stamped(b'{"user": "dan"}', -1),  # raises in the time function below
    ]

    def stored(m: Stamped) -> float | None:
        if m.timestamp is None:
            return None
        if m.timestamp[1] < 0:
            raise ValueError("no timestamp")
        return m.timestamp[1] / 1000

    read = sources.bytewax(
        TestingSource(messages), value=lambda m: m.value, time=stored, schema=Click
    )
    result = counted_per_user(read, windows.tumbling(minutes=1))
    assert sorted((r.key, r.start.minute, r.n) for r in result["o"]) == [
        ("ada", 0, 2),
        ("ada", 1, 1),
        ("bob", 1, 1),
    ]
    assert sorted(d.error_type for d in result.dead_letters) == ["DefaultEventTime", "ValueError"]
    assert result.reconciles
    # Milliseconds given as seconds: a dead letter that says so, not a record of year 57,000.
    wrong = sources.bytewax(
        TestingSource(messages[:1]), value=lambda m: m.value, time=lambda m: m.timestamp[1]
    )
    [letter] = Pipeline("ms").read(wrong).write(sinks.memory("o")).run().dead_letters
    assert "epoch milliseconds? divide by 1000" in letter.message
