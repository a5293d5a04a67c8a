"""Errors never stop a pipeline by default; each step's policy decides."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ConfigDict

from operators import Chunk, Event, ExactSink, ExactWriter, Reader, RunContext, Sink, Source, Writer
from pipelines import Pipeline, PipelineError, PipelineHalted, retry, sinks, sources, testing
from tests.helpers import Purchase, View


def risky(e: Any) -> float:
    if e.amount == 13:
        raise ValueError(f"unlucky amount for {e.user}")
    return float(e.amount) * 2


def test_bad_jsonl_input_is_dead_lettered_with_origin_and_counts_reconcile(
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    expected: Counter[str] = Counter()
    expected_lines: dict[str, set[tuple[str, int]]] = {"parse": set(), "validation": set()}
    good_purchases = 0
    views = 0
    for f in range(3):
        rows = []
        for n in range(1, 701):
            roll = rng.random()
            amount = rng.choice([13, 20, 30, 40])
            if roll < 0.025:
                rows.append('{"type": "purchase", "user": ')  # not JSON
                expected["parse"] += 1
                expected_lines["parse"].add((f"f{f}.jsonl", n))
            elif roll < 0.05:
                rows.append(json.dumps({"type": "purchase", "user": "x", "amount": "many"}))
                expected["validation"] += 1
                expected_lines["validation"].add((f"f{f}.jsonl", n))
            elif roll < 0.06:
                rows.append(json.dumps({"type": "refund", "user": "x"}))  # unknown type
                expected["validation"] += 1
                expected_lines["validation"].add((f"f{f}.jsonl", n))
            elif roll < 0.5:
                rows.append(json.dumps({"type": "view", "user": f"u{n}"}))
                views += 1
            else:
                rows.append(json.dumps({"type": "purchase", "user": f"u{n}", "amount": amount}))
                if amount == 13:
                    expected["user_error"] += 1
                else:
                    good_purchases += 1
        (tmp_path / f"f{f}.jsonl").write_text("\n".join(rows) + "\n")

    routes = (
        Pipeline("bad_input")
        .read(sources.jsonl(tmp_path / "*.jsonl", schema=View | Purchase, batch_size=64))
        .forward(buys=lambda e: isinstance(e, Purchase), otherwise="other")
    )
    p = routes.buys.map(risky).write(sinks.memory("doubled")) | routes.other.write(
        sinks.memory("views")
    )
    for workers in (1, 2):
        result = p.run(workers=workers)
        assert result.read == 2100
        assert len(result["doubled"]) == good_purchases and len(result["views"]) == views
        assert Counter(d.kind for d in result.dead_letters) == expected
        for kind, lines in expected_lines.items():
            got = {
                (Path(d.origin.file or "").name, d.origin.line)
                for d in result.dead_letters
                if d.kind == kind and d.origin
            }
            assert got == lines
        validation = [d for d in result.dead_letters if d.kind == "validation"]
        assert all(d.errors and "url" not in d.errors[0] for d in validation)
        user = [d for d in result.dead_letters if d.kind == "user_error"]
        assert all(d.step == "buys_map_risky" and d.error_type == "ValueError" for d in user)
        assert all(
            d.message.startswith("unlucky amount") and '"amount":13' in d.payload for d in user
        )
        assert result.dead == sum(expected.values())
        assert result.read == result.written + result.dead and result.reconciles


class Flaky:
    """Fails the first ``fails`` calls for each record, then works."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.calls: Counter[int] = Counter()

    def __call__(self, x: int) -> int:
        self.calls[x] += 1
        if self.calls[x] <= self.fails:
            raise ConnectionError(f"try {self.calls[x]} for {x}")
        return x * 10


def test_a_bad_records_dead_letter_says_what_is_wrong_and_where() -> None:
    lines = [
        '{"type": "purchase", "user": "eve"',
        '{"type": "purchase", "user": "eve", "amount": "a lot"}',
        '{"type": "refund", "user": "eve"}',
        '{"type": "purchase", "time": "2026-01-01T00:00:00", "amount": "x"}',
        "null",
    ]
    result = (
        Pipeline("said")
        .read(sources.memory(lines, schema=View | Purchase))
        .write(sinks.memory("out"))
        .run()
    )
    assert [(d.kind, d.message) for d in result.dead_letters] == [
        ("parse", "Invalid JSON: EOF while parsing an object at line 1 column 34"),
        (
            "validation",
            "purchase.amount: Input should be a valid number, unable to parse string as a number",
        ),
        (
            "validation",
            "Input tag 'refund' found using 'type' does not match any of the expected tags: "
            "'view', 'purchase'",
        ),
        (
            "validation",
            "purchase.time: Input should have timezone info; purchase.user: Field required; "
            "purchase.amount: Input should be a valid number, unable to parse string as a number",
        ),
        ("validation", "Input should be an object"),
    ]
    assert result.reconciles


def test_retry_then_succeed() -> None:
    flaky = Flaky(fails=2)
    result = (
        Pipeline("r")
        .read(sources.memory([1, 2, 3]))
        .map(flaky, on_error=retry(3, backoff=0.001))
        .write(sinks.memory("o"))
        .run()
    )
    assert sorted(result["o"]) == [10, 20, 30] and result.dead == 0
    assert flaky.calls == Counter({1: 3, 2: 3, 3: 3})


def test_retry_exhausted_becomes_a_dead_letter_with_attempts() -> None:
    flaky = Flaky(fails=5)
    result = (
        Pipeline("r")
        .read(sources.memory([1, 2]))
        .map(flaky, name="call_service", on_error=retry(2, backoff=0))
        .write(sinks.memory("o"))
        .run()
    )
    assert result["o"] == [] and result.dead == 2
    assert {d.attempts for d in result.dead_letters} == {2}
    assert {d.message for d in result.dead_letters} == {"try 2 for 1", "try 2 for 2"}
    assert result.reconciles


def test_skip_counts_without_dead_letters() -> None:
    result = (
        Pipeline("s")
        .read(sources.memory([1, 0, 2]))
        .filter(lambda x: 1 / x > 0, on_error="skip")
        .write(sinks.memory("o"))
        .run()
    )
    assert sorted(result["o"]) == [1, 2] and result.dead_letters == []
    assert result.skipped == 1 and result.reconciles


def test_skip_on_parse() -> None:
    result = (
        Pipeline("s")
        .read(sources.memory(["{", '{"type": "view", "user": "u"}'], schema=View), on_error="skip")
        .write(sinks.memory("o"))
        .run()
    )
    assert len(result["o"]) == 1 and result.skipped == 1 and result.dead == 0


def explode(x: int) -> int:
    if x == 2:
        raise KeyError("no price for item 2")
    return x


def test_halt_stops_with_the_users_exception_first() -> None:
    p = (
        Pipeline("h")
        .read(sources.memory([1, 2, 3]))
        .map(explode, name="price", on_error="halt")
        .write(sinks.memory("o"))
    )
    with pytest.raises(PipelineHalted) as info:
        p.run()
    halted = info.value
    assert halted.step == "price" and halted.payload == "2"
    assert "pipeline 'h' halted at step 'price' (<tests.pipelines.test_errors.explode line" in str(
        halted
    )
    assert isinstance(halted.__cause__, KeyError)
    text = "".join(traceback.format_exception(halted))
    # The user's exception comes first, and no engine wrapper sits between.
    assert text.index("KeyError: 'no price for item 2'") < text.index("PipelineHalted")
    assert "PanicException" not in text and "error calling" not in text


def test_halt_on_parse_names_the_schema() -> None:
    p = (
        Pipeline("h")
        .read(sources.memory(["nope"], schema=View), on_error="halt")
        .write(sinks.memory("o"))
    )
    with pytest.raises(PipelineHalted, match=r"halted at step 'read_memory' \(schema\)"):
        p.run()


def test_an_error_outside_user_code_is_shown_without_engine_wrappers(tmp_path: Path) -> None:
    p = (
        Pipeline("x")
        .read(sources.jsonl(tmp_path / "missing.jsonl", schema=View))
        .write(sinks.memory("o"))
    )
    with pytest.raises(FileNotFoundError, match=r"jsonl source: no file matches"):
        p.run()


class _BrokenWriter(Writer):
    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        raise OSError("disk full")


class BrokenSink(Sink):
    @property
    def label(self) -> str:
        return "broken"

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        return _BrokenWriter()


def test_a_broken_sink_stops_the_run_with_its_own_error() -> None:
    p = Pipeline("b").read(sources.memory(range(5000), batch_size=10)).write(BrokenSink())
    with pytest.raises(OSError, match=r"^disk full$"):
        p.run(workers=2)


class _FailingReader(Reader):
    def __init__(self) -> None:
        self.calls = 0

    def next_chunk(self) -> Chunk | None:
        self.calls += 1
        if self.calls > 2:
            raise ConnectionResetError("peer went away")
        return Chunk([self.calls], "s", "p0")

    def position(self) -> int:
        return self.calls


class FailingSource(Source):
    @property
    def label(self) -> str:
        return "failing"

    def partitions(self) -> list[str]:
        return ["p0"]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        return _FailingReader()


def test_a_failing_source_stops_the_run_with_its_own_error() -> None:
    p = Pipeline("f").read(FailingSource()).write(sinks.memory("o"))
    with pytest.raises(ConnectionResetError, match=r"peer went away"):
        p.run()


def test_cli_shows_a_source_error_without_an_engine_panic(tmp_path: Path) -> None:
    app = tmp_path / "missing_input.py"
    app.write_text(
        "from pipelines import Pipeline, sources, sinks\n"
        "from pipelines.catalog.clickstream import PageView\n"
        "p = Pipeline('x').read(sources.jsonl('nope.jsonl', schema=PageView))"
        ".write(sinks.memory('o'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", f"{app}:p"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "FileNotFoundError: jsonl source: no file matches 'nope.jsonl'" in done.stderr
    assert "panicked" not in done.stderr


class _Reading(Event):
    sensor: str
    value: float


class _Loose(_Reading):
    model_config = ConfigDict(allow_inf_nan=True)


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_validation_dead_letters(tmp_path: Path, raw: str) -> None:
    lines = ['{"sensor": "a", "value": 1.5}', f'{{"sensor": "b", "value": {raw}}}']
    out = tmp_path / "out.jsonl"
    result = (
        Pipeline("finite")
        .read(sources.memory(lines, schema=_Reading))
        .write(sinks.jsonl(out))
        .run()
    )
    [letter] = result.dead_letters
    assert letter.kind == "validation" and letter.step == "read_memory"
    assert letter.errors is not None and letter.errors[0]["type"] == "finite_number"
    assert raw in letter.payload
    assert [json.loads(line)["value"] for line in out.read_text().splitlines()] == [1.5]
    # A class that opts in keeps the value, written out as the JSON constant.
    loose = (
        Pipeline("loose").read(sources.memory(lines, schema=_Loose)).write(sinks.jsonl(out)).run()
    )
    assert loose.dead_letters == []
    written = out.read_text().splitlines()[1]
    assert ('"value":NaN' in written) if raw == "NaN" else ("Infinity" in written)


MANY_BAD = """
import json, sys
from pipelines import Pipeline, sources, sinks
from tests.helpers import View
path = sys.argv[1]
with open(path, "w") as f:
    for i in range(1_000_000):
        f.write('{"type": "view", "user": "u%d"\\n' % i)  # not JSON: the brace never closes
r = Pipeline("bad").read(sources.jsonl(path, schema=View)).write(sinks.memory("o")).run()
print(json.dumps({
    "dead": r.dead, "kept": len(r.dead_letters), "reconciles": r.reconciles,
    "counts": {f"{s}:{k}": n for (s, k), n in r.dead_letter_counts.items()},
    "first": r.dead_letters[0].payload,
    # The peak resident size of this program (ru_maxrss would count the parent's
    # memory too: Linux keeps the larger of it and the forked copy's across exec).
    "rss_mb": next(int(l.split()[1]) for l in open("/proc/self/status")
                   if l.startswith("VmHWM:")) / 1024,
}))
"""


def test_a_million_bad_lines_keep_a_bounded_sample_and_exact_counts(tmp_path: Path) -> None:
    from operators import DEAD_LETTERS_KEPT

    done = subprocess.run(
        [sys.executable, "-c", MANY_BAD, str(tmp_path / "bad.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    assert got["dead"] == 1_000_000 and got["reconciles"]
    assert got["kept"] == DEAD_LETTERS_KEPT == 10_000
    assert got["counts"] == {"read_jsonl_bad:parse": 1_000_000}
    assert got["first"] == '{"type": "view", "user": "u0"'
    assert got["rss_mb"] < 300, got  # all of them kept took gigabytes


def test_dead_letters_beyond_the_bound_are_counted_on_several_processes() -> None:
    from operators import DEAD_LETTERS_KEPT

    lines = ["not json"] * (DEAD_LETTERS_KEPT + 500)
    result = (
        Pipeline("bound")
        .read(sources.memory(lines, schema=View, partitions=2))
        .write(sinks.memory("o"))
        .run(processes=2)
    )
    assert len(result.dead_letters) == DEAD_LETTERS_KEPT
    assert result.dead_letter_counts == {("read_memory", "parse"): DEAD_LETTERS_KEPT + 500}
    assert result.to_dict()["dead_letters_kept"] == {"parse": DEAD_LETTERS_KEPT + 500}
    assert result.dead == DEAD_LETTERS_KEPT + 500 and result.reconciles


def test_a_run_that_would_write_a_file_it_reads_or_one_file_twice_is_refused(
    tmp_path: Path,
) -> None:
    # A run empties the files it writes before it reads: writing its own
    # input would lose it. Each case is refused before anything runs, and
    # the input is left as it was.
    data = tmp_path / "in" / "a.jsonl"
    data.parent.mkdir()
    line = View(user="ada", page="/").model_dump_json() + "\n"
    data.write_text(line)
    glob_ = str(tmp_path / "in" / "*.jsonl")
    table = tmp_path / "t.csv"
    table.write_text("user,page\nada,/\n")

    def read(path: str | Path) -> Any:
        return Pipeline("files").read(sources.jsonl(path, schema=View), name="read")

    both = read(data)
    cases = [
        (read(data).write(sinks.jsonl(data)), r"step 'jsonl_a' would write .*a\.jsonl', which "),
        (read(glob_).write(sinks.jsonl(tmp_path / "in" / "b.jsonl")), r"which step 'read' reads"),
        (
            read(data).write(sinks.memory("o")).dead_letters(sinks.jsonl(data)),
            r"its dead-letter sink would write",
        ),
        (
            both.write(sinks.jsonl(tmp_path / "o.jsonl"), name="w1")
            | both.write(sinks.jsonl(f"{tmp_path}/./o.jsonl"), name="w2"),
            r"step 'w1' and step 'w2' would both write",
        ),
        (read(data).write(sinks.jsonl(tmp_path)), r"which is a directory"),
        (
            Pipeline("csv")
            .read(sources.csv(table, schema=View), name="table")
            .write(sinks.jsonl(table)),
            r"would write .*t\.csv', which step 'table' reads",
        ),
    ]
    for pipeline, message in cases:
        with pytest.raises(ValueError, match=message):
            pipeline.run()
        with pytest.raises(ValueError, match=message):
            pipeline.run(recovery=tmp_path / "store", processes=2)
        assert data.read_text() == line
    assert not (tmp_path / "in" / "b.jsonl").exists() and not (tmp_path / "o.jsonl").exists()
    assert table.read_text() == "user,page\nada,/\n"
    with pytest.raises(IsADirectoryError, match=r"is a directory, not a file. Hint: .*\*\.jsonl"):
        read(tmp_path).write(sinks.memory("o")).run()
    # Reading one file and writing another next to it is fine.
    result = read(data).write(sinks.jsonl(tmp_path / "out.jsonl")).run()
    assert result.read == 1 and (tmp_path / "out.jsonl").read_text().count("\n") == 1


class _Unshowable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_record_that_cannot_be_shown_is_still_a_dead_letter() -> None:
    # A dead letter holds its record as text; a record whose repr raises, or
    # an int longer than Python turns into text, used to stop the run while
    # its dead letter was made.
    def boom(x: Any) -> Any:
        raise ValueError("boom")

    items = [_Unshowable(), 10**5000, "fine"]
    result = Pipeline("shown").read(sources.memory(items)).map(boom).write(sinks.memory("o")).run()
    payloads = [d.payload for d in result.dead_letters]
    assert payloads[0] == "<a _Unshowable that cannot be shown: RuntimeError: no repr>"
    assert payloads[1].startswith("<a int that cannot be shown: ValueError: Exceeds the limit")
    assert payloads[2] == "fine"
    assert result.dead == 3 and result.reconciles


def test_a_record_whose_time_cannot_be_read_is_a_dead_letter_that_says_why() -> None:
    # Records without the clock's field (ints, the tuples a join's select
    # builds, dicts) reach steps on event time: each is a validation dead
    # letter naming the field, with a hint; a failing clock function is that
    # function's user error, and a failing key function the key function's.
    from datetime import datetime, timedelta, timezone

    from operators import agg, windows

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    views = [View(user=f"u{i % 2}", page="/", time=t0 + timedelta(seconds=i)) for i in range(4)]

    def steps(p: Pipeline) -> Any:
        ints = p.read(sources.memory([1, 2]), name="ints").key_by(str, name="int_key")
        counted = ints.process(lambda n, e, ctx: n + 1, initial=int, name="count")
        dicts = p.read(sources.memory([{"when": t0}]), name="dicts").key_by(
            lambda d: "k", name="dict_key"
        )
        windowed = dicts.window(windows.tumbling(seconds=5)).aggregate(n=agg.count(), name="n")
        keyed = p.read(sources.memory(views), name="views").key_by(lambda v: v.user)
        pairs = keyed.join(keyed.as_table(), select=lambda v, w: (v.user, w.page), name="pairs")
        again = pairs.key_by(lambda t: t[0], name="pair_key").process(
            lambda n, e, ctx: n, initial=int, name="again"
        )

        def when(v: View) -> datetime:
            if v.user == "u1":
                raise LookupError("no clock for u1")
            return v.time

        def key(v: View) -> str:
            if v.time.second == 0:
                raise KeyError("no key at second 0")
            return v.user

        clocked = keyed.window(
            windows.tumbling(seconds=5), clock=windows.event_time(when)
        ).aggregate(n=agg.count(), name="clocked")
        unkeyed = (
            p.read(sources.memory(views), name="views2")
            .key_by(key, name="picky_key")
            .window(windows.tumbling(seconds=5))
            .aggregate(n=agg.count(), name="picky")
        )
        return (
            counted.write(sinks.memory("a"))
            | windowed.write(sinks.memory("b"))
            | again.write(sinks.memory("c"))
            | clocked.write(sinks.memory("d"))
            | unkeyed.write(sinks.memory("e"))
        )

    r = steps(Pipeline("untimed")).run()
    assert r.reconciles
    found = Counter(
        (d.step, d.kind, d.error_type, d.function and d.function.split(".")[-1])
        for d in r.dead_letters
    )
    when_line = when_line_of(steps)
    assert found == {
        ("count", "validation", "MissingEventTime", None): 2,
        ("n", "validation", "MissingEventTime", None): 1,
        ("again", "validation", "MissingEventTime", None): 4,
        ("clocked", "user_error", "LookupError", f"when line {when_line}>"): 2,
        ("picky_key", "key_error", "KeyError", f"key line {when_line + 5}>"): 1,
    }, found
    messages = {d.step: d.message for d in r.dead_letters}
    assert messages["count"] == (
        "step 'count' reads each event's time from its 'time' attribute, and this int has "
        "none. Hint: map records to events that have a 'time' field before the step, read "
        "the time with clock=windows.event_time(lambda r: ...), or count on the wall clock "
        "with clock=windows.processing_time()."
    )
    assert "this tuple has none" in messages["again"]
    assert messages["n"] == (
        "step 'n' reads each event's time from its 'time' key, and this dict has none. "
        "Hint: give each record a 'time' key, or read the time with "
        "clock=windows.event_time(lambda r: ...)."
    )
    assert [len(r[s]) for s in "abcde"] == [0, 0, 0, 1, 2]


def when_line_of(fn: Any) -> int:
    """The line of ``def when`` in ``fn``'s source."""
    import inspect

    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if "def when(" in line)


class _Flaky:
    """Refuse every other record it is given (a dead-letter store that is half down)."""

    def __init__(self) -> None:
        self.kept: list[Any] = []
        self.calls = 0

    def __call__(self, record: Any) -> None:
        self.calls += 1
        if self.calls % 2 == 0:
            raise ConnectionError("dead-letter store down")
        self.kept.append(record)


class _FlakyExact(ExactSink):
    """An exactly-once sink whose one writer refuses every other record."""

    def __init__(self) -> None:
        self.flaky = _Flaky()

    @property
    def label(self) -> str:
        return "flaky"

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        raise AssertionError("a run with recovery opens the one exact writer")

    def open_exact(self, ctx: RunContext, step: str, resume: Any | None) -> ExactWriter:
        flaky = self.flaky

        class Flaky(ExactWriter):
            def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
                failed = []
                for item in items:
                    try:
                        flaky(item)
                    except ConnectionError as exc:
                        failed.append((item, exc))
                return failed

            def position(self) -> Any:
                return len(flaky.kept)

        return Flaky()


@pytest.mark.parametrize("exact", [False, True], ids=["any_sink", "exactly_once_sink"])
def test_dead_letters_the_dead_letter_sink_refuses_are_kept_counted_and_told(
    exact: bool, tmp_path: Path
) -> None:
    # The dead-letter sink's refusals were dropped: counted as written to it, the run
    # reconciling, half the dead letters gone.
    sink: Any = _FlakyExact() if exact else None
    flaky = sink.flaky if exact else _Flaky()
    flow = (
        Pipeline("flaky_letters")
        .read(sources.memory(list(range(100)), batch_size=10))
        .map(lambda x: 1 // (x % 3), name="inverse")
        .write(sinks.memory("out"))
        .dead_letters(sink if exact else sinks.callback(flaky))
    )
    result = flow.run(recovery=tmp_path / "store") if exact else flow.run()
    assert result.dead == 34 and result.reconciles  # 0, 3, ..., 99: each a dead letter
    held = result.counts["dead_letters"]
    assert (held.received, held.out, held.dead) == (34, 17, 17)
    assert result.letters_unwritten == 17 and len(flaky.kept) == 17
    # Each refused letter is in the result, saying why; with the kept ones, every one.
    assert len(result.dead_letters) == 17
    assert all(
        "[not written to the dead-letter sink: ConnectionError: dead-letter store down]"
        in letter.message
        for letter in result.dead_letters
    )
    payloads = sorted(int(letter.payload) for letter in [*flaky.kept, *result.dead_letters])
    assert payloads == list(range(0, 100, 3))
    assert result.warnings == [
        "17 of the 34 dead letters did not reach the dead-letter sink: they are kept in the "
        "result's dead_letters alone (the first 10,000), each message saying why"
    ]


def test_the_cli_prints_dead_letters_the_dead_letter_sink_refused_and_fails(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "from pipelines import Pipeline, sinks, sources\n"
        "calls = []\n"
        "def keep(letter):\n"
        "    calls.append(letter)\n"
        "    if len(calls) % 2 == 0:\n"
        "        raise ConnectionError('dead-letter store down')\n"
        "pipeline = (\n"
        "    Pipeline('flaky').read(sources.memory(list(range(30))))\n"
        "    .map(lambda x: 1 // (x % 3), name='inverse').write(sinks.memory('out'))\n"
        "    .dead_letters(sinks.callback(keep))\n"
        ")\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    printed = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len(printed) == 5 and all(p["step"] == "inverse" for p in printed)
    assert "warning: 5 of the 10 dead letters did not reach the dead-letter sink" in done.stderr


def test_dead_letters_of_an_exactly_once_sink_with_recovery_are_kept_and_told(
    tmp_path: Path,
) -> None:
    # A record an exactly-once sink refused in a run with recovery became a dead letter
    # kept in memory alone, never handed to the dead-letter sink, without a word.
    loop: list[Any] = ["loop"]
    loop.append(loop)
    dead = tmp_path / "dead.jsonl"
    result = (
        Pipeline("exact_refusal")
        .read(sources.memory([{"id": "a"}, loop, {"id": "b"}]))
        .write(sinks.jsonl(tmp_path / "out.jsonl"), name="out")
        .dead_letters(sinks.jsonl(dead))
    ).run(recovery=tmp_path / "store")
    assert result.written == 2 and result.dead == 1 and result.reconciles
    [letter] = result.dead_letters
    assert letter.step == "out" and "Circular reference" in letter.message
    assert "not written to the dead-letter sink" in letter.message
    assert result.letters_unwritten == 1 and len(result.warnings) == 1
    assert dead.read_text() == ""

    # A sink's refusals in a run whose dead-letter file is exactly once: the same.
    flaky = _Flaky()
    result = (
        Pipeline("file_of_letters")
        .read(sources.memory(list(range(10))))
        .map(lambda x: x // (x != 4), name="inverse")  # 4: a ZeroDivisionError
        .write(sinks.callback(flaky), name="out")
        .dead_letters(sinks.jsonl(dead))
    ).run(recovery=tmp_path / "store2")
    assert result.reconciles and result.dead == 1 + 4 and result.letters_unwritten == 4
    assert json.loads(dead.read_text())["step"] == "inverse"  # the step's own: in the file
    assert sorted(int(d.payload) for d in result.dead_letters) == [1, 3, 6, 8]
    assert all("'out' refused cannot reach the dead-letter sink" in d.message
               for d in result.dead_letters)  # fmt: skip


def test_a_memory_dead_letter_sink_named_as_an_output_is_refused_before_running() -> None:
    # The dead letters went into the results' own list: result["o"] held 10, 5 and a
    # DeadLetter, and the run reconciled.
    written = Pipeline("d").read(sources.memory([1, 0, 2])).map(lambda x: 10 // x)
    mixed = written.write(sinks.memory("o")).dead_letters(sinks.memory("o"))
    with pytest.raises(
        PipelineError,
        match=r"its dead-letter sink and step 'memory_o' would both keep their records in the "
        r"memory output 'o', so dead letters would pass for results\. Hint: "
        r"dead_letters\(sinks\.memory\('dead'\)\)",
    ):
        mixed.run()
    apart = written.write(sinks.memory("o")).dead_letters(sinks.memory("dead")).run()
    assert sorted(apart["o"]) == [5, 10] and [d.kind for d in apart["dead"]] == ["user_error"]


def test_two_memory_sinks_of_one_name_are_refused_before_running() -> None:
    # Named apart, they kept their records in one list: result["big"] held the big
    # numbers and the negated small ones, and the run reconciled.
    numbers = Pipeline("m").read(sources.memory([1, 5, 9]))
    big = numbers.filter(lambda x: x > 4, name="bigs").write(sinks.memory("big"), name="big")
    small = numbers.filter(lambda x: x <= 4).map(lambda x: -x).write(sinks.memory("big"), name="sm")
    with pytest.raises(
        PipelineError,
        match=r"pipeline 'm': steps 'big' and 'sm' would both keep their records in the memory "
        r"output 'big', mixed in one list \(result\['big'\]\)\. Hint: give each sink a name",
    ):
        (big | small).run()
    with pytest.raises(PipelineError, match=r"would both keep their records"):
        testing.run(big | small, [1, 5])
    apart = (big | numbers.write(sinks.memory("all"), name="all")).run()
    assert sorted(apart["big"]) == [5, 9] and sorted(apart["all"]) == [1, 5, 9]
