"""Scaling benchmark: the windowed clickstream on 1, 2, 4, ... processes.

Workload (as in windowed_clickstream.py): N JSON events generated before
timing, split into as many partitions as processes; parse and validate, keep
purchases, key by user, 10-second tumbling event-time windows, count and sum
per user and window. Each variant writes its window results to files.

- evflow: ``run(processes=P)`` (its tumbling windows are aggregated where the
  events are read, and partial windows cross the key exchange);
- bytewax: the same dataflow written by hand with ``fold_window`` over a
  source partitioned by user (split before timing, so that its per-key
  watermarks see each key in order), on a forked cluster of P processes
  (``cluster_main``); each purchase crosses to the process of its key,
  pickled, whenever bytewax routes the key away from its partition's reader;
- shares (``--shares``, a reference, not a way to run evflow): P forked
  processes, each an independent one-process evflow run over its contiguous
  share of the input, with nothing exchanged and no cluster; the parent adds
  up their per-share windows (count and sum merge) into the same windows.
  What it reaches is what P processes give on this machine for evflow's
  per-event work, with no coordination at all;
- loop (``--loop``, a reference with no framework at all): the bare Python loop
  of windowed_clickstream.py (the same parser, dict windows) in one forked
  process over the whole input and in P forked processes over contiguous
  shares, each freezing the heap it inherits, the parent adding up their
  windows: what P processes give here for the parsing and counting alone.

Every variant must produce the same windows. Printed: median seconds per
process count, the speed-up over one process of the same variant, and the
median CPU time of all its processes together (user and system). evflow's CPU
time on P processes against the shares' on P tells what evflow's cluster
costs apart from what running P processes at once costs on this machine.

Run: ``python bench/scaling.py --processes 1,2 [--events N] [--rounds R]
[--shares] [--loop] [--skip-bytewax]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import cluster_main
from harness import interleaved
from windowed_clickstream import (
    Row,
    bytewax_flow,
    bytewax_rows,
    make_lines,
    run_loop,
    windowed,
)

from pipelines import sinks
from pipelines._running.cluster import free_ports


def run_evflow(
    lines: list[bytes],
    processes: int,
    workdir: Path,
    recovery: Path | None = None,
    out: Path | None = None,
) -> list[Row]:
    out = out or workdir / f"evflow_{processes}.jsonl"
    windowed("bench_scaling", lines, processes).write(sinks.jsonl(out)).run(
        processes=processes, recovery=recovery, snapshot_interval=5.0
    )
    rows = []
    for line in out.read_text().splitlines():
        r = json.loads(line)
        start = _seconds(r["start"])
        rows.append((r["key"], start, r["n"], round(r["total"], 6)))
    return sorted(rows)


def _share_member(lines: list[bytes], out: Path) -> None:
    run_evflow(lines, 1, out.parent, out=out)
    os._exit(0)


def fork_all(what: str, target: Any, args: list[tuple[Any, ...]]) -> None:
    """Fork one process per argument tuple, wait for all; any failure raises."""
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=target, args=a) for a in args]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            msg = f"a {what} process failed (exit code {proc.exitcode})"
            raise RuntimeError(msg)


def fork_over_shares(
    what: str, member: Any, lines: list[bytes], processes: int, workdir: Path
) -> list[Path]:
    """Fork ``member(share, out)`` over contiguous shares of ``lines``; return the outs."""
    size = -(-len(lines) // processes)
    outs = [workdir / f"{what}_{processes}_{i}.out" for i in range(processes)]
    fork_all(what, member, [(lines[i * size : (i + 1) * size], outs[i]) for i in range(processes)])
    return outs


def add_up(rows: Any) -> list[Row]:
    """Add up ``(key, start, n, total)`` rows of the same window (count and sum merge)."""
    sums: dict[tuple[str, float], list[float]] = {}
    for key, start, n, total in rows:
        acc = sums.setdefault((key, start), [0, 0.0])
        acc[0] += n
        acc[1] += total
    return sorted(
        (key, start, int(n), round(total, 6)) for (key, start), (n, total) in sums.items()
    )


def run_shares(lines: list[bytes], processes: int, workdir: Path) -> list[Row]:
    """Independent one-process runs over contiguous shares, windows added up after."""
    outs = fork_over_shares("share", _share_member, lines, processes, workdir)
    records = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    return add_up((r["key"], _seconds(r["start"]), r["n"], r["total"]) for r in records)


def _loop_member(lines: list[bytes], out: Path) -> None:
    # The parent's objects are frozen here, as evflow's runs freeze them: else
    # the loop's collections walk the whole inherited heap, more often the
    # longer its share (one process over all the input paid most).
    gc.freeze()
    out.write_text(json.dumps(run_loop(lines)))
    os._exit(0)


def run_loop_shares(lines: list[bytes], processes: int, workdir: Path) -> list[Row]:
    """The bare loop in forked processes over contiguous shares, windows added up after.

    Forked for one process too, so that each count pays the same costs of a
    forked process (its copied pages, its results written and read back).
    """
    outs = fork_over_shares("loop", _loop_member, lines, processes, workdir)
    return add_up(row for out in outs for row in json.loads(out.read_text()))


def _seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class _Slice(StatefulSourcePartition[bytes, int]):
    def __init__(self, lines: list[bytes], resume: int | None) -> None:
        self.lines = lines
        self.at = resume or 0

    def next_batch(self) -> list[bytes]:
        if self.at >= len(self.lines):
            raise StopIteration
        batch = self.lines[self.at : self.at + 1000]
        self.at += len(batch)
        return batch

    def snapshot(self) -> int:
        return self.at


class ByUserSource(FixedPartitionedSource[bytes, int]):
    """The lines split into partitions by user, made before timing.

    bytewax keeps one event-time watermark per key, moved on by the newest
    event of that key: if a key's events came through two partitions read at
    different speeds, on-time events would be called late and dropped. With
    each user's events in one partition (in order), its results are exact.
    """

    def __init__(self, parts: list[list[bytes]]) -> None:
        self.parts = parts

    def list_parts(self) -> list[str]:
        return [f"part{i}" for i in range(len(self.parts))]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Slice:
        return _Slice(self.parts[int(for_part[4:])], resume_state)


def split_by_user(lines: list[bytes], count: int) -> list[list[bytes]]:
    """Split lines into ``count`` partitions by user (malformed lines go to the first)."""
    parts: list[list[bytes]] = [[] for _ in range(count)]
    for line in lines:
        try:
            user = json.loads(line)["user"]
        except ValueError:
            parts[0].append(line)
            continue
        parts[zlib.crc32(user.encode()) % count].append(line)
    return parts


def _bytewax_member(parts: list[list[bytes]], addresses: list[str], i: int, out: str) -> None:
    got: list[Any] = []
    flow = bytewax_flow(ByUserSource(parts), got)
    cluster_main(flow, addresses, i, worker_count_per_proc=1)
    with open(out, "w") as f:
        json.dump(got, f)
    os._exit(0)


def run_bytewax(parts: list[list[bytes]], workdir: Path) -> list[Row]:
    processes = len(parts)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(processes)]
    outs = [str(workdir / f"bytewax_{processes}_{i}.json") for i in range(processes)]
    fork_all("bytewax", _bytewax_member, [(parts, addresses, i, outs[i]) for i in range(processes)])
    got: list[Any] = []
    for out in outs:
        with open(out) as f:
            got.extend((k, (wid, acc)) for k, (wid, acc) in json.load(f))
    return bytewax_rows(got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--skip-bytewax", action="store_true")
    parser.add_argument(
        "--shares",
        action="store_true",
        help="also time independent one-process runs over shares of the input",
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help="also time the bare Python loop, in one process and over shares in P",
    )
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    lines = make_lines(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        variants: dict[str, Any] = {}
        for p in counts:
            variants[f"evflow {p}"] = lambda p=p: run_evflow(lines, p, workdir)
            if args.shares and p > 1:
                variants[f"shares {p}"] = lambda p=p: run_shares(lines, p, workdir)
            if args.loop:
                variants[f"loop {p}"] = lambda p=p: run_loop_shares(lines, p, workdir)
            if not args.skip_bytewax:
                parts = split_by_user(lines, p)
                variants[f"bytewax {p}"] = lambda parts=parts: run_bytewax(parts, workdir)
        cpu: dict[str, float] = {}
        med, expected = interleaved(variants, args.rounds, cpu)
    print(
        f"\n{args.events} events, {args.rounds} rounds, {len(expected)} windows, "
        f"{os.cpu_count()} cores; medians and speed-up over 1 process:"
    )
    for name in ("evflow", "shares", "loop", "bytewax"):
        first = "evflow" if name == "shares" else name
        if f"{first} {counts[0]}" not in med:
            continue
        base = med[f"{first} {counts[0]}"] * counts[0] if counts[0] == 1 else None
        for p in counts:
            m = med.get(f"{name} {p}", med[f"{first} {p}"] if p == 1 else None)
            if m is None:
                continue
            speedup = f"{base / m:5.2f}x" if base else "  -  "
            used = cpu.get(f"{name} {p}", cpu.get(f"{first} {p}", 0.0))
            print(f"  {name:8s} {p:3d} processes  {m:7.3f}s  {speedup}  cpu {used:7.2f}s")
    for p in counts[1:]:
        if f"loop {p}" in med and f"loop {counts[0]}" in med:
            loop = med[f"loop {counts[0]}"] / med[f"loop {p}"]
            ours = med[f"evflow {counts[0]}"] / med[f"evflow {p}"]
            print(
                f"evflow's speed-up on {p} processes is {ours / loop:.2f} of the bare loop's "
                f"({ours:.2f}x vs {loop:.2f}x over {counts[0]} process(es))"
            )
    for p in counts:
        if f"bytewax {p}" in med:
            ratio = med[f"bytewax {p}"] / med[f"evflow {p}"]
            print(f"evflow speed vs bytewax on {p} processes: {ratio:.2f}x")


if __name__ == "__main__":
    main()
