from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from operators import Event, GenerateSource, JsonlSource, MemorySource
from operators._sources import record_digest
from pipelines import Pipeline, PipelineError, sinks, sources, testing
from tests.helpers import Purchase, View, line, multiset, printed_under_hash_seeds


def _drain(source: object, step: str = "s") -> list[object]:
    items: list[object] = []
    for part in source.partitions():  # type: ignore[attr-defined]
        reader = source.open(part, step, None)  # type: ignore[attr-defined]
        try:
            while True:
                chunk = reader.next_chunk()
                if chunk is not None:
                    items.extend(chunk.items)
        except StopIteration:
            pass
    return items


def test_memory_partitions_split_contiguously_and_resume() -> None:
    src = MemorySource(range(10), partitions=3, batch_size=2)
    assert src.partitions() == ["part0", "part1", "part2"]
    assert _drain(src) == list(range(10))
    reader = src.open("part1", "s", 5)
    chunk = reader.next_chunk()
    assert chunk is not None and chunk.items == [5, 6] and chunk.offset == 5


class Tagged(Event):
    tags: frozenset[str]


def test_a_records_digest_is_the_same_in_every_run_of_the_program() -> None:
    """What a memory source keeps of its last record read, to check it on a resume.

    A set of text is in its hashes' order, which differs from run to run (and so is a
    dict made from one): taken in order, one record gives one digest in every process
    (else a resume was refused for records that had not changed); an object shown by
    where it sits is not kept.
    """
    program = (
        "from datetime import datetime, timezone\n"
        "from operators._sources import record_digest\n"
        "from tests.operators.test_sources import Tagged\n"
        "t = datetime(2026, 1, 1, tzinfo=timezone.utc)\n"
        "r = Tagged(id='a', time=t, tags=frozenset('abcdefgh'))\n"
        "print(record_digest(r), record_digest([{'k': {'x', 'y', 'z'}}, b'b', 1.5]))\n"
        "print(record_digest({w: len(w) for w in set('abcdefgh')}))\n"
    )
    seen = printed_under_hash_seeds(program)
    assert len(seen) == 1 and "None" not in seen.pop()
    assert record_digest(object()) is None
    assert record_digest({"n": 1}) != record_digest({"n": 2}) != record_digest({"m": 2})
    assert record_digest(Tagged(id="a", tags=frozenset("ab"))) != record_digest(
        Tagged(id="b", tags=frozenset("ab"))
    )


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"batch_size must be a whole number of at least 1; got 0"):
        sources.memory([], batch_size=0)
    # 2.5 failed in the middle of the run (slice indices must be integers); True read as 1.
    for odd in (2.5, True, "10"):
        with pytest.raises(ValueError, match=rf"batch_size must be a whole .*; got {odd!r}"):
            sources.memory([1, 2, 3], batch_size=odd)  # type: ignore[arg-type]
    for odd in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"partitions must be a whole .*; got {odd!r}"):
            sources.memory([], partitions=odd)  # type: ignore[arg-type]


def test_jsonl_one_partition_per_file_with_lines(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(line(type="view", user="a") + "\n\n" + "{bad\n")
    (tmp_path / "b.jsonl").write_text(line(type="purchase", user="b", amount=3) + "\n")
    src = sources.jsonl(tmp_path / "*.jsonl", schema=View | Purchase)
    assert [Path(p).name for p in src.partitions()] == ["a.jsonl", "b.jsonl"]
    result = testing.run(Pipeline("j").read(src).write(sinks.memory("out")), workers=2)
    assert sorted(e.user for e in result["out"]) == ["a", "b"]
    [dead] = result.dead_letters
    assert dead.origin is not None and dead.origin.line == 3
    assert dead.origin.file is not None and dead.origin.file.endswith("a.jsonl")
    assert result.read == 3 and result.reconciles


def test_a_file_whose_name_looks_like_a_glob_is_read_as_it_is(tmp_path: Path) -> None:
    # "data[2024].jsonl" was taken for a pattern (one of 2, 0 or 4): "no file matches".
    folder = tmp_path / "runs"
    folder.mkdir()
    named = folder / "data[2024].jsonl"
    named.write_text(line(type="view", user="a") + "\n")
    (folder / "data2.jsonl").write_text(line(type="view", user="b") + "\n")
    for read in (sources.jsonl(named, schema=View), sources.csv(named, schema=View)):
        assert read.partitions() == [str(named)]
    result = Pipeline("j").read(sources.jsonl(named, schema=View)).write(sinks.memory("o")).run()
    assert [e.user for e in result["o"]] == ["a"]
    # A pattern is still one when no file has its name.
    assert sources.jsonl(folder / "data*.jsonl", schema=View).partitions() == [
        str(folder / "data2.jsonl"),
        str(named),
    ]


def test_a_folder_whose_name_looks_like_a_glob_holds_the_files_a_pattern_reads(
    tmp_path: Path,
) -> None:
    # "runs[1]/*.jsonl" read runs1/ (the folder's name taken for a pattern), and a sink
    # writing runs[1]/out.jsonl was not refused though the source read that folder.
    (tmp_path / "runs[1]").mkdir()
    (tmp_path / "runs1").mkdir()
    (tmp_path / "runs[1]" / "a.jsonl").write_text(line(type="view", user="a") + "\n")
    (tmp_path / "runs1" / "b.jsonl").write_text(line(type="view", user="b") + "\n")
    pattern = tmp_path / "runs[1]" / "*.jsonl"
    got = Pipeline("g").read(sources.jsonl(pattern, schema=View)).write(sinks.memory("o")).run()
    assert [e.user for e in got["o"]] == ["a"]
    assert sources.csv(tmp_path / "runs?" / "*.jsonl", schema=View).partitions() == [
        str(tmp_path / "runs1" / "b.jsonl")
    ]
    into = Pipeline("h").read(sources.jsonl(pattern, schema=View))
    with pytest.raises(PipelineError, match=r"which step 'read_jsonl_file' reads"):
        into.write(sinks.jsonl(tmp_path / "runs[1]" / "out.jsonl")).run()
    assert (tmp_path / "runs[1]" / "a.jsonl").read_text().startswith("{")
    into.write(sinks.jsonl(tmp_path / "runs1" / "out.jsonl")).run()  # another folder


def test_jsonl_resumes_at_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("".join(line(type="view", user=str(i)) + "\n" for i in range(5)))
    src = JsonlSource(path, schema=View, batch_size=2)
    reader = src.open(str(path), "s", None)
    reader.next_chunk()
    pos = reader.position()
    reader.close()
    again = src.open(str(path), "s", pos)
    chunk = again.next_chunk()
    assert chunk is not None and chunk.line == 3 and b'"user": "2"' in chunk.items[0]
    again.close()


def test_jsonl_with_no_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"jsonl source: no file matches"):
        sources.jsonl(tmp_path / "none*.jsonl", schema=View).partitions()


def test_csv_rows_validate_into_events(tmp_path: Path) -> None:
    path = tmp_path / "buys.csv"
    path.write_text("type,user,amount\npurchase,a,1.5\npurchase,b,lots\npurchase,c,\n")
    result = testing.run(
        Pipeline("c").read(sources.csv(path, schema=Purchase)).write(sinks.memory("out"))
    )
    assert [(e.user, e.amount) for e in result["out"]] == [("a", 1.5)]
    lines = sorted(d.origin.line for d in result.dead_letters if d.origin)
    assert lines == [3, 4]
    assert all(d.kind == "validation" for d in result.dead_letters)
    assert {e["loc"][0] for d in result.dead_letters for e in d.errors or []} == {"amount"}
    with pytest.raises(FileNotFoundError, match=r"csv source: no file matches"):
        sources.csv(tmp_path / "none.csv", schema=Purchase).partitions()


def test_generate_is_deterministic_and_independent_of_workers() -> None:
    def make(rng: object, i: int) -> tuple[int, float]:
        return (i, round(rng.random(), 6))  # type: ignore[attr-defined]

    src = sources.generate(make, count=1001, seed=3, partitions=3, batch_size=100)
    one = testing.outputs(Pipeline("g").read(src))
    two = testing.outputs(Pipeline("g").read(src), workers=2)
    assert sorted(i for i, _ in one) == list(range(1001))
    assert multiset(one) == multiset(two)
    other = testing.outputs(
        Pipeline("g").read(sources.generate(make, count=1001, seed=4, partitions=3))
    )
    assert multiset(one) != multiset(other)


class Made(Event):
    n: int


def test_events_a_generate_factory_makes_without_ids_are_named_where_they_were_made() -> None:
    """They kept random ids: another on every run, and on a resume that makes them again."""

    def make(rng: object, i: int) -> Made:
        return Made(n=i, id="mine") if i == 2 else Made(n=i)

    def ids(workers: int) -> list[tuple[str, int]]:
        src = sources.generate(make, count=5, partitions=2, batch_size=2)
        return sorted(
            (e.id, e.n) for e in testing.outputs(Pipeline("g").read(src), workers=workers)
        )

    named = [("mine", 2), *((f"read_generate/gen{i % 2}/{i // 2}", i) for i in (0, 1, 3, 4))]
    assert ids(1) == ids(2) == sorted(named)
    reader = GenerateSource(make, count=6, batch_size=2).open("gen0", "s", None)
    reader.next_chunk()
    again = GenerateSource(make, count=6, batch_size=2).open("gen0", "s", reader.position())
    later, resumed = reader.next_chunk(), again.next_chunk()
    assert later is not None and resumed is not None
    assert [e.id for e in resumed.items] == [e.id for e in later.items] == ["mine", "s/gen0/3"]


def test_generate_resumes_exactly() -> None:
    src = GenerateSource(lambda rng, i: (i, rng.random()), count=10, batch_size=4)
    reader = src.open("gen0", "s", None)
    first = reader.next_chunk()
    pos = reader.position()
    rest = reader.next_chunk()
    resumed = src.open("gen0", "s", pos).next_chunk()
    assert first is not None and rest is not None and resumed is not None
    assert resumed.items == rest.items


def test_generate_at_a_rate_paces_itself() -> None:
    src = GenerateSource(lambda rng, i: i, count=None, rate=1000.0, batch_size=10_000)
    reader = src.open("gen0", "s", None)
    assert reader.next_chunk() is None and reader.next_awake() is not None

    time.sleep(0.05)
    chunk = reader.next_chunk()
    assert chunk is not None and 10 <= len(chunk.items) <= 500


def test_generate_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match=r"generate: factory must be callable"):
        sources.generate(3, count=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"generate: count must be zero or more"):
        sources.generate(lambda r, i: i, count=-1)
    for odd in (0, 1.5):
        with pytest.raises(ValueError, match=r"generate: partitions must be a whole number"):
            sources.generate(lambda r, i: i, count=1, partitions=odd)  # type: ignore[arg-type]
    for rate in (0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"generate: rate must be a positive number"):
            sources.generate(lambda r, i: i, count=1, rate=rate)


def test_stdin_reads_json_lines(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        "from pipelines import Pipeline, sources, sinks\n"
        "from typing import Literal\n"
        "from operators import Event\n"
        "class V(Event):\n    type: Literal['v'] = 'v'\n    n: int\n"
        "r = Pipeline('s').read(sources.stdin(schema=V)).write(sinks.memory('o')).run()\n"
        "print(sorted(e.n for e in r['o']), r.dead)\n"
    )
    data = '{"type": "v", "n": 2}\n{"type": "v", "n": 1}\nnope\n'
    done = subprocess.run(
        [sys.executable, str(script)],
        input=data,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[1, 2] 1"


def test_a_partition_hands_over_the_chunks_ready_now_up_to_its_read_ahead() -> None:
    from operators._sources import READ_AHEAD, ChunkSource

    part = ChunkSource(MemorySource(range(25), batch_size=2)).build_part("s", "part0", None)
    batches = []
    try:
        while True:
            batches.append(part.next_batch())
    except StopIteration:
        pass
    sizes = [len(b) for b in batches]
    assert sizes[0] == READ_AHEAD > 1  # 13 chunks ready: the first call takes 8
    assert sum(sizes) == 14 and batches[-1][-1].eof  # 13 chunks, then the end
    assert [x for b in batches for c in b for x in c.items] == list(range(25))
    # read up to 25 of the part 0 to 25, the last of them 24
    assert part.snapshot() == (25, 0, 25, record_digest(24))


def test_standard_input_hands_on_each_chunk_as_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from operators import StdinSource
    from operators._sources import ChunkSource

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"1\n2\n3\n")))
    part = ChunkSource(StdinSource(schema=None, batch_size=1)).build_part("s", "stdin", None)
    # a pipe may wait for its next line: what was read goes on without waiting
    assert [c.items for c in part.next_batch()] == [[b"1"]]


def _csv_purchases(tmp_path: Path, rows: list[bytes], head: bytes = b"") -> Path:
    path = tmp_path / "buys.csv"
    path.write_bytes(head + b"type,user,amount\n" + b"".join(r + b"\n" for r in rows))
    return path


def test_a_csv_row_that_is_not_utf8_is_a_dead_letter_with_file_and_line(tmp_path: Path) -> None:
    rows = [f"purchase,u{i},{i}".encode() for i in range(5_000)]
    rows[2_999] = b"purchase,caf\xe9,12"  # Latin-1, not UTF-8
    path = _csv_purchases(tmp_path, rows)
    result = (
        Pipeline("c")
        .read(sources.csv(path, schema=Purchase, batch_size=64))
        .write(sinks.memory("out"))
        .run()
    )
    assert len(result["out"]) == 4_999 and result.reconciles
    [letter] = result.dead_letters
    assert (letter.kind, letter.error_type, letter.step) == (
        "parse",
        "UnicodeDecodeError",
        "read_csv_buys",
    )
    assert "can't decode byte 0xe9" in letter.message
    assert letter.origin is not None
    assert (letter.origin.file, letter.origin.line) == (str(path), 3_001)  # header is line 1
    assert letter.payload == "purchase,caf\ufffd,12"


def test_a_csv_row_with_extra_fields_is_a_dead_letter(tmp_path: Path) -> None:
    rows = [b"purchase,ada,3", b"purchase,bob,4,surplus", b"", b"purchase,eve,5"]
    path = _csv_purchases(tmp_path, rows)
    result = Pipeline("c").read(sources.csv(path, schema=Purchase)).write(sinks.memory("out")).run()
    assert [p.user for p in result["out"]] == ["ada", "eve"]
    [letter] = result.dead_letters
    assert letter.error_type == "ValueError" and letter.payload == "purchase,bob,4,surplus"
    assert letter.message == "the row has 4 fields; the header has 3 (type, user, amount)"
    assert letter.origin is not None and letter.origin.line == 3


def test_a_csv_row_cut_short_is_a_dead_letter_not_a_record_of_defaults(tmp_path: Path) -> None:
    # A row with fewer fields than the header took the defaults of the fields it lacked
    # (an amount of 0.0): a line cut short, or one whose writer left a column out, was
    # read as a record, and the run reconciled.
    rows = [b"purchase,ada,3", b"purchase,bob", b"purchase", b"purchase,eve,", b",,"]
    path = _csv_purchases(tmp_path, rows)
    result = Pipeline("c").read(sources.csv(path, schema=Purchase)).write(sinks.memory("out")).run()
    assert [(p.user, p.amount) for p in result["out"]] == [("ada", 3.0)]
    assert result.reconciles
    short, shorter, empty_amount, empty_row = result.dead_letters
    assert short.payload == "purchase,bob" and short.message == (
        "the row has 2 fields; the header has 3 (type, user, amount). Hint: write every "
        "column, an empty one too (if the last is empty, end the row with ',')"
    )
    assert short.origin is not None and short.origin.line == 3
    assert shorter.message.startswith("the row has 1 field; the header has 3")
    assert shorter.message.endswith("(if the last 2 are empty, end the row with ',,')")
    # A row of every column, some empty, is read: its empty cells are absent fields.
    assert [empty_amount.kind, empty_row.kind] == ["validation", "validation"]


def test_compressed_files_are_read_as_what_they_hold_and_archives_are_refused_by_name(
    tmp_path: Path,
) -> None:
    # A gzip file read as it was made a few records of garbage bytes (validation dead
    # letters with no word of why); a zip or zstd file the same.
    rows = [line(type="purchase", user=f"u{i}", amount=i) for i in range(50)]
    text = "\ufeff" + "\n".join(rows) + "\n"  # a byte-order mark too
    table = "type,user,amount\n" + "".join(f"purchase,u{i},{i}\n" for i in range(50))
    for kind, opener in (("gz", gzip.open), ("bz2", bz2.open), ("xz", lzma.open)):
        with opener(tmp_path / f"buys.jsonl.{kind}", "wt", encoding="utf-8") as f:
            f.write(text)
        with opener(tmp_path / f"buys.csv.{kind}", "wt", encoding="utf-8") as f:
            f.write(table)
        for read in (sources.jsonl, sources.csv):
            path = tmp_path / f"buys.{read.__name__}.{kind}"
            result = Pipeline("c").read(read(path, schema=Purchase)).write(sinks.memory("o")).run()
            assert [p.amount for p in result["o"]] == list(range(50)), (kind, read.__name__)
            assert not result.dead_letters and result.reconciles
            assert result["o"][7].id == f"read_{read.__name__}_buys/{path}/7"
    for magic, what, hint in [
        (b"PK\x03\x04", "a zip archive", "unzip it first"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (zstd -d)"),
    ]:
        path = tmp_path / "packed.jsonl"
        path.write_bytes(magic + os.urandom(200))
        for read in (sources.jsonl, sources.csv):
            result = Pipeline("z").read(read(path, schema=Purchase)).write(sinks.memory("o")).run()
            [letter] = result.dead_letters
            assert letter.kind == "parse" and result["o"] == [] and result.reconciles
            assert letter.message == (
                f"file {str(path)!r} is {what}, which evflow does not read. Hint: {hint}"
            )


def test_a_byte_order_mark_is_skipped_in_csv_and_jsonl(tmp_path: Path) -> None:
    path = _csv_purchases(tmp_path, [b"purchase,ada,3"], head=b"\xef\xbb\xbf")
    result = Pipeline("c").read(sources.csv(path, schema=Purchase)).write(sinks.memory("out")).run()
    assert [p.user for p in result["out"]] == ["ada"] and not result.dead_letters
    jsonl = tmp_path / "buys.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + line(type="purchase", user="bob", amount=2).encode())
    result = (
        Pipeline("j").read(sources.jsonl(jsonl, schema=Purchase)).write(sinks.memory("out")).run()
    )
    assert [p.user for p in result["out"]] == ["bob"] and not result.dead_letters


STDIN_APP = """
import sys
from datetime import datetime, timezone
from typing import Literal
from pipelines import Pipeline, sources, sinks
from operators import Event, agg, windows

class V(Event):
    type: Literal["v"] = "v"
    n: int

def show(record):
    print(record, flush=True)

events = Pipeline("s").read(sources.stdin(schema=V))
if sys.argv[1] == "lines":
    pipeline = events.map(lambda e: f"got {e.n}").write(sinks.callback(show))
else:
    pipeline = (
        events.key_by(lambda e: "all")
        .window(windows.tumbling(seconds=10), clock=windows.event_time(idle_timeout=0.3))
        .aggregate(n=agg.count())
        .map(lambda w: f"window {w.start.second} n={w.n}")
        .write(sinks.callback(show))
    )
pipeline.run()
"""


def _stdin_app(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    app = tmp_path / "stdin_app.py"
    app.write_text(STDIN_APP)
    return subprocess.Popen(
        [sys.executable, str(app), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _readline(proc: subprocess.Popen[str], seconds: float) -> str:
    """The next line the app prints, or "" if none comes within ``seconds``."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    return proc.stdout.readline() if ready else ""


def _event(n: int, second: float) -> str:
    return line(type="v", n=n, time=f"2026-01-01T00:00:{second:06.3f}Z") + "\n"


def test_standard_input_hands_on_each_line_as_it_arrives(tmp_path: Path) -> None:
    proc = _stdin_app(tmp_path, "lines")
    assert proc.stdin is not None and proc.stdout is not None
    for n in (1, 2):
        proc.stdin.write(_event(n, 1.0))
        proc.stdin.flush()
        # the record comes out while the pipe stays open (not 1,000 lines later)
        assert _readline(proc, 20).strip() == f"got {n}"
    _, err = proc.communicate(timeout=30)  # closes standard input: the run ends
    assert proc.returncode == 0, err[-3000:]


def test_a_silent_open_pipe_does_not_hold_windows_open(tmp_path: Path) -> None:
    proc = _stdin_app(tmp_path, "windows")
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(_event(1, 9.5) + _event(2, 9.8))
    proc.stdin.flush()
    # Nothing more is written, and the pipe stays open: after idle_timeout the
    # watermark follows the wall clock from 9.8 s, so the window [0, 10) closes.
    assert _readline(proc, 10).strip() == "window 0 n=2"
    _, err = proc.communicate(timeout=30)  # closes standard input: the run ends
    assert proc.returncode == 0, err[-3000:]


ENDING = """
from operators import Chunk, Reader, Source
from pipelines import Pipeline, sinks


class Ends(Reader):
    def __init__(self) -> None:
        self.calls = 0

    def next_chunk(self):
        self.calls += 1
        if self.calls > 5:
            raise RuntimeError("asked again after the end of the partition")
        return Chunk([1, 2, 3], "ending", "p0", eof=True)

    def position(self):
        return self.calls


class Once(Source):
    label = "ending"

    def partitions(self):
        return ["p0"]

    def open(self, partition, step, resume):
        return Ends()


result = Pipeline("ending").read(Once()).write(sinks.memory("o")).run()
assert result["o"] == [1, 2, 3] and result.reconciles, result
print("ended")
"""


def test_a_chunk_marked_eof_ends_its_partition() -> None:
    import subprocess
    import sys

    # In a process of its own: before the fix, the run never ended.
    done = subprocess.run(
        [sys.executable, "-c", ENDING], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ended"


def test_every_row_of_a_csv_whose_header_names_a_column_twice_is_a_dead_letter(
    tmp_path: Path,
) -> None:
    # With "user" twice, the second column's value replaced the first's, and
    # the first was lost while the run reconciled.
    path = tmp_path / "twice.csv"
    path.write_bytes(b"type,user,user,amount\npurchase,ada,bob,3\npurchase,eve,eve,4\n")
    result = Pipeline("c").read(sources.csv(path, schema=Purchase)).write(sinks.memory("out")).run()
    assert result["out"] == []
    assert [d.payload for d in result.dead_letters] == ["purchase,ada,bob,3", "purchase,eve,eve,4"]
    for letter in result.dead_letters:
        assert letter.message == (
            "the header names 'user' twice (columns 2 and 3): which value is meant is unknown"
        )
    assert [d.origin.line for d in result.dead_letters if d.origin] == [2, 3]
    assert result.reconciles


def test_every_row_of_a_csv_whose_header_misses_the_schemas_fields_is_a_dead_letter(
    tmp_path: Path,
) -> None:
    """A column that is a field's name but for spaces, case or a slip; a header of no field.

    The column was left out of every record, the field took its default (an amount of
    0.0, a user of ""), and the run reconciled.
    """

    def read(header: str, schema: Any = Purchase, tail: str = "") -> Any:
        path = tmp_path / "sales.csv"
        path.write_text(f"{header}\npurchase,ada,3{tail}\npurchase,eve,4{tail}\n")
        return Pipeline("c").read(sources.csv(path, schema=schema)).write(sinks.memory("o")).run()

    for header, column, field in [
        ("type,user, amount", " amount", "amount"),  # a space after the comma
        ("type,User,amount", "User", "user"),
        ("type,user,amout", "amout", "amount"),
    ]:
        result = read(header)
        assert result["o"] == [] and result.reconciles
        assert [d.kind for d in result.dead_letters] == ["parse", "parse"]
        assert result.dead_letters[0].message == (
            f"the header's column {column!r} is no field of Purchase, but {field!r} is, and no "
            f"column names it: each record would leave the column's value out and take the "
            f"field's default. Hint: name the column {field!r} in the file's header"
        )
        assert [d.origin.line for d in result.dead_letters if d.origin] == [2, 3]
    result = read("kind,name,price")
    assert result["o"] == [] and len(result.dead_letters) == 2
    assert result.dead_letters[0].message.startswith(
        "the header (kind, name, price) names none of the fields of Purchase (amount, user): "
        "every record would hold only their defaults."
    )
    # Columns of other names are left out; a required field with no column fails each
    # row's validation; rows read as dicts (no schema) are not judged.
    taken = read("type,user,amount,note", tail=",hi")
    assert [(p.user, p.amount) for p in taken["o"]] == [("ada", 3.0), ("eve", 4.0)]
    assert [d.kind for d in read("type,user,note").dead_letters] == ["validation"] * 2
    assert [r["name"] for r in read("kind,name,price", schema=None)["o"]] == ["ada", "eve"]


def test_a_record_read_without_an_id_gets_one_from_where_it_was_read(tmp_path: Path) -> None:
    # Each got a random id: the same input gave other ids on every read, so a resumed
    # run's records read again were new to a sink de-duplicating by id, and
    # testing.explore called the plainest pipeline schedule-dependent.
    path = tmp_path / "views.jsonl"
    at = '"time": "2026-01-01T00:00:00Z"'
    rows = [f'{{"type": "view", "user": "u{i}", {at}}}' for i in range(7)]
    rows[2] = ""  # a blank line and a broken one take their places, not an id
    rows[4] = "{broken"
    rows[5] = f'{{"type": "view", "user": "u5", "id": "mine", {at}}}'
    path.write_text("\n".join(rows) + "\n")
    made = View(user="made")
    flow = Pipeline("ids")
    read = flow.read(sources.jsonl(path, schema=View, batch_size=3), name="file")
    listed = flow.read(
        sources.memory([{"type": "view", "user": "a"}, made, '{"type":"view","user":"b"}'],
                       schema=View, partitions=1),
        name="listed",
    )  # fmt: skip
    pipeline = read.write(sinks.memory("file")) | listed.write(sinks.memory("listed"))
    first, again = pipeline.run(), pipeline.run()
    assert [e.id for e in first["file"]] == [
        f"file/{path}/0", f"file/{path}/1", f"file/{path}/3", "mine", f"file/{path}/6"
    ]  # fmt: skip
    assert [e.id for e in first["listed"]] == ["listed/part0/0", made.id, "listed/part0/2"]
    assert [e.id for e in again["file"]] == [e.id for e in first["file"]]
    assert first["listed"][1] is made and "id" in first["file"][0].model_fields_set
    found = testing.explore(read.filter(lambda v: v.user != "u1").write(sinks.memory("o")))
    assert len(found.outputs["memory_o"]) == 4


class Numbered(Event):
    id: int = 0  # type: ignore[assignment]


def test_an_event_class_whose_id_is_no_text_keeps_its_own_default() -> None:
    rows = ['{"type": "numbered"}', '{"type": "view", "user": "u"}']
    flow = Pipeline("kinds").read(sources.memory(rows, schema=Numbered | View), name="m")
    assert [e.id for e in testing.outputs(flow)] == [0, "m/part0/1"]


def test_a_source_or_sink_given_no_path_or_no_records_says_what_it_needs() -> None:
    # A careless call got Python's own words ("expected str, bytes or os.PathLike object,
    # not NoneType", "'int' object is not iterable"), and sources.memory("events.jsonl")
    # read the file's name as 12 one-letter records.
    class Row(Event):
        x: int = 0

    told = {
        r"jsonl source: path must be a file path .*got NoneType None\. Hint: sources\.jsonl\(": (
            lambda: sources.jsonl(None, schema=Row)  # type: ignore[call-overload]
        ),
        r"csv source: path must be a file path .*got int 5\. Hint: sources\.csv\(": (
            lambda: sources.csv(5, schema=Row)  # type: ignore[call-overload]
        ),
        r"jsonl sink: path must be a file path .*got NoneType None\. Hint: sinks\.jsonl\(": (
            lambda: sinks.jsonl(None)  # type: ignore[arg-type]
        ),
        r"memory source: items must be a list .*got str 'events\.jsonl'\. Hint: "
        r"sources\.jsonl\('events\.jsonl', schema=\.\.\.\) reads a file's records": (
            lambda: sources.memory("events.jsonl")
        ),
        r"memory source: items must be .*got int 5\. Hint: sources\.memory\(\[": (
            lambda: sources.memory(5)  # type: ignore[call-overload]
        ),
        # a dict was read as its keys: one record per key, its values lost
        r"memory source: items must be .*got dict \{'user': 'ada'\}\. Hint: a dict is one "
        r"record: put it in a list": (lambda: sources.memory({"user": "ada"})),
        # a set's order is its hashes': a resume in a new process read words in another
        # order, and of 400 wrote 77 twice and lost 77 while the run reconciled
        r"memory source: items must be in an order of their own; got a set, whose order is "
        r"its hashes'.*Hint: sorted\(\.\.\.\), or a list": (lambda: sources.memory({"ada", "bob"})),
        r"records must be in an order of their own; got a frozenset": (
            lambda: testing.run(
                Pipeline("t").read(sources.memory([1])).write(sinks.memory("o")), frozenset({1})
            )
        ),
        # testing.run read text as its characters
        r"records must be a list .*got str 'abc'": (
            lambda: testing.run(
                Pipeline("t").read(sources.memory([1])).write(sinks.memory("o")), "abc"
            )
        ),
        r"records for 'read_memory' must be a list .*got bytes": (
            lambda: testing.run(
                Pipeline("t").read(sources.memory([1])).write(sinks.memory("o")),
                {"read_memory": b"ab"},
            )
        ),
    }
    for message, call in told.items():
        with pytest.raises(TypeError, match=message):
            call()
    with pytest.raises(ValueError, match=r"memory sink name must be an identifier; got 5"):
        sinks.memory(5)  # type: ignore[arg-type]
    assert sinks.jsonl(Path("out.jsonl")).path == "out.jsonl"
    assert sources.memory(x * 2 for x in range(3)).items == [0, 2, 4]


def test_csv_reads_the_delimiter_it_is_told_and_tells_of_one_it_was_not(tmp_path: Path) -> None:
    # A semicolon- or tab-separated file made every row a validation dead letter of
    # missing fields: sources.csv read commas only.
    class Score(Event):
        user: str
        points: int

    (tmp_path / "semi.csv").write_text('user;points\nada;3\n"b;ob";4\n')
    (tmp_path / "tabs.csv").write_text("user\tpoints\nada\t3\n")
    (tmp_path / "one.csv").write_text("user\nada\n")

    def read(name: str, delimiter: str | None = None, schema: Any = Score) -> Any:
        source = sources.csv(tmp_path / name, schema=schema, delimiter=delimiter)
        return Pipeline("c").read(source).write(sinks.memory("o")).run()

    got = read("semi.csv", ";")
    assert [(s.user, s.points) for s in got["o"]] == [("ada", 3), ("b;ob", 4)]
    assert [(s.user, s.points) for s in read("tabs.csv", "\t")["o"]] == [("ada", 3)]
    for name, sep in (("semi.csv", ";"), ("tabs.csv", "\t")):
        untold = read(name)
        assert untold["o"] == [] and untold.reconciles
        assert {d.kind for d in untold.dead_letters} == {"parse"}
        assert all(
            f"the file seems separated by {sep!r}, not by commas. Hint: "
            f"sources.csv(..., delimiter={sep!r})" in d.message
            for d in untold.dead_letters
        )
        assert f"turned all {len(untold.dead_letters)} records" in untold.warnings[0]

    # one column that no separator splits is one column
    class Who(Event):
        user: str

    assert [r.user for r in read("one.csv", schema=Who)["o"]] == ["ada"]
    for wrong in (",,", '"', "", "\n"):
        with pytest.raises(ValueError, match=r"delimiter must be one character"):
            sources.csv("x.csv", schema=Score, delimiter=wrong)


def test_a_csv_row_the_csv_module_refuses_is_a_dead_letter_and_the_file_goes_on(
    tmp_path: Path,
) -> None:
    # A field over the csv module's limit (128 KiB) raised out of the reader and
    # stopped the whole run.
    from operators import CsvSource

    class Row(Event):
        user: str
        n: int

    path = tmp_path / "big.csv"
    huge = "b" * 200_000
    path.write_text(f"user,n\na,1\n\n{huge},2\nc,3\n")
    for batch in (1, 1000):
        got = Pipeline("c").read(sources.csv(path, schema=Row, batch_size=batch))
        result = got.write(sinks.memory("o")).run()
        assert [(r.user, r.n) for r in result["o"]] == [("a", 1), ("c", 3)]
        [letter] = result.dead_letters
        assert letter.kind == "parse" and "field larger than field limit" in letter.message
        assert letter.origin is not None and letter.origin.line == 4
        assert letter.payload.startswith("bbbb") and letter.payload_size == len(huge) + 3
        assert result.reconciles
    # a resume after the refused row goes on with the next one
    source = CsvSource(path, schema=Row, batch_size=1)
    reader = source.open(str(path), "s", None)
    first, refused = reader.next_chunk(), reader.next_chunk()
    assert first is not None and refused is not None and refused.line == 4
    position = reader.position()
    reader.close()
    again = source.open(str(path), "s", position)
    chunk = again.next_chunk()
    assert chunk is not None and chunk.items == [{"user": "c", "n": "3"}] and chunk.line == 5
    again.close()


def test_a_generate_factory_that_raises_makes_dead_letters_and_the_run_goes_on() -> None:
    # The factory's exception stopped the whole run.
    def make(rng: Any, i: int) -> dict[str, Any]:
        value = rng.random()
        if i % 7 == 3:
            raise ValueError(f"no record {i}")
        return {"i": i, "value": value}

    def whole(rng: Any, i: int) -> dict[str, Any]:
        return {"i": i, "value": rng.random()}

    for schema in (None, View):
        read = sources.generate(make, count=40, partitions=3, schema=schema)
        result = Pipeline("g").read(read).write(sinks.memory("o")).run(workers=2)
        assert result.reconciles
        failed = [d for d in result.dead_letters if d.kind == "user_error"]
        assert sorted(d.payload for d in failed) == sorted(
            f"record {i}" for i in range(40) if i % 7 == 3
        )
        assert all(d.error_type == "ValueError" and "make line" in str(d.function) for d in failed)
        if schema is None:
            # the others are the records a factory that does not fail makes
            fine = sources.generate(whole, count=40, partitions=3)
            every = Pipeline("g").read(fine).write(sinks.memory("o")).run()["o"]
            assert sorted(result["o"], key=lambda r: r["i"]) == [
                r for r in sorted(every, key=lambda r: r["i"]) if r["i"] % 7 != 3
            ]
        else:
            assert result["o"] == [] and result.dead == 40  # no view has a user: validation


def test_an_event_of_a_class_the_schema_has_not_is_refused_where_it_is_read() -> None:
    """A Buy read with schema=View went on, and failed in the first step reading a View's field."""

    class Buy(Event):
        amount: float

    class Special(View):
        pass

    records = [View(user="a"), Buy(amount=1.0), Special(user="s")]
    read = Pipeline("p").read(sources.memory(records, schema=View))
    result = read.map(lambda v: v.user).write(sinks.memory("o")).run()
    assert result["o"] == ["a", "s"] and result.reconciles
    (letter,) = result.dead_letters
    assert (letter.step, letter.kind) == ("read_memory", "validation")
    assert '"type":"buy"' in letter.payload


@pytest.mark.parametrize(
    ("make", "said"),
    [
        # The Redis client refused it only when the run started, with its own words.
        (
            lambda: sources.redis("localhost:6379", "clicks"),
            r"sources\.redis: url must start with redis://, rediss:// or unix://; got "
            r"'localhost:6379'\. Hint: sources\.redis\('redis://localhost:6379/0', \.\.\.\)\.",
        ),
        (
            lambda: sinks.nats("redis://:s3cret@h:4222", "out"),
            r"sinks\.nats: url must start with nats://, tls://, ws:// or wss://; got "
            r"'redis://:\*\*\*\*@h:4222'",
        ),
        (
            lambda: sources.redis("redis://h", "clicks", batch_size=0),
            r"sources\.redis: batch_size must be a whole number of at least 1; got 0\.",
        ),
        (
            lambda: sources.nats("nats://h", "CLICKS", poll=-1),
            r"sources\.nats: poll must be a number of seconds, 0 or more; got -1\.",
        ),
        (
            lambda: sources.nats("nats://h", "CLICKS", connect_timeout=0),
            r"connect_timeout must be a number of seconds more than 0; got 0\.",
        ),
        (
            lambda: sinks.redis("redis://h", "out", retry_for=float("nan")),
            r"sinks\.redis: retry_for must be a number of seconds, 0 or more; got nan\.",
        ),
        (
            lambda: sinks.redis("redis://h", "out", maxlen=0),
            r"sinks\.redis: maxlen must be a whole number of at least 1; got 0\.",
        ),
    ],
)
def test_broker_urls_and_settings_that_cannot_work_are_refused_when_made(
    make: Any, said: str
) -> None:
    with pytest.raises(ValueError, match=said):
        make()


def test_broker_urls_the_clients_take_are_accepted() -> None:
    for url in ("redis://h:6379/0", "rediss://:pw@h", "unix:///tmp/redis.sock"):
        assert sources.redis(url, "s").url == url
    for url in ("nats://h:4222", "tls://h:4222", "h:4222"):
        assert sinks.nats(url, "out").url == url


def test_a_pipe_named_as_a_file_source_is_refused_saying_what_reads_one(tmp_path: Path) -> None:
    # It failed inside the reader ("File or stream is not seekable"), in the middle of a run.
    pipe = tmp_path / "events.jsonl"
    os.mkfifo(pipe)
    for read in (sources.jsonl, sources.csv):
        flow = Pipeline("p").read(read(pipe, schema=None)).write(sinks.memory("o"))
        with pytest.raises(ValueError, match=r"is no regular file \(a pipe or a device\).*stdin"):
            flow.run()


def test_a_file_of_json_over_several_lines_is_read_as_its_records(tmp_path: Path) -> None:
    # Written by json.dump(..., indent=2) and read as JSON Lines, each of its lines was a
    # dead letter ("[", "  {", '    "user": "u0",' ...) and no record was read.
    records: list[Any] = [{"type": "purchase", "user": f"u{i}", "amount": i} for i in range(30)]
    records[7] = {"type": "purchase", "user": "bad"}  # no amount: a validation dead letter
    path = tmp_path / "buys.json"
    path.write_text("\ufeff" + json.dumps(records, indent=2))
    packed = tmp_path / "buys.json.gz"
    with gzip.open(packed, "wt") as f:
        json.dump(records, f, indent=1)
    for source in (path, packed):
        result = (
            Pipeline("a")
            .read(sources.jsonl(source, schema=Purchase, batch_size=8))
            .write(sinks.memory("o"))
            .run()
        )
        assert [p.amount for p in result["o"]] == [i for i in range(30) if i != 7]
        [letter] = result.dead_letters
        assert letter.kind == "validation" and letter.origin is not None
        assert (letter.origin.file, letter.origin.offset) == (str(source), 7)
        assert json.loads(letter.payload) == records[7] and result.reconciles
        assert result["o"][0].id == f"read_jsonl_buys/{source}/0"
    # Records one after another, each over several lines (as `jq '.[]'` writes them).
    spread = tmp_path / "spread.json"
    spread.write_text("".join(json.dumps(r, indent=2) + "\n" for r in records))
    result = Pipeline("s").read(sources.jsonl(spread, schema=Purchase)).write(sinks.memory("o"))
    assert len(result.run()["o"]) == 29
    # Without a schema each record is its JSON text, as a line of JSON Lines is.
    raw = testing.outputs(Pipeline("r").read(sources.jsonl(path, schema=None)))
    assert [json.loads(r) for r in raw] == records
    # A first line that is JSON by itself is JSON Lines: here, records that are lists.
    lists = tmp_path / "lists.jsonl"
    lists.write_text("[1, 2]\n[3]\n")
    assert testing.outputs(Pipeline("l").read(sources.jsonl(lists, schema=None))) == [
        b"[1, 2]",
        b"[3]",
    ]


def test_a_json_document_that_breaks_off_is_read_up_to_there_then_one_dead_letter(
    tmp_path: Path,
) -> None:
    # A JSON document that did not parse whole (cut short, text after its end, a record
    # with bytes that are not UTF-8) was read as JSON Lines: each of its lines a dead
    # letter ("[", "  {", ...) and none of its records read, a file of 3 records 15 letters.
    records = [{"type": "purchase", "user": f"u{i}", "amount": i} for i in range(200)]
    whole = json.dumps(records, indent=2)
    at_40 = whole.index('"u40"')  # inside record 40
    packed = gzip.compress(whole.encode())
    files = {
        "cut.json": whole[:at_40].encode(),
        "trailing.json": (whole + "\ngarbage\n").encode(),
        "unclosed.json": whole[: whole.rindex("]")].encode(),
        "latin.json": b"\xef\xbb\xbf" + whole.encode().replace(b'"u7"', b'"u\xe97"'),
        # Such bytes, then a cut: the cut's letter holds the rest from its own place.
        "latin_cut.json": whole[:at_40].encode().replace(b'"u7"', b'"u\xe97"'),
        "jq.json": "".join(json.dumps(r, indent=2) + "\n" for r in records[:40]).encode()
        + b'{\n  "user": "x",\n',
        "cut.json.gz": packed[: len(packed) // 2],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name, (kept, broken_at, said) in {
        "cut.json": (40, 40, r"breaks off at line 202, column 3: expecting value at line 204"),
        "trailing.json": (200, 200, r"breaks off at line 1003, column 1: text after the array"),
        "unclosed.json": (200, 200, r"breaks off at line 1002, column 1: the array does not end"),
        "latin.json": (199, 7, r"a record of its JSON document holds bytes that are not UTF-8"),
        "jq.json": (40, 40, r"breaks off at line 201, column 1: expecting property name"),
        "cut.json.gz": (None, None, r"the file cannot be read on \(Compressed file ended"),
    }.items():
        source = sources.jsonl(tmp_path / name, schema=Purchase, batch_size=16)
        result = Pipeline("b").read(source).write(sinks.memory("o")).run()
        [letter] = result.dead_letters
        assert letter.kind == "parse" and letter.origin is not None, name
        assert re.search(said, letter.message), (name, letter.message)
        got = [p.user for p in result["o"]]
        if kept is None:  # what the first half of the compressed bytes holds, then the letter
            kept = broken_at = len(got)
            assert 0 < kept < 200 and letter.payload.lstrip().startswith("{")
        assert got == [f"u{i}" for i in range(kept + (broken_at < kept)) if i != broken_at]
        assert letter.origin.offset == broken_at and result.read == kept + 1, name
        assert result.reconciles
    # Such bytes, then a cut (this stopped the read: the rest's bytes were taken for text).
    both = Pipeline("l").read(sources.jsonl(tmp_path / "latin_cut.json", schema=Purchase))
    result = both.write(sinks.memory("o")).run()
    assert len(result["o"]) == 39 and result.reconciles
    bad, cut = result.dead_letters
    assert [d.origin.offset for d in (bad, cut) if d.origin] == [7, 40]
    assert cut.payload == whole[whole.rindex("{", 0, at_40) : at_40]
    # Without a schema too, each is a dead letter (not a record handed on).
    raw = Pipeline("r").read(sources.jsonl(tmp_path / "latin.json", schema=None, batch_size=16))
    result = raw.write(sinks.memory("o")).run()
    assert len(result["o"]) == 199 and [d.origin.offset for d in result.dead_letters] == [7]
    # The letter holds the rest of the file as it is there (here: from record 40 on).
    cut = Pipeline("c").read(sources.jsonl(tmp_path / "cut.json", schema=Purchase))
    [letter] = cut.write(sinks.memory("o")).run().dead_letters
    assert letter.payload == whole[whole.rindex("{", 0, at_40) : at_40]
    # A resume after the letter reads nothing again, and nothing more.
    src = JsonlSource(tmp_path / "trailing.json", schema=Purchase, batch_size=150)
    reader = src.open(str(tmp_path / "trailing.json"), "s", None)
    first, second = reader.next_chunk(), reader.next_chunk()
    assert first is not None and second is not None and len(second.items) == 51
    assert second.unreadable and not first.unreadable
    again = src.open(str(tmp_path / "trailing.json"), "s", reader.position())
    with pytest.raises(StopIteration):
        again.next_chunk()


def test_columns_reads_a_csv_file_without_a_header_row(tmp_path: Path) -> None:
    # Its first row was taken for the header: that record was never read, and every
    # other row was a dead letter saying the header named none of the fields.
    path = tmp_path / "buys.csv"
    path.write_text("purchase,ada,3\npurchase,bob\npurchase,eve,5\n")
    unnamed = Pipeline("c").read(sources.csv(path, schema=Purchase)).write(sinks.memory("o"))
    letters = unnamed.run().dead_letters
    assert letters and letters[0].message.endswith("sources.csv(..., columns=[...])")
    named = sources.csv(path, schema=Purchase, columns=["type", "user", "amount"])
    result = Pipeline("c").read(named).write(sinks.memory("o")).run()
    assert [(p.user, p.amount) for p in result["o"]] == [("ada", 3.0), ("eve", 5.0)]
    [short] = result.dead_letters  # a row cut short, on its own line
    assert short.origin is not None and short.origin.line == 2 and result.reconciles
    # Names that would leave every record of its defaults are refused when the step is made.
    with pytest.raises(ValueError, match=r"column 'amout' is no field of Purchase, but 'amount'"):
        sources.csv(path, schema=Purchase, columns=["type", "user", "amout"])
    for bad in ("type,user,amount", [], ["user", ""]):
        with pytest.raises(ValueError, match=r"columns must be a list of the names"):
            sources.csv(path, schema=Purchase, columns=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"columns names \['user'\] more than once"):
        sources.csv(path, schema=Purchase, columns=["user", "user"])


def test_a_followed_file_renamed_away_is_read_to_its_end_then_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import operators._sources as files

    monkeypatch.setattr(files, "ROTATED_AFTER", 0.0)
    path = tmp_path / "app.log"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    src = JsonlSource(path, schema=None, follow=True)
    reader = src.open(str(path), "s", None)
    first = reader.next_chunk()
    assert first is not None and first.items == [b'{"a": 1}', b'{"a": 2}']
    assert reader.next_chunk() is None  # at its end: waits for more
    with path.open("a") as f:
        f.write('{"a": 3}\n{"a": ')  # renamed before its writer ended the last line
    path.rename(tmp_path / "app.log.1")
    path.write_text('\ufeff{"b": 1}\n')
    rest = reader.next_chunk()  # the old file's last lines, the unended one too
    assert rest is not None and rest.items == [b'{"a": 3}', b'{"a": ']
    assert reader.next_chunk() is None  # goes on to the new file
    new = reader.next_chunk()
    assert new is not None and new.items == [b'{"b": 1}']
    assert (new.offset, new.line, new.origin(0).file) == (4, 1, str(path))  # its own line 1
    position = reader.position()
    reader.close()
    with path.open("a") as f:
        f.write('{"b": 2}\n')
    again = src.open(str(path), "s", position)  # resumed in the new file, lines counted on
    chunk = again.next_chunk()
    assert (
        chunk is not None and chunk.items == [b'{"b": 2}'] and (chunk.offset, chunk.line) == (5, 2)
    )
    again.close()


def test_a_preview_of_a_followed_file_reads_what_it_holds_and_ends(tmp_path: Path) -> None:
    # A followed file never ends: a preview waited out its 10 s for records to come.
    path = tmp_path / "live.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    flow = Pipeline("p").read(sources.jsonl(path, schema=None, follow=True))
    started = time.monotonic()
    assert flow.write(sinks.memory("o")).preview()["o"] == [b'{"a": 1}', b'{"a": 2}']
    assert testing.head(sources.jsonl(path, schema=None, follow=True), 5) == [
        b'{"a": 1}',
        b'{"a": 2}',
    ]
    assert time.monotonic() - started < 5
