"""Several processes: the same results as one, errors and crashes reported, files whole."""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from operators import Event, agg, windows
from pipelines import Pipeline, PipelineHalted, sinks, sources, testing
from pipelines.catalog import clickstream
from tests.helpers import multiset
from tests.pipelines.test_aggregate import Hit, write_files


def test_windows_over_files_agree_on_processes_and_workers(tmp_path: Path) -> None:
    folder = write_files(tmp_path)
    results = (
        Pipeline("files")
        .read(sources.jsonl(folder / "*.jsonl", schema=Hit, batch_size=50))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10))
        .aggregate(n=agg.count(), total=agg.sum("amount"))
    )
    p = results.write(sinks.memory("out")) | results.late.write(sinks.memory("late"))
    one = p.run()
    for workers, processes in ((1, 2), (2, 2)):
        many = p.run(workers=workers, processes=processes)
        assert many.processes == processes and many["late"] == []
        assert multiset(many["out"]) == multiset(one["out"])
        assert many.counts == one.counts and many.reconciles


def test_clickstream_on_two_processes_matches_one() -> None:
    p = clickstream.build(count=6000)
    one = testing.run(p)
    two = p.run(processes=2)
    for sink in ("alerts", "counts", "per_user"):
        assert multiset(two[sink]) == multiset(one[sink])
    assert Counter(d.kind for d in two.dead_letters) == Counter(d.kind for d in one.dead_letters)
    assert two.reconciles and two.read == one.read


def test_jsonl_sink_gets_every_record_once(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("stale\n")
    p = (
        Pipeline("j")
        .read(sources.memory(range(5000), partitions=4, batch_size=100))
        .write(sinks.jsonl(out))
    )
    p.run(processes=2)
    assert sorted(json.loads(x) for x in out.read_text().splitlines()) == list(range(5000))


def check_price(x: int) -> int:
    if x == 77:
        raise ValueError("no price for 77")
    return x


def test_halt_in_a_child_process_reaches_the_caller() -> None:
    p = (
        Pipeline("h")
        .read(sources.memory(range(200), partitions=2, batch_size=10))
        .map(check_price, on_error="halt")
        .write(sinks.memory("o"))
    )
    with pytest.raises(PipelineHalted, match=r"halted at step 'map_check_price'") as info:
        p.run(processes=2)
    assert isinstance(info.value.__cause__, ValueError)
    assert "no price for 77" in str(info.value.__cause__)


def die(x: int) -> int:
    if x == 3:
        os._exit(3)
    return x


def test_a_process_that_dies_stops_the_run_and_is_named() -> None:
    p = (
        Pipeline("crash")
        .read(sources.memory(range(10), partitions=2, batch_size=1))
        .map(die)
        .write(sinks.memory("o"))
    )
    with pytest.raises(
        RuntimeError,
        match=r"process \d of pipeline 'crash' .*exit code"
        r".*exit code 3",
    ):
        p.run(processes=2)


def test_unpicklable_event_classes_are_refused_before_running() -> None:
    class Local(Event):
        n: int = 0

    p = Pipeline("l").read(sources.memory([], schema=Local)).write(sinks.memory("o"))
    with pytest.raises(
        TypeError,
        match=r"runs on 2 processes.*event class "
        r".*Local .*cannot be pickled.*define it at module level",
    ):
        p.run(processes=2)


@pytest.mark.parametrize("to", ["keyed", "file"])
def test_records_of_a_local_class_stop_a_run_on_processes_before_they_cross(
    to: str, tmp_path: Path
) -> None:
    """The engine pickles what crosses to another process, and panics without a word on
    what cannot be: the class, the step taking it and a hint are said instead."""

    class Local(Event):
        k: str

    made = (
        Pipeline("crossing")
        .read(sources.memory(range(8), partitions=2))
        .map(lambda n: Local(k=str(n)))
    )
    if to == "keyed":
        counted = made.key_by(lambda e: e.k).aggregate(n=agg.count(), name="counted")
        p = counted.write(sinks.memory("o"))
        step = "counted"
    else:
        p = made.write(sinks.jsonl(tmp_path / "o.jsonl"), name="to_file")
        step = "to_file"
    with pytest.raises(
        TypeError,
        match=rf"runs on 2 processes, where the records that step '{step}' takes travel "
        r"between processes pickled, but class .*Local .*cannot be pickled.*"
        r"define it at module level",
    ):
        # With recovery, a file is written exactly once, by one worker.
        p.run(processes=2, recovery=None if to == "keyed" else tmp_path / "store")


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Holding(Event):
    """A record whose class pickles, with a field that may hold anything."""

    k: str
    extra: Any = None


@pytest.mark.parametrize("to", ["keyed", "process", "file"])
def test_a_record_holding_what_cannot_be_pickled_stops_the_run_saying_which_field(
    to: str, tmp_path: Path
) -> None:
    """The class pickles, the record does not (a lock in a field): instead of the engine's
    bare panic, the step taking it, the class, the field and a hint."""
    lock = threading.Lock()
    made = (
        Pipeline("holding")
        .read(sources.memory(range(8), partitions=2))
        .map(lambda n: Holding(k=str(n), extra=lock, time=T0 + timedelta(seconds=n)))
    )
    if to == "keyed":
        p = made.key_by(lambda e: e.k).aggregate(n=agg.count(), name="counted")
        step = "counted"
    elif to == "process":
        p = made.key_by(lambda e: e.k).process(lambda s, e, ctx: s, initial=int, name="counted")
        step = "counted"
    else:
        p = made.write(sinks.jsonl(tmp_path / "o.jsonl"), name="to_file")
        step = "to_file"
    if to != "file":
        p = p.write(sinks.memory("o"))
    assert p.run().reconciles  # on one process nothing is pickled
    with pytest.raises(
        TypeError,
        match=rf"runs on 2 processes, where the records that step '{step}' takes travel "
        r"between processes pickled, but a record of class Holding \(module .*\) cannot be "
        r"pickled: its field 'extra' holds a _thread.lock \(TypeError: cannot pickle "
        r"'_thread.lock' object\). Hint: keep only data in records",
    ):
        p.run(processes=2, recovery=None if to != "file" else tmp_path / "store")


def test_an_aggregate_value_that_cannot_be_pickled_stops_the_run_saying_so() -> None:
    """A window over the whole stream aggregates where events are read and sends the
    partial windows across: a value in them that cannot be pickled is named as such."""
    lock = threading.Lock()
    firsts = (
        Pipeline("holding")
        .read(sources.memory(range(40), partitions=2))
        .map(lambda n: Holding(k=str(n), extra=lock, time=T0 + timedelta(seconds=n)))
        .window_all(windows.tumbling(seconds=10))
        .aggregate(x=agg.first("extra"), name="firsts")
    )
    p = firsts.write(sinks.memory("o"))
    with pytest.raises(
        TypeError,
        match=r"runs on 2 processes, where the records that step 'firsts' takes travel between "
        r"processes pickled, but what goes with them cannot be: TypeError: cannot pickle "
        r"'_thread.lock' object. Hint: keep only data in records and in aggregates' values",
    ):
        p.run(processes=2)


def test_a_share_crossing_to_another_process_arrives_whole() -> None:
    """What a bucket's share holds comes out of its own pickling as it went in (and
    what checks it stays behind), and so do the records for a file writer."""
    import pickle

    from operators import Counters
    from operators._keying import Crossing, Marked, Sent

    crossing = Crossing(Counters(["s"]), "p", "s", 2)
    record = ("k", 1.5, Holding(k="k", id="e1"))
    share = Marked(
        "src/p0", 4.0, True, [record, ("j", 2.0, {"k": "j"})], idle_since=9.0,
        behind=[(("k", 0.5, Holding(k="k", id="e0")), 1.0)],
        partials=[("k", 0.0, 10.0, [3, 7.5], ["e1", "e2"])], combined=2,
        cuts=[(1, 1.5)], judges=[(0, None), (1, 3.0)], crossing=crossing,
    )  # fmt: skip
    arrived = pickle.loads(pickle.dumps(share))
    assert arrived == share and vars(arrived).keys() == vars(share).keys()
    assert arrived.crossing is None and share.crossing is crossing
    sent = pickle.loads(pickle.dumps(Sent([record[2], {"n": 1}], crossing)))
    assert type(sent) is list and sent == [record[2], {"n": 1}]


def test_process_count_is_checked() -> None:
    p = Pipeline("c").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(ValueError, match=r"processes must be a positive int; got 0"):
        p.run(processes=0)


MEMBER = """
from pipelines import Pipeline, sources, sinks
pipeline = (Pipeline("members").read(sources.memory(range(1000), partitions=4, batch_size=50))
            .filter(lambda n: n % 3 == 0).write(sinks.memory("o")))
"""


def test_members_of_a_cluster_join_by_address(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pipelines._running.cluster import free_ports

    app = tmp_path / "member_app.py"
    app.write_text(MEMBER)
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines",
                "run",
                f"{app}:pipeline",
                "--json",
                "--addresses",
                addresses,
                "--process-id",
                str(i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    done = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in done]
    # the engine's own messages (such as connection retries) go to stderr: stdout is JSON
    outs = [json.loads(out) for out, _ in done]
    assert sum(o["read"] for o in outs) == 1000  # each process read its own partitions
    assert sum(o["written"] for o in outs) == 334
    assert all(o["processes"] == 2 for o in outs)


SIZED_MEMBER = """
import os
from operators import agg, windows
from pipelines import Pipeline, sources, sinks
pipeline = (
    Pipeline("members")
    .read(sources.memory([(float(n), n) for n in range(1000)], partitions=4, batch_size=50))
    .key_by(lambda r: str(r[1] % 3))
    .window(
        windows.tumbling(seconds=int(os.environ.get("SIZE", "10"))),
        clock=windows.event_time(lambda r: r[0]),
    )
    .aggregate(n=agg.count())
    .write(sinks.jsonl(os.environ["OUT"]))
)
"""


def start_members(
    app: Path, members: list[tuple[int, list[str], dict[str, str]]], addresses: str
) -> list[tuple[int, str]]:
    """Start cluster members by hand (process id, options, environment); their ends."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--quiet"]
    procs = [
        subprocess.Popen(
            [*command, "--addresses", addresses, "--process-id", str(proc_id), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for proc_id, options, env in members
    ]
    ends = [p.communicate(timeout=120) for p in procs]
    return [(p.returncode, out + err) for p, (out, err) in zip(procs, ends, strict=True)]


def test_members_that_would_run_otherwise_stop_saying_how_before_writing(tmp_path: Path) -> None:
    from pipelines._running.cluster import free_ports

    app = tmp_path / "sized_app.py"
    app.write_text(SIZED_MEMBER)
    out = tmp_path / "out.jsonl"
    out.write_text("kept\n")
    env = {"OUT": str(out)}
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    differ = {
        "window": ([], {**env, "SIZE": "20"}, r"step 3 of the pipeline is 'aggregate_tumbling_20s"),
        "workers": (["-w", "2"], env, r"process 1 runs 2 worker\(s\) per process, process 0 "),
        "recovery": (
            ["--recovery", str(tmp_path / "store")],
            env,
            r"process 1 takes a snapshot every 5\.0 s",
        ),
    }
    for options, member_env, told in differ.values():
        ends = start_members(app, [(0, [], env), (1, options, member_env)], addresses)
        for code, text in ends:
            assert code == 1, text
            assert re.search(
                r"of pipeline 'members' would not run the same dataflow: " + told,
                text,
            ), text
            assert "Hint: start every member of pipeline 'members' from the same code" in text
        assert out.read_text() == "kept\n"  # nothing was truncated or written
    ends = start_members(app, [(0, [], env), (1, [], env)], addresses)
    assert [code for code, _ in ends] == [0, 0], ends
    assert sum(json.loads(line)["n"] for line in out.read_text().splitlines()) == 1000


def test_a_member_whose_place_is_taken_or_whose_member_0_never_comes_is_told(
    tmp_path: Path,
) -> None:
    from pipelines._running.cluster import free_ports

    app = tmp_path / "sized_app.py"
    app.write_text(SIZED_MEMBER)
    env = {"OUT": str(tmp_path / "out.jsonl")}
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    quick = ["--formation-timeout", "4"]
    ends = start_members(app, [(0, quick, env), (1, quick, env), (1, quick, env)], addresses)
    assert sorted(code for code, _ in ends) == [1, 1, 1], ends
    told = [text for _, text in ends]
    assert any("another member already joined as process 1" in t for t in told), told
    for member in (0, 1):
        said = f"cluster member {member} of pipeline 'members' could not form its cluster within"
        assert sum(said in t and "(process(es) [2] never came)" in t for t in told) == 1, told
    [(code, text)] = start_members(app, [(1, ["--formation-timeout", "1"], env)], addresses)
    assert code == 1 and "member 0 at 127.0.0.1:" in text and "did not answer" in text, text


ENDLESS_MEMBER = """
from pipelines import Pipeline, sources, sinks
pipeline = (
    Pipeline("endless")
    .read(sources.generate(lambda rng, i: {"n": i}, count=None, partitions=4, rate=2000))
    .key_by(lambda r: str(r["n"] % 7))
    .write(sinks.memory("o"))
)
"""


def test_a_member_that_loses_another_says_so_instead_of_a_bare_panic(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from pipelines._running.cluster import free_ports

    app = tmp_path / "endless_app.py"
    app.write_text(ENDLESS_MEMBER)
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    command = [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--json"]
    procs = [
        subprocess.Popen(
            [*command, "--addresses", addresses, "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(2)
    ]
    time.sleep(4)  # formed and running
    assert all(p.poll() is None for p in procs)
    os.killpg(procs[1].pid, signal.SIGKILL)
    _, err = procs[0].communicate(timeout=60)
    procs[1].communicate(timeout=10)
    assert procs[0].returncode == 1, err
    assert "cluster member 0 of pipeline 'endless' lost another member" in err, err
    assert "a run with --recovery would resume from its last snapshot" in err
    assert "Traceback" not in err


STDIN_APP = """
import os
from pipelines import Event, Pipeline, sinks, sources

class Line(Event):
    n: int

pipeline = (
    Pipeline("piped").read(sources.stdin(schema=Line, batch_size=100))
    .filter(lambda e: e.n % 7 != 0).write(sinks.jsonl(os.environ["OUT"]))
)
"""


def test_standard_input_is_read_on_several_processes(tmp_path: Path) -> None:
    # A forked member's standard input is emptied as it starts: on 2 processes the
    # piped lines were never read, and the run reconciled 0 read and 0 written.
    import subprocess
    import sys

    app = tmp_path / "piped.py"
    app.write_text(STDIN_APP)
    out = tmp_path / "out.jsonl"
    lines = "".join(f'{{"type": "line", "n": {i}}}\n' for i in range(3000))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--json", "-p", "2"],
        input=lines,
        env={**os.environ, "OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["read"] == 3000 and summary["processes"] == 2 and summary["reconciles"]
    written = Counter(json.loads(line)["n"] for line in out.read_text().splitlines())
    assert written == Counter(i for i in range(3000) if i % 7)


def test_non_loopback_addresses_need_the_flag() -> None:
    from pipelines._running.cluster import check_addresses, run_member

    p = Pipeline("c").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(
        ValueError,
        match=r"cluster address '10.1.2.3:2101' is not on loopback.*"
        r"unauthenticated.*--allow-remote",
    ):
        run_member(p, 1, ["127.0.0.1:2100", "10.1.2.3:2101"], 0)
    with pytest.raises(ValueError, match=r"'0.0.0.0:2101' is not on loopback"):
        check_addresses(["0.0.0.0:2101"])
    assert check_addresses(["10.1.2.3:2101"], allow_remote=True) == ["10.1.2.3:2101"]
    with pytest.raises(ValueError, match=r"cluster address 'nowhere' is not host:port"):
        check_addresses(["nowhere"])
    with pytest.raises(ValueError, match=r"process id 2 is not in 0..1 for 2 addresses"):
        run_member(p, 1, ["127.0.0.1:2100", "127.0.0.1:2101"], 2)


LOOK_ALIKES = [
    "localhost.evil.example",
    "127.0.0.1.evil.example",
    "::1234",
    "[::1234]",
    "localhost:80@10.0.0.1",
    "0.0.0.0",
    "[::]",
    "10.0.0.1",
    "localhost.",
    "local host",
    "127.0.0.1/8",
    "",
]


@pytest.mark.parametrize("host", LOOK_ALIKES)
def test_loopback_look_alikes_are_not_loopback(host: str) -> None:
    from pipelines._running.cluster import check_addresses, is_loopback
    from pipelines._running.metrics import Metrics

    assert not is_loopback(host)
    with pytest.raises(ValueError, match=r"is not on loopback|is not host:port"):
        check_addresses([f"{host}:2101"])
    with pytest.raises(
        ValueError, match=rf"metrics host {re.escape(repr(host))} is not on loopback"
    ):
        Metrics(9100, host).check(allow_remote=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "[::1]", "::1", "localhost"])
def test_loopback_hosts_are_loopback(host: str) -> None:
    from pipelines._running.cluster import is_loopback

    assert is_loopback(host)


def test_a_name_is_loopback_only_if_every_address_it_resolves_to_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from pipelines._running.cluster import check_addresses, is_loopback

    answers = {
        "both.example": ["127.0.0.1", "10.0.0.7"],
        "inside.example": ["127.0.0.1", "::1"],
    }

    def resolve(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(0, 0, 0, "", (a, 0)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert not is_loopback("both.example")
    assert is_loopback("inside.example")
    assert not is_loopback("nowhere.example")
    with pytest.raises(ValueError, match=r"'both.example:2101' is not on loopback"):
        check_addresses(["both.example:2101"])


def test_bare_ipv6_and_bad_ports_are_not_host_port() -> None:
    from pipelines._running.cluster import check_addresses

    for address in ["::1:2101", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:"]:
        with pytest.raises(ValueError, match=r"is not host:port. Hint: 127.0.0.1:2101, or \["):
            check_addresses([address])
    assert check_addresses(["[::1]:2101"]) == ["[::1]:2101"]
    # one address for two members: they waited for each other until the formation timeout
    with pytest.raises(
        ValueError, match=r"'127.0.0.1:2101' is given twice \(processes 0 and 2\): each member"
    ):
        check_addresses(["127.0.0.1:2101", "127.0.0.1:2102", " 127.0.0.1:2101"])


class _Stuck(sources.Source):
    """A source whose partitions cannot be listed: a process stuck before joining."""

    @property
    def label(self) -> str:
        return "stuck"

    def partitions(self) -> list[str]:
        import time

        time.sleep(120)
        return ["p0"]

    def open(self, partition: str, step: str, resume: object) -> sources.Source:  # type: ignore[override]
        raise AssertionError("never opened")


def test_a_cluster_that_does_not_form_is_stopped_in_time() -> None:
    import time

    # Windows list their partitions while the pipeline is compiled in each process,
    # before the process joins the cluster: here that never ends.
    p = (
        Pipeline("stuck")
        .read(_Stuck())
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=5))
        .aggregate(n=agg.count())
        .write(sinks.memory("o"))
    )
    started = time.monotonic()
    with pytest.raises(
        RuntimeError,
        match=r"did not form within 2 s: process\(es\) \[0, 1\] "
        r"never started",
    ):
        p.run(processes=2, formation_timeout=2)
    assert time.monotonic() - started < 20


def test_outputs_that_cannot_travel_back_are_reported() -> None:
    p = (
        Pipeline("unpicklable")
        .read(sources.memory(range(4), partitions=2))
        .map(lambda n: lambda: n)
        .write(sinks.memory("o"))
    )
    with pytest.raises(
        RuntimeError,
        match=r"could not send its results to the parent.*"
        r"records kept in memory sinks must be picklable",
    ):
        p.run(processes=2)


def pass_through_on_two_processes(name: str, count: int) -> None:
    """Run ``range(count)`` through a pipeline on 2 processes; every number comes out."""
    result = (
        Pipeline(name)
        .read(sources.memory(range(count), partitions=2))
        .write(sinks.memory("out"))
        .run(processes=2)
    )
    assert sorted(result["out"]) == list(range(count))


def test_parent_objects_are_frozen_while_the_cluster_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Frozen before the fork, the parent's objects are never walked by the
    # collector (no page copied for it in the children, no full collection
    # over a large input when the results come back); afterwards the parent's
    # collector is as it was.
    import gc
    import multiprocessing.process

    at_fork: list[int] = []
    start = multiprocessing.process.BaseProcess.start

    def recording_start(self: multiprocessing.process.BaseProcess) -> None:
        at_fork.append(gc.get_freeze_count())
        start(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", recording_start)
    before = (gc.get_freeze_count(), gc.get_threshold())
    pass_through_on_two_processes("frozen", 2000)
    assert len(at_fork) == 2 and all(count > before[0] for count in at_fork)
    assert (gc.get_freeze_count(), gc.get_threshold()) == before


def test_listening_ports_are_read_from_the_system() -> None:
    import socket

    from pipelines._running.cluster import listening_ports

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        assert port not in (listening_ports() or set())  # bound, not listening yet
        server.listen()
        assert port in (listening_ports() or set())
    finally:
        server.close()
    assert port not in (listening_ports() or set())


def test_await_listeners_returns_when_the_port_listens() -> None:
    import socket
    import threading
    import time

    from pipelines._running.cluster import await_listeners, free_ports

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    timer = threading.Timer(0.3, server.listen)
    started = time.monotonic()
    timer.start()
    try:
        assert await_listeners([f"127.0.0.1:{port}"], timeout=10)
        assert 0.25 < time.monotonic() - started < 5
    finally:
        timer.join()
        server.close()
    (unused,) = free_ports(1)
    started = time.monotonic()
    assert not await_listeners([f"127.0.0.1:{unused}"], timeout=0.2)
    assert time.monotonic() - started < 2


def test_members_wait_for_the_members_before_them_to_listen(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Process 0 starts its engine late. Process 1 must not try to connect
    # before it listens: the engine would wait a whole second before trying
    # again, and print that it does on standard output.
    import time

    import pipelines._running.cluster as processes

    execute = processes.execute

    def late_first(*args: object, **kwargs: object) -> object:
        if args[3] == 0:
            time.sleep(0.5)
        return execute(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(processes, "execute", late_first)
    pass_through_on_two_processes("late_first", 100)
    out, err = capfd.readouterr()
    assert "retrying" not in out + err


def test_without_socket_diagnostics_members_do_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where the kernel cannot be asked (no netlink: not Linux), the engine's
    # own retries apply: nobody waits.
    import time

    import pipelines._running.cluster as processes

    def refused(family: int) -> set[int]:
        raise OSError("no netlink here")

    monkeypatch.setattr(processes, "_listening", refused)
    assert processes.listening_ports() is None
    started = time.monotonic()
    assert not processes.await_listeners(["127.0.0.1:9"], timeout=5)
    assert time.monotonic() - started < 1
