"""The evflow command: run, list, graph; errors shown with the user's own line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines._cli import load_target, main

APP = """
from pipelines import Pipeline, sources, sinks

def double(x):
    return x * 2

pipeline = Pipeline("app").read(sources.memory([1, 2, 3])).map(double).write(sinks.memory("o"))

def build():
    return pipeline

not_a_pipeline = 42

from operators import Event

class Tick(Event):
    n: int

unwritten = Pipeline("app").read(sources.memory([1])).map(double)

def gives_stream():
    return unwritten

def needs(x):
    return pipeline
"""

BROKEN = """
from pipelines import Pipeline, sources, sinks

def boom():
    raise RuntimeError("config missing: API_KEY")

pipeline = Pipeline("b").read(sources.memory([1])).map(lambda x: x, on_error="halt").write(
    sinks.memory("o"))
value = boom()
"""


def test_run_catalog_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "clickstream", "-w", "2"]) == 0
    out = capsys.readouterr().out
    assert "pipeline clickstream: 2 worker(s)" in out and "reconciles" in out
    assert "dead letters at read_web: parse" in out


def test_list_and_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert "clickstream" in capsys.readouterr().out
    assert main(["graph", "clickstream"]) == 0
    out = capsys.readouterr().out
    assert "forward_big" in out and "route rest" in out and "all_events" in out


def test_file_and_module_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "myapp.py"
    app.write_text(APP)
    assert main(["run", f"{app}:pipeline"]) == 0
    assert "map_double" in capsys.readouterr().out
    assert load_target(f"{app}:build").name == "app"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_target("myapp:pipeline").steps[-1] == "memory_o"


def test_target_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = tmp_path / "myapp2.py"
    app.write_text(APP)
    assert main(["run", "nosuch"]) == 2
    assert "unknown pipeline 'nosuch'. Hint: a catalog name (clickstream" in capsys.readouterr().err
    assert main(["run", f"{app}:missing"]) == 2
    assert "has no attribute 'missing'" in capsys.readouterr().err
    assert main(["run", f"{app}:not_a_pipeline"]) == 2
    assert "is an int, not a Pipeline" in capsys.readouterr().err
    # An event class was called (a pydantic traceback), a stream was "a AggregateStream".
    for attr, said in [
        ("Tick", "is a class, not a Pipeline"),
        ("unwritten", "is a stream (Stream at step 'map_double'), not a pipeline: it is not "
         "written anywhere. Hint: point at what .write(...) returns"),
        ("gives_stream", "returned a stream (Stream at step 'map_double')"),
        ("needs", "is a function that needs arguments, not a Pipeline"),
    ]:  # fmt: skip
        assert main(["run", f"{app}:{attr}"]) == 2
        assert said in capsys.readouterr().err
    assert main(["run", f"{app}:missing"]) == 2
    assert f"Hint: its pipelines: {app}:build, {app}:pipeline." in capsys.readouterr().err
    assert main(["run", f"{tmp_path}/none.py:p"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["run", "clickstream", "-w", "0"]) == 2
    assert "--workers must be at least 1; got 0" in capsys.readouterr().err
    assert main(["run", "clickstream", "-p", "0"]) == 2
    assert "--processes must be at least 1; got 0" in capsys.readouterr().err


def test_an_option_that_cannot_work_is_an_error_of_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each is refused before anything runs, as the command line's error (exit
    # status 2), saying what and how to fix it, with no traceback.
    a_file = tmp_path / "afile"
    a_file.write_text("")
    busy = tmp_path / "project"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["--recovery", str(a_file)], f"recovery store {str(a_file)!r} is not a directory"),
        (["--recovery", "/proc/evflow"], "recovery store '/proc/evflow' cannot be made"),
        (
            ["--recovery", str(tmp_path / "s"), "--snapshot-interval", "inf"],
            "snapshot_interval must be a positive, finite number of seconds; got inf",
        ),
        (
            ["--recovery", str(tmp_path / "s"), "--snapshot-interval", "1e-9"],
            "snapshot_interval must be a positive, finite number of seconds; got 1e-09. "
            "Durations are counted in whole microseconds: 0.000001 at least.",
        ),
        (
            ["-p", "2", "--formation-timeout", "nan"],
            "formation_timeout must be a positive, finite number of seconds; got nan",
        ),
        (
            ["--recovery", str(tmp_path / "s"), "--restart", "-1"],
            "restart must be an int >= 0; got -1",
        ),
        (["--metrics-port", "99999"], "metrics port must be in 0..65535; got 99999"),
        (["--addresses", "127.0.0.1:x"], "cluster address '127.0.0.1:x' is not host:port"),
        # An empty path made the current directory the store (an unset variable,
        # --recovery "$STATE"); a typo of a million workers ran out of memory.
        (["--recovery", ""], "recovery needs a directory; got '', which would make the"),
        (["-w", "1000000"], "workers must be at most 1024 (each is a thread or a process"),
        # A directory of the user's files (a typo of --recovery .) is not made a store.
        (["--recovery", str(busy)], f"recovery store {str(busy)!r} holds other files (notes"),
        # Options that did nothing without another: a member given --process-id 1 but no
        # --addresses ran the whole pipeline alone; the others were ignored silently.
        (["--process-id", "1"], "--process-id does nothing without --addresses: it is this"),
        (["--snapshot-interval", "1"], "--snapshot-interval does nothing without --recovery"),
        (["--metrics-host", "::1"], "--metrics-host does nothing without --metrics-port"),
        # (the hint was the Python call's, run(recovery='state/', restart=1))
        (["--restart", "1"], "--restart does nothing without --recovery: a restarted cluster"),
        (
            ["--addresses", "127.0.0.1:2101,127.0.0.1:2102", "-p", "2"],
            "--processes 2 with --addresses: a member started by hand is one process",
        ),
    ]
    for options, message in cases:
        assert main(["run", "orders", "--quiet", *options]) == 2, options
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}"), (options, err)
        assert "Traceback" not in err and "File " not in err, err
    assert not (tmp_path / "s").exists()  # refused before the store was made
    assert not list(Path.cwd().glob("*.sqlite3"))
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_error_in_user_file_shows_the_users_line(tmp_path: Path) -> None:
    app = tmp_path / "broken.py"
    app.write_text(BROKEN)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "RuntimeError: config missing: API_KEY" in done.stderr
    assert 'broken.py", line 5, in boom' in done.stderr
    assert "importlib" not in done.stderr


def test_halt_in_cli_shows_root_cause_first(tmp_path: Path) -> None:
    app = tmp_path / "halts.py"
    app.write_text(
        "from pipelines import Pipeline, sources, sinks\n"
        "def check(x):\n"
        "    if x == 2:\n"
        "        raise ValueError('two is not allowed')\n"
        "    return x\n"
        "pipeline = (Pipeline('h').read(sources.memory([1, 2]))"
        ".map(check, on_error='halt').write(sinks.memory('o')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    err = done.stderr
    assert err.index("ValueError: two is not allowed") < err.index("PipelineHalted")
    assert 'halts.py", line 4, in check' in err
    assert "bytewax" not in err


def test_run_on_two_processes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "sensors", "-p", "2"]) == 0
    out = capsys.readouterr().out
    assert "pipeline sensors: 1 worker(s) x 2 processes" in out and "reconciles" in out


def test_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["run", "orders", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pipeline"] == "orders" and data["reconciles"] is True
    assert data["read"] == 50_000 and data["steps"]["dispatch"]["kind"] == "dispatch"
    made = data["read"] + data["created"] + data["copies"]
    assert data["dead"] == made - data["written"] - data["handled"]


def test_quiet_and_live(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "sensors", "--quiet"]) == 0
    quiet = capsys.readouterr().out
    assert "pipeline sensors" in quiet and "events in" not in quiet
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", "clickstream", "--live"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert "events in" in done.stdout and "running for" in done.stdout
    assert "late events" in done.stdout
    # clickstream has an event-time window: its watermark and lag are shown
    assert re.search(
        r"aggregate_\w+: watermark 2026-01-01T[\d:]+\+00:00, lag [\d.,]+ s", done.stdout
    )
    assert "pipeline clickstream" in done.stdout


ENDLESS = """
from pipelines import Pipeline, sources, sinks
pipeline = (Pipeline("endless")
            .read(sources.generate(lambda rng, i: i, count=None, rate=2000))
            .filter(lambda n: n % 2 == 0).write(sinks.memory("o")))
"""


def test_sigterm_stops_and_prints_the_counts_so_far(tmp_path: Path) -> None:
    import signal
    import time

    app = tmp_path / "endless.py"
    app.write_text(ENDLESS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted: the counts so far" in err
    assert "pipeline endless" in out and "filter" in out


def test_sigterm_stops_a_cluster_of_processes(tmp_path: Path) -> None:
    import signal
    import time

    from tests.helpers import children

    app = tmp_path / "endless.py"
    app.write_text(ENDLESS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "-p", "2", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    members: list[int] = []
    while len(members) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        members = children(proc.pid)
    assert len(members) == 2
    time.sleep(2)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err
    assert time.monotonic() - started < 10
    time.sleep(0.5)
    for pid in members:  # the cluster's processes were stopped too
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} still runs"


TYPO = """
from pipelines import Event, Pipeline, sources, sinks

class Txn(Event):
    amount: float

pipeline = (
    Pipeline("typo")
    .read(sources.memory([Txn(amount=a) for a in range(10)] + ["not JSON"], schema=Txn))
    .map(lambda t: t.amout * 2)  # a typo: every event becomes a dead letter
    .write(sinks.memory("o"))
)
"""


def test_a_step_that_eats_everything_is_flagged_and_can_fail_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "typo.py"
    app.write_text(TYPO)
    assert main(["run", f"{app}:pipeline", "--quiet"]) == 0
    captured = capsys.readouterr()
    warning = "step 'map' turned all 10 records it received into dead letters (user_error)"
    assert f"warning: {warning}" in captured.err and "warning:" in captured.out
    # 11 of 11 records read are dead letters (10 at the map, 1 at parsing)
    assert main(["run", f"{app}:pipeline", "--quiet", "--max-dead-ratio", "0.5"]) == 3
    err = capsys.readouterr().err
    assert "11 of the 11 records read became dead letters (100.0%)" in err
    assert main(["run", f"{app}:pipeline", "--json", "--max-dead-ratio", "1"]) == 0
    out = capsys.readouterr().out
    assert '"dead_ratio": 1.0' in out and warning in out
    with pytest.raises(SystemExit):
        main(["run", f"{app}:pipeline", "--max-dead-ratio", "5"])
    assert "a share from 0 to 1" in capsys.readouterr().err


def test_a_step_that_passes_some_records_is_not_flagged() -> None:
    from pipelines import Pipeline, sinks, sources

    r = (
        Pipeline("some")
        .read(sources.memory([1, 0, 2]))
        .map(lambda x: 10 // x)
        .write(sinks.memory("o"))
        .run()
    )
    assert r.dead == 1 and r.warnings == [] and abs(r.dead_ratio - 1 / 3) < 1e-9


def test_a_file_without_an_attribute_runs_its_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "plain.py"
    app.write_text(APP)
    assert main(["run", str(app), "--quiet"]) == 0
    assert "map_double" in capsys.readouterr().out
    none = tmp_path / "empty.py"
    none.write_text("x = 1\n")
    assert main(["run", str(none)]) == 2
    assert "has no attribute 'pipeline'" in capsys.readouterr().err


ONE_FLOW = """
from pipelines import Event, Pipeline, sinks, sources

class Click(Event):
    user: str

flow = Pipeline("clicks").read(
    sources.memory([{"user": "a"}, {"user": "b"}], schema=Click)
).write(sinks.jsonl(OUT))
"""


@pytest.mark.parametrize("stem", ["pipelines", "operators", "time", "clicks_app"])
def test_a_file_named_like_a_module_runs_its_only_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stem: str
) -> None:
    # A file called pipelines.py (or operators.py, time.py) stood in for the module of
    # that name: its own `from pipelines import Pipeline` failed with an ImportError,
    # time.py broke every later `import time`. A file with one pipeline under another
    # name than `pipeline` was refused with a hint naming it.
    out = tmp_path / "out.jsonl"
    app = tmp_path / f"{stem}.py"
    app.write_text(f"OUT = {str(out)!r}\n" + ONE_FLOW)
    assert main(["run", str(app), "--quiet"]) == 0, capsys.readouterr().err
    assert "reconciles" in capsys.readouterr().out
    assert [line.count('"user"') for line in out.read_text().splitlines()] == [1, 1]
    assert sys.modules["pipelines"].__file__ != str(app)
    assert sys.modules["time"].__name__ == "time" and hasattr(sys.modules["time"], "monotonic")
    if stem != "clicks_app":
        assert f"evflow_file_{stem}" in sys.modules


def test_a_file_with_several_pipelines_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "two_flows.py"
    app.write_text(f"OUT = {str(tmp_path / 'o.jsonl')!r}\n" + ONE_FLOW + "other = flow\n")
    assert main(["run", str(app)]) == 2
    err = capsys.readouterr().err
    assert "has no attribute 'pipeline'" in err
    assert f"Hint: its pipelines: {app}:flow, {app}:other." in err


def test_a_reader_that_closes_stdout_stops_the_run_with_a_word(tmp_path: Path) -> None:
    # `evflow run app.py:pipeline | head -3` on an endless pipeline printing its
    # records: the run stops (exit 141, as a shell says of a broken pipe) with
    # one line on stderr, not a traceback, not a hang.
    import time

    app = tmp_path / "printing.py"
    app.write_text(
        "from pipelines import Pipeline, sources, sinks\n"
        "pipeline = (Pipeline('printing').read(sources.generate(lambda rng, i: i, count=None))"
        ".write(sinks.stdout()))\n"
    )
    # Cut after three of its records; closed before a catalog run prints its summary.
    for target, read in ((f"{app}:pipeline", 3), ("clickstream", 0)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "run", target],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline() for _ in range(read)]
        proc.stdout.close()
        started = time.monotonic()
        assert proc.wait(timeout=60) == 141, target
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert time.monotonic() - started < 30 and all(lines)
        assert err == (
            "evflow: stdout was closed by its reader (broken pipe): stopped; what was not "
            "written to it is lost\n"
        ), err[-2000:]
