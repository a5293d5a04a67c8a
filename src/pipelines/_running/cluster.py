"""Run a pipeline on several processes of this host through bytewax's own cluster.

The parent checks the pipeline, truncates file sinks, picks free loopback
ports and forks one process per cluster member; each builds the same dataflow
(forked, so user functions need not be importable) and runs its share with
``cluster_main``. Each sends back its memory-sink outputs, dead letters and
counts, which the parent sums. A process that dies takes the others down with
it, and the parent says which one and how.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from operators import PipelineHalted
from operators._keying import unpicklable
from pipelines._running.compile import Compiled, check
from pipelines._running.handshake import ClusterError, agree, fingerprint
from pipelines._running.metrics import Metrics
from pipelines._running.net import is_loopback, split_address
from pipelines._running.options import OptionError, seconds_option
from pipelines._running.panics import quiet_panics
from pipelines._running.run import (
    Outcome,
    Recovery,
    execute,
    gc_tuned,
    raise_error,
    result_of,
    truncate_files,
)
from pipelines._showing.result import RunResult

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline

__all__ = [
    "ClusterError",
    "Interrupted",
    "await_listeners",
    "check_addresses",
    "die_with_parent",
    "free_ports",
    "is_loopback",
    "listening_ports",
    "run_member",
    "run_processes",
    "run_supervised",
    "split_address",
]

log = logging.getLogger("evflow")

# How long a member on this host waits for the members before it to listen,
# before it leaves the connecting to the engine's own retries.
_LISTEN_WAIT = 10.0


def free_ports(n: int) -> list[int]:
    """Return ``n`` free TCP ports on the loopback interface."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening_ports() -> set[int] | None:
    """Return the TCP ports this host listens on, or None where that cannot be asked.

    Asked of the kernel's socket diagnostics over netlink (Linux), for listening
    sockets only: about 0.1 ms, where reading ``/proc/net/tcp`` walks every
    connection of the host (16 ms on a shared machine). Elsewhere None.
    """
    ports: set[int] = set()
    answered = False
    for family in (socket.AF_INET, getattr(socket, "AF_INET6", None)):
        if family is None:
            continue
        try:
            ports |= _listening(family)
        except (OSError, AttributeError, struct.error):
            continue  # no netlink here, or no such family on this host
        answered = True
    return ports if answered else None


# Netlink socket diagnostics (linux/sock_diag.h, linux/inet_diag.h).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x301
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10


def _listening(family: int) -> set[int]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        # inet_diag_req_v2: family, protocol, ext, pad, states; a zeroed socket id.
        request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN)
        request += bytes(48)
        header = struct.pack(
            "=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0
        )
        nl.sendto(header + request, (0, 0))
        ports: set[int] = set()
        while True:
            data = nl.recv(65536)
            at = 0
            while at + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, at)
                if kind == _NLMSG_DONE:
                    return ports
                if kind == _NLMSG_ERROR or length < 16:
                    msg = "socket diagnostics refused the request"
                    raise OSError(msg)
                # inet_diag_msg: family, state, timer, retrans, then the source port.
                ports.add(struct.unpack_from(">H", data, at + 20)[0])
                at += (length + 3) & ~3
            if not data:
                return ports


def await_listeners(addresses: list[str], timeout: float) -> bool:
    """Wait until a process listens on the port of each of ``addresses`` (this host).

    A cluster member connects to the members before it, and when one of them
    is not listening yet, the engine waits a whole second before it tries
    again (and says so on standard output). Members on this host therefore
    wait here, a few milliseconds at a time, for the ones before them to
    listen. Returns whether all listen: False at ``timeout``, or at once where
    listening ports cannot be asked (the engine's own retry then applies).
    """
    wanted = {split_address(a)[1] for a in addresses}
    deadline = time.monotonic() + timeout
    while True:
        ports = listening_ports()
        if ports is None:
            return False
        if wanted <= ports:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def _check_picklable(pipeline: Pipeline, processes: int) -> None:
    """Events cross processes pickled: their classes must be importable."""
    classes: list[Any] = []
    for node in pipeline.graph:
        if node.kind == "read" and node.params.get("classes"):
            classes.extend(node.params["classes"])
        elif node.kind == "aggregate":
            classes.append(node.params["result_model"])
    for cls in classes:
        error = unpicklable(cls, pipeline.name, processes, "events", "event class")
        if error is not None:
            raise error


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Make this forked member die when its parent does, whatever kills the parent.

    On Linux the kernel sends SIGKILL to the member when the parent's thread
    that forked it ends (``PR_SET_PDEATHSIG``); a member whose parent is
    already gone exits at once. Elsewhere a thread watches the parent.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="evflow-parent-watch", daemon=True).start()


def _child(
    pipeline: Pipeline,
    workers: int,
    addresses: list[str],
    proc_id: int,
    conn: Connection,
    formed: Any,
    recovery: Recovery | None,
    metrics: Metrics | None,
    parent: int,
    stdin: int | None,
) -> None:
    def signal_formed(compiled: Compiled) -> None:
        def mark() -> None:
            formed.value = 1

        compiled.counters.on_start = mark

    die_with_parent(parent)
    if stdin is not None:
        # A forked member starts with its standard input emptied: give it the
        # parent's back, for the member whose worker reads it (sources.stdin).
        os.dup2(stdin, 0)
        os.close(stdin)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own, kept open
    # The parent stops a failed cluster with SIGTERM: take the default action
    # (a handler inherited from the parent, such as the command line's, would
    # wait for the engine to hand control back).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The parent asks a member to stop with SIGINT: it stops as a one-process
    # run does and sends its counts so far.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sent = False
    try:
        outcome: Outcome | None = None
        try:
            earlier = addresses[:proc_id]
            if earlier and all(is_loopback(split_address(a)[0]) for a in earlier):
                await_listeners(earlier, _LISTEN_WAIT)
            outcome = execute(
                pipeline,
                workers,
                addresses,
                proc_id,
                append_files=True,
                monitor=signal_formed,
                recovery=recovery,
                metrics=metrics,
            )
            error = outcome.error
            outcome.error = None
        except BaseException as exc:  # noqa: BLE001 - sent to the parent (engine panics too)
            error = exc
        detail = None
        if error is not None:
            detail = "".join(traceback.format_exception(error))
            payload: Any = (outcome, _portable(error), _portable(error.__cause__), detail)
        else:
            payload = (outcome, None, None, None)
        try:
            conn.send(payload)
            sent = True
        except Exception as exc:  # noqa: BLE001 - the parent is told why
            conn.send(
                (
                    None,
                    RuntimeError(
                        f"process {proc_id} could not send its results to the parent: {exc}. Hint: "
                        f"records kept in memory sinks must be picklable."
                    ),
                    None,
                    None,
                )
            )
            sent = True
    finally:
        conn.close()
        # Exit at once (no atexit handlers of the parent's copy); non-zero when
        # the parent got nothing, so its message shows something went wrong.
        os._exit(0 if sent else 1)


def _portable(error: BaseException | None) -> BaseException | None:
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error.with_traceback(None)
    except Exception:  # noqa: BLE001 - an exception that cannot travel is described
        return RuntimeError(f"{type(error).__qualname__}: {error}")


def run_processes(
    pipeline: Pipeline,
    workers: int,
    processes: int,
    formation_timeout: float = 30.0,
    recovery: Recovery | None = None,
    metrics: Metrics | None = None,
) -> RunResult:
    """Run ``pipeline`` on ``processes`` processes of ``workers`` threads each.

    A cluster whose processes have not all started their dataflow within
    ``formation_timeout`` seconds is stopped with an error naming them.
    """
    check(pipeline)
    _check_picklable(pipeline, processes)
    # Frozen before the fork, the parent's objects are never walked by a
    # collection, here or in the children: no page of theirs is copied for it,
    # and taking in the children's results starts no full collection over a
    # large input still held here.
    with gc_tuned():
        return _run_cluster(pipeline, workers, processes, formation_timeout, recovery, metrics)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a multi-process run; ``result`` holds the counts so far."""

    def __init__(self, result: RunResult | None) -> None:
        """Carry the counts the members sent back before they stopped."""
        super().__init__("interrupted")
        self.result = result


# How long stopped members have to send their counts back before they are killed.
_STOP_GRACE = 3.0


def _run_cluster(
    pipeline: Pipeline,
    workers: int,
    processes: int,
    formation_timeout: float,
    recovery: Recovery | None,
    metrics: Metrics | None,
) -> RunResult:
    if recovery is None:
        truncate_files(pipeline)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(processes)]
    started = time.perf_counter()
    outcomes = _run_members(
        pipeline, workers, addresses, list(range(processes)), formation_timeout, recovery, metrics
    )
    return result_of(pipeline, outcomes, workers, processes, time.perf_counter() - started)


# The members write to this process's filtered standard error: what the engine
# prints as they lose a peer, even as they exit, stays off it.
@quiet_panics()
def _run_members(
    pipeline: Pipeline,
    workers: int,
    addresses: list[str],
    ids: list[int],
    formation_timeout: float,
    recovery: Recovery | None,
    metrics: Metrics | None,
) -> list[Outcome]:
    """Fork the cluster members ``ids`` (all of them, or one started by hand) and wait.

    A member that dies stops the others; members that have not started their
    dataflow within ``formation_timeout`` are stopped; Ctrl-C or SIGTERM stop
    them all, with the counts they send back within a grace period.
    """
    context = multiprocessing.get_context("fork")
    started = time.perf_counter()
    procs: dict[int, Any] = {}
    pending: dict[Any, int] = {}
    formed = {i: context.Value("i", 0) for i in ids}
    deadline = time.monotonic() + formation_timeout
    try:
        stdin: int | None = os.dup(0)
    except OSError:  # no standard input
        stdin = None
    for proc_id in ids:
        receive, send = context.Pipe(duplex=False)
        proc = context.Process(
            target=_child,
            args=(
                pipeline,
                workers,
                addresses,
                proc_id,
                send,
                formed[proc_id],
                recovery,
                metrics,
                os.getpid(),
                stdin,
            ),
            name=f"evflow-{pipeline.name}-{proc_id}",
            daemon=True,
        )
        proc.start()
        send.close()
        procs[proc_id] = proc
        pending[receive] = proc_id
    if stdin is not None:
        os.close(stdin)  # the members hold it now
    outcomes: dict[int, Any] = {}
    failure: str | None = None
    waiting: list[int] = []
    try:
        while pending and failure is None:
            waiting = [i for i, flag in formed.items() if not flag.value]
            if waiting and time.monotonic() > deadline:
                failure = _not_formed(pipeline, addresses, ids, waiting, formation_timeout)
                break
            sentinels = {procs[i].sentinel: i for i in pending.values()}
            for ready in wait([*pending, *sentinels], timeout=0.5):
                if isinstance(ready, Connection) and ready in pending:
                    proc_id = pending.pop(ready)
                    try:
                        outcomes[proc_id] = ready.recv()
                        if outcomes[proc_id][1] is not None and _own_error(outcomes[proc_id][1]):
                            # Its own failure (not a lost peer): the others would
                            # only wait for it, so they are stopped now.
                            pending.clear()
                            break
                    except EOFError:
                        procs[proc_id].join(1)
                        failure = (
                            f"process {proc_id} of pipeline {pipeline.name!r} ended without "
                            f"a result (exit code {procs[proc_id].exitcode}); the others "
                            f"were stopped"
                        )
                elif isinstance(ready, int):
                    proc_id = sentinels[ready]
                    conn = next((c for c, i in pending.items() if i == proc_id), None)
                    if conn is not None and not conn.poll(0.5):
                        failure = (
                            f"process {proc_id} of pipeline {pipeline.name!r} died (exit "
                            f"code {procs[proc_id].exitcode}) before it finished; the others "
                            f"were stopped"
                        )
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the members stop as a one-process run does (the
        # recovery store keeps its last complete snapshot) and send their
        # counts; whoever does not within the grace period is killed.
        _gather_on_stop(procs, pending, outcomes)
        partial = [o[0] for o in outcomes.values() if o[0] is not None]
        summed = None
        if partial:
            summed = result_of(
                pipeline, partial, workers, len(addresses), time.perf_counter() - started
            )
        raise Interrupted(summed) from None
    finally:
        if failure is not None and not waiting:
            # Give the others a moment to end by themselves (their peer is gone),
            # so their exit codes tell what happened; then stop them.
            deadline_end = time.monotonic() + 2
            while time.monotonic() < deadline_end and any(p.is_alive() for p in procs.values()):
                time.sleep(0.05)
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    if failure is not None:
        # Which process failed first is a race; say how each one ended.
        ended = ", ".join(f"process {i}: exit code {p.exitcode}" for i, p in procs.items())
        msg = f"{failure} ({ended})"
        raise ClusterError(msg)
    failed = [i for i in ids if i in outcomes and outcomes[i][1] is not None]
    if failed:
        # A member that halts aborts its engine, and the others then lose their
        # peer ("Send thread panic"): the member with a cause of its own speaks.
        proc_id = min(failed, key=lambda i: (not _own_error(outcomes[i][1]), i))
        _, error, cause, detail = outcomes[proc_id]
        if cause is not None:
            error.__cause__ = cause
        if detail:
            # (BaseException.add_note is Python 3.11's: 3.10 keeps the same list.)
            notes = getattr(error, "__notes__", None)
            error.__notes__ = [*(notes or []), f"in process {proc_id}:\n{detail}"]
        raise_error(error)
    return [outcomes[i][0] for i in ids]


def _not_formed(
    pipeline: Pipeline, addresses: list[str], ids: list[int], waiting: list[int], timeout: float
) -> str:
    if len(ids) == len(addresses):
        return (
            f"the cluster of {len(ids)} processes for pipeline {pipeline.name!r} did "
            f"not form within {timeout:g} s: process(es) {waiting} never "
            f"started their dataflow; all were stopped. Hint: check that every "
            f"process can import the pipeline and reach the others' addresses."
        )
    others = [a for i, a in enumerate(addresses) if i not in ids]
    return (
        f"cluster member {ids[0]} of pipeline {pipeline.name!r} could not form its cluster "
        f"within {timeout:g} s: not every member at {', '.join(others)} joined; it was "
        f"stopped. Hint: start every member with the same --addresses, check that they "
        f"can reach each other, or give them longer with --formation-timeout."
    )


def _gather_on_stop(
    procs: dict[int, Any], pending: dict[Any, int], outcomes: dict[int, Any]
) -> None:
    """Ask the members to stop (SIGINT) and take the outcomes they send in time."""
    for proc in procs.values():
        if proc.is_alive():
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGINT)
    end = time.monotonic() + _STOP_GRACE
    while pending and time.monotonic() < end:
        for ready in wait(list(pending), timeout=max(0.0, end - time.monotonic())):
            assert isinstance(ready, Connection)
            proc_id = pending.pop(ready)
            with contextlib.suppress(EOFError, OSError):
                outcomes[proc_id] = ready.recv()


def _lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is the engine's panic at losing the connection to a peer."""
    text = f"{type(error).__name__}: {error}"
    return "PanicException" in text and ("Send thread panic" in text or "Recv thread panic" in text)


def _own_error(error: BaseException) -> bool:
    """Whether ``error`` is a member's own failure, not the loss of a peer that failed."""
    if isinstance(error, PipelineHalted):
        return True
    text = f"{type(error).__name__}: {error}"
    return "PanicException" not in text or "Send thread panic" not in text


def run_supervised(
    pipeline: Pipeline,
    workers: int,
    processes: int,
    formation_timeout: float,
    recovery: Recovery,
    restarts: int,
    metrics: Metrics | None = None,
) -> RunResult:
    """Run as `run_processes` does; when the cluster fails, start it again.

    Each new start resumes from the last snapshot in ``recovery``; after
    ``restarts`` new starts, the failure is raised. A failure of the pipeline
    itself (a halt) is not retried: it would fail the same way again.
    """
    for attempt in range(restarts + 1):
        try:
            result = run_processes(
                pipeline, workers, processes, formation_timeout, recovery, metrics
            )
        except ClusterError as exc:
            if attempt == restarts:
                msg = f"{exc}; the cluster had been restarted {restarts} time(s) before this"
                raise ClusterError(msg) from None
            log.warning(
                "evflow: %s; restarting from the last snapshot (%d of %d)",
                exc,
                attempt + 1,
                restarts,
            )
            continue
        result.restarts = attempt
        return result
    raise AssertionError  # pragma: no cover - the loop returns or raises


def check_addresses(addresses: list[str], *, allow_remote: bool = False) -> list[str]:
    """Check cluster addresses (``host:port``): loopback only, unless allowed.

    >>> check_addresses(["127.0.0.1:2101", "localhost:2102"])
    ['127.0.0.1:2101', 'localhost:2102']
    """
    checked: list[str] = []
    for address in addresses:
        host, port = split_address(address)
        if not allow_remote and not is_loopback(host):
            msg = (
                f"cluster address {address!r} is not on loopback (host {host!r} is not a "
                f"loopback address, or a name all of whose addresses are loopback). Traffic "
                f"between the processes of a cluster is unauthenticated and unencrypted "
                f"(pickled records); keep it on a private network and pass --allow-remote "
                f"(or allow_remote=True) to use other addresses."
            )
            raise OptionError(msg)
        here = f"{host}:{port}"
        if here in checked:
            msg = (
                f"cluster address {here!r} is given twice (processes {checked.index(here)} and "
                f"{len(checked)}): each member listens on an address of its own. Hint: "
                f"--addresses 127.0.0.1:2101,127.0.0.1:2102."
            )
            raise OptionError(msg)
        checked.append(here)
    return checked


def run_member(
    pipeline: Pipeline,
    workers: int,
    addresses: list[str],
    process_id: int,
    *,
    allow_remote: bool = False,
    recovery: Recovery | None = None,
    metrics: Metrics | None = None,
    formation_timeout: float = 30.0,
) -> RunResult:
    """Run this process's share of a cluster that other processes (or hosts) join.

    Every member runs the same pipeline with the same ``addresses``; each
    returns the counts and outputs of its own share. Before the engine starts,
    the members tell member 0 what they are about to run (`agree`): a member
    that would run another pipeline, another worker count, other addresses
    or other recovery options stops them all with an error saying how it
    differs. A member whose cluster has not formed within
    ``formation_timeout`` seconds (for that, then again for the engine's own
    forming) stops with an error.
    """
    addresses = check_addresses(addresses, allow_remote=allow_remote)
    if not 0 <= process_id < len(addresses):
        msg = (
            f"process id {process_id} is not in 0..{len(addresses) - 1} for "
            f"{len(addresses)} addresses."
        )
        raise OptionError(msg)
    seconds_option("formation_timeout", formation_timeout)
    check(pipeline)
    started = time.perf_counter()
    # Before anything is written: every member must be about to run the same.
    agree(
        fingerprint(pipeline, workers, addresses, recovery),
        addresses,
        process_id,
        formation_timeout,
    )
    with contextlib.nullcontext(True) if recovery is None else recovery.held(process_id) as fresh:
        if process_id == 0 and fresh:
            # No record flows before every member has joined, member 0 included.
            truncate_files(pipeline)
        # On a process of its own, as with -p: this one keeps the formation
        # timeout and stops it on Ctrl-C or SIGTERM whatever the engine does.
        try:
            [outcome] = _run_members(
                pipeline,
                workers,
                addresses,
                [process_id],
                formation_timeout,
                recovery,
                metrics,
            )
        except Interrupted as stop:
            if stop.result is not None:
                stop.result.member = process_id
            raise
        except Exception as exc:
            if not _lost_peer(exc):
                raise
            msg = (
                f"cluster member {process_id} of pipeline {pipeline.name!r} lost another "
                f"member (it stopped, was killed or could no longer be reached; the engine: "
                f"{exc}), and a cluster cannot go on without one of its members, so this "
                f"one stopped too. Hint: the other members' output says why; "
                + (
                    "start every member again to resume from the last snapshot."
                    if recovery is not None
                    else "a run with --recovery would resume from its last snapshot."
                )
            )
            raise ClusterError(msg) from None
    result = result_of(pipeline, [outcome], workers, len(addresses), time.perf_counter() - started)
    result.member = process_id
    return result
