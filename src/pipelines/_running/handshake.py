"""The handshake of a cluster started by hand: its members agree before the engine starts.

Members started one by one (``evflow run ... --addresses A,B --process-id i``)
may run another version of the pipeline, another ``--workers`` or another list
of addresses. The engine then hangs (the dataflows wait for each other
forever) or stops with a bare panic. So before it starts, each member sends
member 0 what it is about to run: member 0 listens on its own address for
them, compares each with its own, closes its listener and answers every one
with the first difference or with its consent. A member only starts the engine
on consent, so the engine finds member 0's port free again. What is compared:
the evflow version, the pipeline's name, every step (its name, kind, inputs,
error policy, the functions it calls by name and line, its parameters), the
workers per process, the addresses and the recovery options.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import socket
import time
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from operators._stage import describe_function
from pipelines._running.net import split_address

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline
    from pipelines._running.run import Recovery

__all__ = ["ClusterError", "agree", "fingerprint"]

#: The handshake's own version: members of another one are told apart.
_VERSION = 1
#: The longest message read from a member (a pipeline of many steps fits).
_LIMIT = 4 << 20
#: How deep a member describes its steps' parameters, and how many items of a list.
_DEPTH = 4
_ITEMS = 100


class ClusterError(RuntimeError):
    """A process of the cluster died, or the cluster did not form."""


def _shape(value: Any, depth: int = 0) -> Any:
    """Describe ``value`` the same way in every process: no addresses in memory.

    >>> _shape({"n": 3, "f": len, "t": (1.5, None)})
    {'n': 3, 'f': '<len>', 't': [1.5, None]}
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth >= _DEPTH:
        return type(value).__qualname__
    if isinstance(value, type):
        name = f"{value.__module__}.{value.__qualname__}"
        if issubclass(value, BaseModel):
            return [name, sorted(value.model_fields)]
        return name
    if isinstance(value, list | tuple):
        shown = [_shape(v, depth + 1) for v in value[:_ITEMS]]
        return shown if len(value) <= _ITEMS else [*shown, f"{len(value)} in all"]
    if isinstance(value, set | frozenset):
        return sorted((_shape(v, depth + 1) for v in value), key=repr)
    if isinstance(value, Mapping):
        return {str(_shape(k, depth + 1)): _shape(v, depth + 1) for k, v in value.items()}
    if inspect.isroutine(value) or hasattr(value, "__code__"):
        return describe_function(value)
    label = getattr(value, "label", None)
    if isinstance(label, str):  # sources, sinks, windows: not the records they hold
        return [type(value).__qualname__, label]
    fn = getattr(value, "fn", None)
    if inspect.isroutine(fn):  # a stateful handler: the function it calls
        return [type(value).__qualname__, describe_function(fn)]
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return [
            type(value).__qualname__,
            {f.name: _shape(getattr(value, f.name), depth + 1) for f in fields},
        ]
    return type(value).__qualname__


def _version() -> str:
    try:
        return metadata.version("evflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def fingerprint(
    pipeline: Pipeline, workers: int, addresses: list[str], recovery: Recovery | None
) -> dict[str, Any]:
    """Say what this member is about to run, in plain JSON data."""
    steps = [
        [
            node.name,
            node.kind,
            [str(port) for port in node.inputs],
            _shape(node.policy),
            None if node.fn is None else _shape(node.fn),
            _shape(dict(node.params)),
        ]
        for node in pipeline.graph
    ]
    return {
        "handshake": _VERSION,
        "evflow": _version(),
        "pipeline": pipeline.name,
        "workers": workers,
        "addresses": [a.strip() for a in addresses],
        "recovery": None if recovery is None else recovery.snapshot_interval,
        "steps": steps,
    }


def _step_text(step: list[Any]) -> str:
    text = f"{step[0]!r} ({step[1]}, after {', '.join(step[2]) or 'nothing'}"
    details = [json.dumps(part, sort_keys=True) for part in step[3:] if part]
    shown = "; ".join(details)
    if len(shown) > 300:
        shown = shown[:297] + "..."
    return f"{text}: {shown})" if shown else f"{text})"


def difference(ours: dict[str, Any], theirs: dict[str, Any], member: int) -> str | None:
    """Say how member ``member`` would run otherwise than member 0, or None.

    >>> a = {"handshake": 1, "evflow": "1", "pipeline": "p", "workers": 1, "addresses": [],
    ...      "recovery": None, "steps": [["read", "read", [], None, None, {}]]}
    >>> difference(a, {**a, "workers": 2}, 1)
    'process 1 runs 2 worker(s) per process, process 0 runs 1 worker(s) per process'
    >>> difference(a, a, 1) is None
    True
    """
    who = f"process {member}"
    if theirs.get("handshake") != ours["handshake"]:
        return f"{who} speaks handshake {theirs.get('handshake')!r}, process 0 speaks {_VERSION}"
    named = (
        ("evflow", "runs evflow {}"),
        ("pipeline", "runs pipeline {!r}"),
        ("workers", "runs {} worker(s) per process"),
        ("addresses", "was given the addresses {}"),
        ("recovery", "takes a snapshot every {} s (None: no recovery)"),
    )
    for key, text in named:
        if theirs.get(key) != ours[key]:
            return f"{who} {text.format(theirs.get(key))}, process 0 {text.format(ours[key])}"
    mine, other = ours["steps"], theirs.get("steps", [])
    for i, (a, b) in enumerate(zip(mine, other, strict=False)):
        if a != b:
            return (
                f"step {i + 1} of the pipeline is {_step_text(b)} on {who}, and "
                f"{_step_text(a)} on process 0"
            )
    if len(mine) != len(other):
        return f"{who}'s pipeline has {len(other)} steps, process 0's has {len(mine)}"
    return None


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive(conn: socket.socket) -> dict[str, Any]:
    """Read one message: a JSON object on one line; ValueError for anything else."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            msg = "the connection closed before a whole message came"
            raise ValueError(msg)
        data += chunk
        if len(data) > _LIMIT:
            msg = "a message longer than any member sends"
            raise ValueError(msg)
    message = json.loads(data)
    if not isinstance(message, dict):
        msg = "a message that is not a JSON object"
        raise ValueError(msg)
    return message


def _host(address: str) -> tuple[str, int, socket.AddressFamily]:
    host, port = split_address(address)
    if host.startswith("["):
        return host[1:-1], port, socket.AF_INET6
    return host, port, socket.AF_INET


def _hint(pipeline: str) -> str:
    return (
        f"Hint: start every member of pipeline {pipeline!r} from the same code, with the same "
        f"--workers, --addresses and --recovery options (only --process-id differs)."
    )


def agree(ours: dict[str, Any], addresses: list[str], process_id: int, timeout: float) -> None:
    """Have the members of a hand-started cluster agree on what they run, or raise.

    Raises `ClusterError` when a member runs otherwise than member 0 (every
    member is told the same), or when they have not all met within ``timeout``
    seconds.
    """
    if len(addresses) < 2:
        return
    deadline = time.monotonic() + timeout
    if process_id == 0:
        _lead(ours, addresses, deadline, timeout)
    else:
        _follow(ours, addresses, process_id, deadline, timeout)


def _lead(ours: dict[str, Any], addresses: list[str], deadline: float, timeout: float) -> None:
    host, port, family = _host(addresses[0])
    pipeline = ours["pipeline"]
    try:
        server = socket.create_server((host, port), family=family)
    except OSError as exc:
        msg = (
            f"cluster member 0 of pipeline {pipeline!r} cannot listen on {addresses[0]}: "
            f"{exc}. Hint: another member 0 may be running, or another program holds the port."
        )
        raise ClusterError(msg) from None
    members: dict[int, tuple[socket.socket, dict[str, Any]]] = {}
    verdict: str | None = None
    missing: list[int] = []
    try:
        with server:
            server.settimeout(0.1)
            while len(members) < len(addresses) - 1:
                if time.monotonic() > deadline:
                    missing = [i for i in range(1, len(addresses)) if i not in members]
                    break
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                _admit(conn, members, len(addresses), deadline)
            else:
                verdict = _verdict(ours, members)
        # The listener is closed: the engine takes the port once the others are told.
        for member, (conn, _) in members.items():
            told = (
                _not_joined(pipeline, member, addresses, missing, timeout) if missing else verdict
            )
            _answer(conn, told)
    finally:
        for conn, _ in members.values():
            conn.close()
    if missing:
        raise ClusterError(_not_joined(pipeline, 0, addresses, missing, timeout))
    if verdict is not None:
        raise ClusterError(verdict)


def _not_joined(
    pipeline: str, member: int, addresses: list[str], missing: list[int], timeout: float
) -> str:
    """Tell ``member`` that processes ``missing`` never came within ``timeout`` seconds."""
    others = [a for i, a in enumerate(addresses) if i != member]
    return (
        f"cluster member {member} of pipeline {pipeline!r} could not form its cluster within "
        f"{timeout:g} s: not every member at {', '.join(others)} joined (process(es) "
        f"{missing} never came); it was stopped. Hint: start every member with the same "
        f"--addresses, check that they can reach each other, or give them longer with "
        f"--formation-timeout."
    )


def _verdict(
    ours: dict[str, Any], members: dict[int, tuple[socket.socket, dict[str, Any]]]
) -> str | None:
    """Say how the first member that differs from member 0 differs, or None."""
    for member, (_, theirs) in sorted(members.items()):
        problem = difference(ours, theirs, member)
        if problem is not None:
            return (
                f"the members of the cluster of pipeline {ours['pipeline']!r} would not run "
                f"the same dataflow: {problem}. {_hint(ours['pipeline'])}"
            )
    return None


def _admit(
    conn: socket.socket,
    members: dict[int, tuple[socket.socket, dict[str, Any]]],
    size: int,
    deadline: float,
) -> None:
    """Take a member's message; turn away what is none, or a place already taken."""
    conn.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))  # members send at once
    try:
        theirs = _receive(conn)
    except (OSError, ValueError):
        conn.close()  # not a member of this cluster: not waited for
        return
    member = theirs.get("process")
    refusal = None
    if not isinstance(member, int) or not 0 < member < size:
        refusal = f"process id {member!r} is not in 1..{size - 1}"
    elif member in members:
        refusal = (
            f"another member already joined as process {member}. Hint: give each member its "
            f"own --process-id"
        )
    if refusal is not None or not isinstance(member, int):
        _answer(conn, f"cluster member 0 turned this member away: {refusal}.")
        conn.close()
        return
    members[member] = (conn, theirs)


def _answer(conn: socket.socket, verdict: str | None) -> None:
    """Tell a member the verdict, then wait for it to hang up first (the port stays free)."""
    try:
        _send(conn, {"agreed": verdict is None, "error": verdict})
        conn.settimeout(5.0)
        while conn.recv(4096):
            pass
    except OSError:
        pass  # a member that left finds its cluster gone when the engine starts


def _follow(
    ours: dict[str, Any], addresses: list[str], process_id: int, deadline: float, timeout: float
) -> None:
    host, port, family = _host(addresses[0])
    pipeline = ours["pipeline"]
    message = {**ours, "process": process_id}
    while True:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as conn:
                conn.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
                conn.connect((host, port))
                # Member 0 answers by its own deadline, at most ``timeout`` from now.
                conn.settimeout(timeout + 5.0)
                _send(conn, message)
                answer = _receive(conn)
            break
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                msg = (
                    f"cluster member {process_id} of pipeline {pipeline!r} could not form its "
                    f"cluster within {timeout:g} s: member 0 at {addresses[0]} did not answer. "
                    f"Hint: start every member with the same --addresses, check that they can "
                    f"reach each other, or give them longer with --formation-timeout."
                )
                raise ClusterError(msg) from None
            time.sleep(0.05)
    if not answer.get("agreed"):
        raise ClusterError(str(answer.get("error")))
