from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from operators import Event
from pipelines import Pipeline, sinks, sources, testing
from tests.helpers import Purchase, View


def test_jsonl_sink_writes_events_and_truncates_on_each_run(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.jsonl"
    events = [View(user=str(i)) for i in range(50)]
    p = Pipeline("w").read(sources.memory(events, batch_size=7)).write(sinks.jsonl(out))
    p.run(workers=2)
    p.run(workers=2)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(int(r["user"]) for r in rows) == list(range(50))


class Tagged(Event):
    n: int
    tag: Any = None


class Opaque:
    """A value JSON has no form for."""

    def __str__(self) -> str:
        return "opaque"


@pytest.mark.parametrize("exactly_once", [False, True])
def test_a_record_no_json_can_hold_is_a_dead_letter_of_the_write_and_the_rest_is_written(
    exactly_once: bool, tmp_path: Path
) -> None:
    # A record holding itself stopped the run with the serializer's error (an
    # event with an opaque value in a field too), and the batch was lost with it.
    cycle: list[Any] = [1]
    cycle.append(cycle)
    records: list[Any] = [Tagged(n=0), cycle, Tagged(n=2, tag=Opaque()), {"n": 3}]
    out = tmp_path / "out.jsonl"
    p = Pipeline("w").read(sources.memory(records)).write(sinks.jsonl(out), name="to_file")
    result = p.run(recovery=tmp_path / "store" if exactly_once else None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n"] for r in rows] == [0, 2, 3]
    assert rows[1]["tag"] == "opaque"  # as a dict's value is: its str()
    [letter] = result.dead_letters
    assert (letter.step, letter.kind, letter.error_type) == ("to_file", "user_error", "ValueError")
    assert "Circular reference" in letter.message and letter.payload.startswith("[1, [")
    assert result.counts["to_file"].dead == 1 and result.counts["to_file"].out == 3
    assert result.reconciles


class Unshowable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_stdout_sink_prints(capsys: pytest.CaptureFixture[str]) -> None:
    Pipeline("o").read(sources.memory(["hello"])).write(sinks.stdout(prefix=">")).run()
    assert "> hello" in capsys.readouterr().out
    # A record that cannot be shown is a dead letter of the step; the rest is printed.
    records: list[Any] = ["one", Unshowable(), "two"]
    result = Pipeline("o").read(sources.memory(records)).write(sinks.stdout()).run()
    printed = capsys.readouterr().out
    assert "one" in printed and "two" in printed
    [letter] = result.dead_letters
    assert (letter.step, letter.error_type) == ("stdout", "RuntimeError") and result.reconciles


def test_stdout_read_by_a_program_gets_each_record_whole_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Piped (`evflow run ... | grep`), records were shown as for a terminal: markup
    # eaten ("[red]x[/red]" printed "x", "[/]" a dead letter), emoji codes replaced,
    # long records wrapped at 80 columns and dicts spread over many lines.
    records: list[Any] = [
        "[red]x[/red]",
        "[/] and :thumbs_up:",
        {"k": "[bold]" + "y" * 120, "n": list(range(30))},
        Purchase(user="ada", amount=3.5, id="p1", time="2026-01-01T00:00:00Z"),
    ]
    result = Pipeline("o").read(sources.memory(records)).write(sinks.stdout()).run()
    assert result.written == 4 and result.dead == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == [
        "[red]x[/red]",
        "[/] and :thumbs_up:",
        json.dumps(records[2]),
        records[3].model_dump_json(),
    ]


def test_callback_sink_failures_become_dead_letters() -> None:
    seen: list[Any] = []

    def keep(x: int) -> None:
        if x == 3:
            raise RuntimeError("disk full")
        seen.append(x)

    result = testing.run(Pipeline("c").read(sources.memory(range(5))).write(sinks.callback(keep)))
    assert sorted(seen) == [0, 1, 2, 4]
    [dead] = result.dead_letters
    assert dead.step == "callback_keep" and dead.message == "disk full" and dead.payload == "3"
    assert result.written == 4 and result.dead == 1 and result.reconciles


def test_sink_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"memory sink name must be an identifier; got 'a b'"):
        sinks.memory("a b")
    with pytest.raises(TypeError, match=r"callback sink needs a callable; got int"):
        sinks.callback(3)  # type: ignore[arg-type]


def test_dead_letters_can_go_to_any_sink(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    p = (
        Pipeline("d")
        .read(sources.memory(["{}", '{"type": "view", "user": "u"}'], schema=View))
        .write(sinks.memory("ok"))
        .dead_letters(sinks.jsonl(dead))
    )
    result = p.run()
    [row] = [json.loads(x) for x in dead.read_text().splitlines()]
    assert row["kind"] == "validation" and row["errors"][0]["loc"] == ["user"]
    assert result.dead == 1 and result.dead_letters == [] and result.reconciles
    assert result.counts["dead_letters"].out == 1


def test_every_line_a_jsonl_sink_writes_is_json_even_with_nan(tmp_path: Path) -> None:
    # A mean of nothing, a ratio over zero: nan and infinities were written as
    # NaN and Infinity, which JSON does not have (jq, JavaScript and strict
    # parsers refuse the line). They are written as null, as pydantic does.
    out = tmp_path / "out.jsonl"
    nan, inf = float("nan"), float("inf")
    records: list[Any] = [nan, {"ratio": inf, "parts": [1.5, -inf]}, (nan, 2), {nan: 1}]
    Pipeline("w").read(sources.memory(records)).write(sinks.jsonl(out)).run()

    def strict(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    rows = [json.loads(line, parse_constant=strict) for line in out.read_text().splitlines()]
    assert rows == [None, {"ratio": None, "parts": [1.5, None]}, [None, 2], {"NaN": 1}]


def test_dates_and_sets_in_a_dict_are_written_as_json_that_reads_back(tmp_path: Path) -> None:
    # A datetime was written as its str() ("2026-01-01 00:00:00+00:00") and a set as its
    # repr ("{'b', 'a'}", in an order that changes from run to run).
    from datetime import datetime, timedelta, timezone

    from operators import agg, windows

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [
        {"k": "a", "t": t0 + timedelta(seconds=40 * i), "tags": {"z", "b", str(i)}}
        for i in range(4)
    ]
    path = tmp_path / "rows.jsonl"
    Pipeline("out").read(sources.memory(rows)).write(sinks.jsonl(path)).run()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[1] == {"k": "a", "t": "2026-01-01T00:00:40+00:00", "tags": ["1", "b", "z"]}
    counts = (
        Pipeline("back")
        .read(sources.memory(path.read_text().splitlines()))
        .map(json.loads)
        .key_by(lambda r: r["k"])
        .window(windows.tumbling(minutes=1), clock=windows.event_time("t"))
        .aggregate(n=agg.count())
        .write(sinks.memory("o"))
        .run()
    )
    minute = timedelta(minutes=1)
    assert [(r.start, r.n) for r in counts["o"]] == [
        (t0, 2),
        (t0 + minute, 1),
        (t0 + 2 * minute, 1),
    ]


def test_bytes_in_a_dict_are_written_as_their_text_as_an_events_are(tmp_path: Path) -> None:
    """Bytes were written as their repr ("b'caf\\xc3\\xa9'"); an event's are their UTF-8 text."""
    from operators import Event

    class Blob(Event):
        body: bytes

    path = tmp_path / "rows.jsonl"
    rows = [{"body": "café".encode()}, {"body": b"\xff"}, Blob(id="b", body="café".encode())]
    result = Pipeline("out").read(sources.memory(rows)).write(sinks.jsonl(path)).run()
    assert result.reconciles and not result.dead_letters
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["body"] for line in lines] == ["café", "\udcff", "café"]
    assert Blob.model_validate(lines[0] | {"id": "b"}).body == "café".encode()


def test_events_dataclasses_and_enums_in_a_dict_are_written_as_pydantic_writes_them(
    tmp_path: Path,
) -> None:
    # Each was written as its str(): an event as "type='view' id='v1' time=datetime...",
    # a dataclass as "Point(x=1)", an Enum as "Color.RED".
    import enum
    from dataclasses import dataclass

    class Color(enum.Enum):
        RED = "red"

    @dataclass
    class Point:
        x: int
        color: Color

    @dataclass
    class Reading:
        value: float

    seen = View(id="v1", time="2026-01-01T00:00:00Z", user="ada")
    rows = [
        {"view": seen, "at": Point(1, Color.RED), "all": [seen], "c": Color.RED},
        {"reading": Reading(float("nan"))},  # not finite: null, as in a dict
    ]
    path = tmp_path / "rows.jsonl"
    result = Pipeline("out").read(sources.memory(rows)).write(sinks.jsonl(path)).run()
    assert result.reconciles and not result.dead_letters
    [line, reading] = [json.loads(line) for line in path.read_text().splitlines()]
    assert reading == {"reading": {"value": None}}
    assert line == {
        "view": json.loads(seen.model_dump_json()),
        "at": {"x": 1, "color": "red"},
        "all": [json.loads(seen.model_dump_json())],
        "c": "red",
    }
    assert View.model_validate(line["view"]) == seen


def test_a_generator_or_an_object_without_data_is_a_dead_letter_not_its_address(
    tmp_path: Path,
) -> None:
    # A map returning a generator wrote "<generator object <genexpr> at 0x7f...>" for
    # each record, and the run reconciled.
    path = tmp_path / "rows.jsonl"
    result = (
        Pipeline("out")
        .read(sources.memory([[1, 2], [3], {"x": 4}]))
        .map(lambda r: {"o": object()} if isinstance(r, dict) else (n * 2 for n in r))
        .write(sinks.jsonl(path))
        .run()
    )
    assert path.read_text() == ""
    assert result.reconciles and result.dead == 3
    kinds = sorted((d.step, d.error_type, d.message.split(":")[0]) for d in result.dead_letters)
    assert kinds == [
        ("jsonl_rows", "TypeError", "a generator is not data JSON can hold"),
        ("jsonl_rows", "TypeError", "a generator is not data JSON can hold"),
        ("jsonl_rows", "TypeError", "an object is not data JSON can hold"),
    ]
    assert all("0x" not in d.message for d in result.dead_letters)
    generator = next(d for d in result.dead_letters if "generator" in d.message)
    assert "Hint: flat_map(fn) hands on each item" in generator.message


def test_a_dead_letters_payload_holding_an_event_is_json() -> None:
    seen = View(id="v1", time="2026-01-01T00:00:00Z", user="ada")

    def fail(r: Any) -> Any:
        raise ValueError("no")

    result = (
        Pipeline("p")
        .read(sources.memory([{"view": seen}]))
        .map(fail)
        .write(sinks.memory("o"))
        .run()
    )
    [letter] = result.dead_letters
    assert json.loads(letter.payload) == {"view": json.loads(seen.model_dump_json())}
