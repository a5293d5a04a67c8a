"""Faults around recovery: halts, failed writes, killed parents, shared stores, damaged outputs.

Each test injects one fault, resumes, and checks every event id and every
window against a direct computation (bench/chaos.py's harness): nothing lost,
nothing written twice, and exit codes as documented (0 done, 1 failed).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import operators._sinks as sink_module
from pipelines import OutputChangedError, Pipeline, PipelineHalted, sinks, sources
from pipelines._running.cluster import free_ports
from tests.helpers import View
from tests.pipelines.test_recovery import load_chaos


def chaos_in(tmp_path: Path, events: int = 30_000, rate: float = 10_000) -> Any:
    return load_chaos().Chaos(tmp_path, events=events, rate=rate)


@pytest.mark.parametrize("processes", [1, 2])
def test_halted_at_random_records_then_resumed_loses_nothing(
    tmp_path: Path, processes: int
) -> None:
    chaos = chaos_in(tmp_path)
    rng = random.Random(processes)
    for _ in range(3):
        chaos.halt(rng, "-p", str(processes))
    assert chaos.finish()["reconciles"]
    chaos.check()


def test_a_full_disk_then_resume_loses_nothing(tmp_path: Path) -> None:
    chaos = chaos_in(tmp_path)
    rng = random.Random(3)
    failed = [chaos.fail_writes(rng, "-w", workers) for workers in ("1", "2", "1")]
    assert any(failed), "no write failed: the test injected nothing"
    assert chaos.finish()["reconciles"]
    chaos.check()


class FailingDisk:
    """Writes fail with ``code`` once ``budget`` bytes were written (then the disk is fixed)."""

    def __init__(self, code: int, budget: int) -> None:
        self.code = code
        self.budget = budget
        self.original = sink_module.write_all

    def __call__(self, handle: Any, data: bytes) -> int:
        if len(data) > self.budget:
            raise OSError(self.code, os.strerror(self.code))
        self.budget -= len(data)
        return int(self.original(handle, data))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_write_stops_the_run_and_the_resume_writes_each_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    out = tmp_path / "out.jsonl"

    def pipeline() -> Pipeline:
        return (
            Pipeline("disk")
            .read(sources.generate(lambda rng, i: {"i": i}, count=20_000, batch_size=100))
            .write(sinks.jsonl(out))
        )

    monkeypatch.setattr(sink_module, "write_all", FailingDisk(code, budget=50_000))
    with pytest.raises(OSError, match=os.strerror(code)):
        pipeline().run(recovery=tmp_path / "store", snapshot_interval=0.01)
    monkeypatch.undo()
    written = out.stat().st_size
    assert 0 < written < 50_000 + 2_000
    result = pipeline().run(recovery=tmp_path / "store")
    assert result.reconciles
    got = [json.loads(line)["i"] for line in out.read_text().splitlines()]
    assert sorted(got) == list(range(20_000)), "records lost or written twice"


def test_killing_the_parent_ends_its_members_and_a_rerun_is_exact(tmp_path: Path) -> None:
    chaos = chaos_in(tmp_path)
    rng = random.Random(5)
    for _ in range(2):
        chaos.kill_parent(rng)  # asserts that no member outlives its parent
    assert chaos.finish()["reconciles"]
    chaos.check()


def test_a_second_run_on_a_store_in_use_is_refused_at_once(tmp_path: Path) -> None:
    chaos = chaos_in(tmp_path, rate=5_000)
    first = subprocess.Popen(
        chaos.command("--quiet"),
        env=chaos.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        assert first.poll() is None, "the first run ended too soon to test anything"
        started = time.monotonic()
        second = chaos.run(rate=1e9)
        assert time.monotonic() - started < 15
        assert first.poll() is None
        assert second.returncode == 1
        assert f"recovery store {str(chaos.store)!r} is in use by another run" in second.stderr
        assert f"(pid {first.pid} on " in second.stderr  # the holder, named
        assert "chaos_app.py:pipeline" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # The kernel released the killed run's lock: the store can be used again.
    assert chaos.finish()["reconciles"]
    chaos.check()


def test_two_members_of_one_store_and_id_are_refused(tmp_path: Path) -> None:
    from pipelines._running.run import Recovery
    from pipelines._running.store import StoreInUseError

    store = Recovery.prepare(tmp_path / "store", 1.0)
    with store.held(member=0), store.held(member=1):
        same_id = pytest.raises(StoreInUseError, match=r"in use by another run \(cluster member 0")
        with same_id, store.held(member=0):
            pass
        with pytest.raises(StoreInUseError, match=r"in use by another run"), store.held():
            pass
    with store.held():
        pass  # released


def test_members_started_by_hand_write_each_record_once(tmp_path: Path) -> None:
    app = tmp_path / "by_hand.py"
    out = tmp_path / "ids.jsonl"
    dead = tmp_path / "dead.jsonl"
    app.write_text(
        "from pipelines import Pipeline, sources, sinks\n"
        "def check(x):\n"
        "    if x['i'] % 1000 == 0:\n"
        "        raise ValueError('a thousandth')\n"
        "    return x\n"
        "pipeline = (Pipeline('by_hand')\n"
        "    .read(sources.generate(lambda rng, i: {'i': i}, count=100_000, partitions=4))\n"
        f"    .map(check).write(sinks.jsonl({str(out)!r}))\n"
        f"    .dead_letters(sinks.jsonl({str(dead)!r})))\n"
    )
    out.write_text("left over from an earlier run\n" * 10)
    dead.write_text("left over from an earlier run\n" * 10)
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    members = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--json"),
                *("--addresses", addresses, "--process-id", str(i)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [m.communicate(timeout=120) for m in members]
    for member, (_, stderr) in zip(members, results, strict=True):
        assert member.returncode == 0, stderr[-3000:]
    summaries = [json.loads(stdout) for stdout, _ in results]
    assert [s["member"] for s in summaries] == [0, 1]
    assert all(s["reconciles"] is None for s in summaries)  # a share: not judged alone
    assert sum(s["read"] for s in summaries) == 100_000
    ids = [json.loads(line)["i"] for line in out.read_text().splitlines()]
    assert sorted(ids) == [i for i in range(100_000) if i % 1000]
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(letters) == 100 and {d["step"] for d in letters} == {"map_check"}


def test_a_member_started_by_hand_says_its_counts_are_a_share(tmp_path: Path) -> None:
    from pipelines._showing.result import RunResult
    from pipelines._showing.tables import summary_table

    result = RunResult("p", {}, [], {}, 1, 0.1, 2)
    result.member = 1
    assert result.partial and result.to_dict()["reconciles"] is None
    caption = str(summary_table(result).caption)
    assert "the share of cluster member 1 of 2 only" in caption


def test_stdin_with_recovery_is_refused(tmp_path: Path) -> None:
    p = Pipeline("s").read(sources.stdin(schema=View)).write(sinks.memory("o"))
    with pytest.raises(ValueError, match=r"reads stdin, which cannot be read again"):
        p.run(recovery=tmp_path / "store")
    assert not (tmp_path / "store").exists()
    app = tmp_path / "from_stdin.py"
    app.write_text(
        "from pipelines import Pipeline, sources, sinks\n"
        "from tests.helpers import View\n"
        "pipeline = Pipeline('s').read(sources.stdin(schema=View)).write(sinks.stdout())\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--recovery", "store"],
        input='{"type": "view", "user": "ada"}\n',
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "reads stdin, which cannot be read again from a snapshot's position" in done.stderr


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_an_output_damaged_before_a_resume_refuses_it(tmp_path: Path, damage: str) -> None:
    chaos = chaos_in(tmp_path)
    # 2.5 s of input, snapshots every 0.1 s: the halt leaves snapshots that
    # cover most of what the run wrote
    halted = chaos.run(fail_at=25_000)
    assert halted.returncode == 1 and "failure injected at t25000" in halted.stderr
    if damage == "deleted":
        chaos.events_out.unlink()
    else:
        with open(chaos.events_out, "r+b") as f:
            f.truncate(100)
    done = chaos.run(rate=1e9)
    assert done.returncode == 1
    assert "OutputChangedError" in done.stderr
    assert f"jsonl sink {str(chaos.events_out)!r}" in done.stderr
    assert "was deleted or cut short after that run" in done.stderr
    assert "remove the recovery store and the output files" in done.stderr
    if damage == "deleted":
        assert not chaos.events_out.exists()  # not recreated with the newer records only
    else:
        assert chaos.events_out.stat().st_size == 100  # not padded with zeros


def test_an_output_cut_or_replaced_before_a_resume_is_refused_in_process(
    tmp_path: Path,
) -> None:
    # Cut short, it is refused by its length. Replaced by another file as long
    # (another run's output written to the same path, say), it was cut back
    # to the snapshot's length and resumed onto, the earlier records not in
    # it while the summary reconciled: a snapshot now keeps a digest of what
    # was written just before its position.
    out = tmp_path / "o.jsonl"
    values = list(range(5_000))

    def fail(x: int) -> int:
        if x == 4_000:
            raise KeyError(x)
        return x

    def pipeline(step: Any) -> Pipeline:
        read = sources.memory(values, batch_size=10)
        return Pipeline("cut").read(read).map(step, on_error="halt").write(sinks.jsonl(out))

    with pytest.raises(PipelineHalted):
        pipeline(fail).run(recovery=tmp_path / "store", snapshot_interval=0.001)
    written = out.read_bytes()
    out.write_text("")
    with pytest.raises(OutputChangedError, match=r"holds 0 bytes, but the recovery store"):
        pipeline(fail).run(recovery=tmp_path / "store")
    out.write_bytes(written.replace(b"1", b"7") + b"7\n")  # as long, and longer
    with pytest.raises(OutputChangedError, match=r"no longer holds what the run wrote"):
        pipeline(lambda x: x).run(recovery=tmp_path / "store")
    assert out.read_bytes() == written.replace(b"1", b"7") + b"7\n"  # left as it was
    out.write_bytes(written + b"4000\n")  # as it was, and grown: resumed
    assert pipeline(lambda x: x).run(recovery=tmp_path / "store").reconciles
    assert [int(line) for line in out.read_text().splitlines()] == values


def test_dead_letters_to_a_file_are_replaced_on_each_run_of_two_processes(
    tmp_path: Path,
) -> None:
    dead = tmp_path / "dead.jsonl"

    def odd(x: int) -> int:
        if x % 2:
            raise ValueError(x)
        return x

    p = (
        Pipeline("dl")
        .read(sources.memory(range(66)))
        .map(odd)
        .write(sinks.memory("o"))
        .dead_letters(sinks.jsonl(dead))
    )
    for _ in range(3):
        p.run(processes=2)
        assert len(dead.read_text().splitlines()) == 33


def test_a_random_mix_of_faults_loses_nothing(tmp_path: Path) -> None:
    # The suite's small version of `bench/chaos.py --mixed 50`.
    module = load_chaos()
    chaos = module.Chaos(tmp_path, events=30_000, rate=10_000)
    done = module.mixed(chaos, 6, random.Random(11))
    assert sum(done.values()) == 6
    assert chaos.finish()["reconciles"]
    chaos.check()


@pytest.mark.parametrize("processes", [1, 2])
def test_dead_letters_to_a_file_survive_a_resume(tmp_path: Path, processes: int) -> None:
    # A fresh store starts the file afresh; a resumed run cuts it back to the
    # snapshot and goes on: each dead letter is in it exactly once.
    dead = tmp_path / "dead.jsonl"
    dead.write_text("left over from an earlier run\n")

    def pipeline(halt_at: int | None) -> Pipeline:
        def check(x: int) -> int:
            if x % 100 == 0:
                raise ValueError(f"bad {x}")
            return x

        def stop(x: int) -> int:
            if x == halt_at:
                raise RuntimeError("halt here")
            return x

        return (
            Pipeline("dl")
            .read(sources.memory(range(20_000), batch_size=50, partitions=2))
            .map(check)  # every hundredth record is a dead letter
            .map(stop, on_error="halt")
            .write(sinks.jsonl(tmp_path / "out.jsonl"))
            .dead_letters(sinks.jsonl(dead))
        )

    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        pipeline(15_001).run(recovery=store, snapshot_interval=0.05, processes=processes)
    before = dead.read_text().splitlines()
    assert before and "left over" not in dead.read_text()
    pipeline(None).run(recovery=store, processes=processes)
    payloads = [json.loads(line)["payload"] for line in dead.read_text().splitlines()]
    assert sorted(payloads, key=int) == [str(x) for x in range(0, 20_000, 100)]


def test_a_halt_on_one_worker_resumed_from_two_prints_nothing_of_the_engine(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A single worker resumed from a store that two workers wrote, halted:
    # the engine printed its own traceback of the error (BytewaxRuntimeError,
    # with evflow's frames) before evflow raised the user's exception.
    halts = {3_000, 9_000}

    def halt(x: int) -> int:
        if x in halts:
            halts.discard(x)
            raise RuntimeError("halted")
        return x

    p = (
        Pipeline("quiet")
        .read(sources.memory(list(range(20_000)), batch_size=50, partitions=2))
        .map(halt, on_error="halt")
        .write(sinks.jsonl(tmp_path / "out.jsonl"))
    )
    for workers in (2, 1):
        with pytest.raises(PipelineHalted):
            p.run(workers=workers, recovery=tmp_path / "store", snapshot_interval=0.005)
    assert p.run(recovery=tmp_path / "store").reconciles
    _, err = capfd.readouterr()
    assert err == ""
    written = sorted(int(line) for line in (tmp_path / "out.jsonl").read_text().splitlines())
    assert written == list(range(20_000))
