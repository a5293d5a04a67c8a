"""The recovery store: snapshots checked by their opcodes, owners and modes, links."""

from __future__ import annotations

import contextlib
import enum
import io
import ipaddress
import os
import pathlib
import pickle
import pstats
import sqlite3
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, HttpUrl, SecretStr

from pipelines import Event, Pipeline, StateNotSavable, sinks, sources
from pipelines._running.store import SAFE_GLOBALS, UnsafeSnapshotError, check_snapshot

# Names a hostile snapshot would reach for, written every way a pickle can.
DANGEROUS = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("subprocess", "Popen"),
    ("operators._sources", "os.system"),  # an attribute path under evflow's own module
    ("operators._sources", "os"),
    ("operators", "_sources"),
    ("pipelines._running.store", "os.system"),
    ("datetime", "datetime.__reduce__"),
    ("copyreg", "__builtins__"),
]
ALLOWED = sorted(SAFE_GLOBALS)


def _text(s: str, how: str) -> bytes:
    """Push the string ``s`` with opcode family ``how``."""
    raw = s.encode()
    if how == "short":
        return b"\x8c" + bytes([len(raw)]) + raw
    if how == "binunicode":
        return b"X" + struct.pack("<I", len(raw)) + raw
    if how == "binunicode8":
        return b"\x8d" + struct.pack("<Q", len(raw)) + raw
    if how == "unicode":
        return b"V" + raw + b"\n"
    if how == "binstring":
        return b"T" + struct.pack("<i", len(raw)) + raw
    return b"S" + repr(s).encode() + b"\n"


# Ways to call (or build with) the global on the stack.
CALLS = {
    "none": b"",
    "reduce": b")R",  # EMPTY_TUPLE, REDUCE
    "obj": b"",  # handled in payload(): MARK, global, OBJ
    "newobj": b")\x81",  # EMPTY_TUPLE, NEWOBJ
    "newobj_ex": b")}\x92",  # EMPTY_TUPLE, EMPTY_DICT, NEWOBJ_EX
    "build": b")R}b",  # REDUCE, then BUILD with a state dict
}


def payload(
    module: str, name: str, form: str, how: str, call: bool | str, protocol: int = 4
) -> bytes:
    """A pickle whose one global is ``module.name``, named with opcode ``form``."""
    kind = ("reduce" if call else "none") if isinstance(call, bool) else call
    head = b"\x80" + bytes([max(protocol, 4)]) if form.startswith("stack") else b""
    if not form.startswith("stack") and protocol >= 2:
        head = b"\x80" + bytes([protocol])
    if form == "global":
        body = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    elif form == "inst":
        return b"(i" + module.encode() + b"\n" + name.encode() + b"\n."
    elif form == "stack":
        body = _text(module, how) + _text(name, how) + b"\x93"
    elif form == "stack_memo":  # the names put in the memo, fetched back, then used
        body = (
            _text(module, how)
            + b"\x94"  # MEMOIZE 0
            + _text(name, how)
            + b"r\x07\x00\x00\x00"  # LONG_BINPUT 7
            + b"0"  # POP
            + b"0"  # POP
            + b"h\x00"  # BINGET 0
            + b"j\x07\x00\x00\x00"  # LONG_BINGET 7
            + b"\x93"
        )
    elif form == "stack_put":  # text PUT / GET
        body = _text(module, how) + b"p1\n0" + _text(name, how) + b"p2\n0g1\ng2\n\x93"
    else:
        raise AssertionError(form)
    if kind == "obj":
        return head + b"(" + body + b"o."
    return head + body + CALLS[kind] + b"."


FORMS = ["global", "inst", "stack", "stack_memo", "stack_put"]
HOWS = ["short", "binunicode", "binunicode8", "unicode", "binstring", "string"]


class Recorder(pickle.Unpickler):
    """Load a pickle, recording every global it asks for and allowing none unknown."""

    def __init__(self, blob: bytes) -> None:
        super().__init__(io.BytesIO(blob))
        self.asked: list[tuple[str, str]] = []

    def find_class(self, module: str, name: str) -> Any:
        self.asked.append((module, name))
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent id")


@given(
    target=st.sampled_from(DANGEROUS),
    form=st.sampled_from(FORMS),
    how=st.sampled_from(HOWS),
    call=st.sampled_from(sorted(CALLS)),
    protocol=st.integers(0, 5),
)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_way_of_naming_a_dangerous_global_is_refused(
    target: tuple[str, str], form: str, how: str, call: str, protocol: int
) -> None:
    blob = payload(*target, form, how, call, protocol)
    recorder = Recorder(blob)  # a real unpickler would ask for the target (refused here)
    with contextlib.suppress(Exception):
        recorder.load()
    assert target in recorder.asked
    refused = check_snapshot(blob)
    assert refused is not None, (target, form, how)
    assert ".".join(target) in refused or "computed" in refused or "damaged" in refused


@given(
    target=st.sampled_from(ALLOWED),
    form=st.sampled_from(FORMS),
    how=st.sampled_from(HOWS),
)
@settings(max_examples=200, deadline=None)
def test_allowed_globals_pass_however_they_are_named(
    target: tuple[str, str], form: str, how: str
) -> None:
    blob = payload(*target, form, how, call=False)
    assert check_snapshot(blob) is None, (target, form, how)
    recorder = Recorder(blob)
    with contextlib.suppress(TypeError):  # INST calls the class with no arguments
        recorder.load()
    assert recorder.asked == [target]  # the checker read the name the loader uses


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("target", [print, os.system, eval, getattr, pickle.loads])
def test_pickles_of_callables_are_refused_at_every_protocol(protocol: int, target: Any) -> None:
    blob = pickle.dumps({"wins": [1, target]}, protocol=protocol)
    refused = check_snapshot(blob)
    assert refused is not None and "which is not evflow state" in refused


@pytest.mark.parametrize("opcode", [b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00"])
def test_extension_codes_and_persistent_ids_are_refused(opcode: bytes) -> None:
    assert check_snapshot(
        b"\x80\x02" + opcode + b"."
    ) == "refers to an extension-registry code (EXT" + (
        {1: "1", 2: "2", 4: "4"}[len(opcode) - 1] + ")"
    )
    assert check_snapshot(b"Pabc\n.") == "refers to a persistent id (PERSID)"
    assert check_snapshot(b"\x80\x02K\x01Q.") == "refers to a persistent id (BINPERSID)"


def test_a_global_whose_name_is_computed_is_refused() -> None:
    # The module name is the result of a call, not a string written out.
    blob = b"\x80\x04\x8c\x08builtinsK\x01\x85R\x8c\x06system\x93."
    assert check_snapshot(blob) == (
        "refers to a global whose name is computed, not written out (STACK_GLOBAL)"
    )


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_pass_with_a_global_outside_the_list(blob: bytes) -> None:
    # Whatever the checker accepts, loading asks only for allowed globals.
    if check_snapshot(blob) is None:
        recorder = Recorder(blob)
        with contextlib.suppress(Exception):  # a damaged pickle may fail to load
            recorder.load()
        assert set(recorder.asked) <= SAFE_GLOBALS


def test_real_snapshots_of_every_state_kind_pass(tmp_path: Path) -> None:
    # Windows of each kind, every built-in aggregator, running aggregates and
    # keyed dispatch state, with the events themselves kept (collect, last).
    from datetime import datetime, timedelta, timezone

    from operators import agg, windows
    from pipelines import PipelineHalted, stateful
    from pipelines._running.store import check_store
    from tests.helpers import Purchase

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    # As JSON text: times parsed by pydantic carry its own timezone class.
    buys = [
        Purchase(user=f"u{i % 5}", amount=i % 17, time=t0 + timedelta(seconds=i)).model_dump_json()
        for i in range(3_000)
    ]

    def stop(e: Purchase) -> Purchase:
        if e.amount == 16 and e.time > t0 + timedelta(seconds=2_900):
            raise RuntimeError("stop")
        return e

    def tally(state: list[float], e: Purchase) -> tuple[list[float], None]:
        return [*state, e.amount], None

    stream = (
        Pipeline("kinds")
        .read(sources.memory(buys, schema=Purchase, batch_size=10))
        .map(stop, on_error="halt")
    )
    keyed = stream.key_by(lambda e: e.user)
    aggs = {
        "n": agg.count(),
        "s": agg.sum("amount"),
        "m": agg.mean("amount"),
        "lo": agg.min("amount"),
        "hi": agg.max("amount"),
        "f": agg.first("amount"),
        "l": agg.last(),
        "d": agg.count_distinct("amount"),
        "t": agg.top_k("amount", 3),
        "q": agg.quantile("amount", 0.5),
        "c": agg.collect(),
    }
    p = stream.write(sinks.memory("all"))
    kinds = [
        windows.tumbling(seconds=500),
        windows.sliding(seconds=500, every=100),
        windows.session(gap=50),
        windows.count(400),
    ]
    for i, window in enumerate(kinds):
        p = p | keyed.window(window).aggregate(name=f"w{i}", **aggs).write(sinks.memory(f"w{i}"))
    p = p | keyed.aggregate(emit="running", name="running", **aggs).write(sinks.memory("r"))
    p = p | keyed.dispatch({Purchase: stateful(tally, initial=list)}).write(sinks.memory("d"))
    # Joins and process steps hold the events themselves, and timers.
    other = stream.key_by(lambda e: e.user, name="other_key")
    p = p | keyed.join(other, window=windows.tumbling(seconds=300), name="wj").write(
        sinks.memory("wj")
    )
    p = p | keyed.join(other, between=(0, 200), name="ij").write(sinks.memory("ij"))
    p = p | keyed.join(other.as_table(ttl=100), name="tj").write(sinks.memory("tj"))

    def hold(state: list[Any], e: Purchase, ctx: Any) -> list[Any]:
        ctx.timer(ctx.time + timedelta(seconds=30))
        return [*state[-3:], e]

    p = p | keyed.process(hold, initial=list, name="proc").write(sinks.memory("proc"))
    with pytest.raises(PipelineHalted):
        p.run(recovery=tmp_path / "store", snapshot_interval=0.001)
    assert check_store(tmp_path / "store") > 10


class Address(BaseModel):
    city: str


class Order(Event):
    address: Address


class Visit(Event):
    visitor: uuid.UUID
    ip: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address
    page: pathlib.PurePosixPath
    url: HttpUrl
    token: SecretStr


class Restored(BaseModel):
    n: int = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)


@dataclass
class Seen:
    n: int = 0
    last: datetime | None = None


@dataclass(frozen=True)
class Frozen:
    x: int


class Pair(NamedTuple):
    a: int
    b: str


class Color(enum.Enum):
    RED = 1


@dataclass
class Hooked:
    n: int = 0

    def __post_init__(self) -> None:
        self.n += 1  # code a hostile snapshot could make run


@dataclass
class Restoring:
    n: int = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class Plain:
    def __init__(self) -> None:
        self.n = 0


class Lookup(enum.Enum):
    A = 1

    @classmethod
    def _missing_(cls, value: object) -> Lookup:
        return cls.A


@pytest.mark.parametrize("protocol", range(3, pickle.HIGHEST_PROTOCOL + 1))
def test_the_programs_own_plain_data_classes_pass_and_load(protocol: int) -> None:
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    order = Order(address=Address(city="Boise"), time=at)
    visit = Visit.model_validate(
        {
            "visitor": "12345678-1234-5678-1234-567812345678",
            "ip": "10.0.0.1",
            "ip6": "::1",
            "page": "/a/b",
            "url": "https://example.org/x",
            "token": "s",
            "time": at,
        }
    )
    state = {"states": {"k": [Seen(1, at), Frozen(2), Pair(3, "x"), Color.RED, order, visit]}}
    blob = pickle.dumps(state, protocol=protocol)
    assert check_snapshot(blob) is None
    assert pickle.loads(blob) == state


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (Hooked(), "of this program, which is not plain data"),
        (Restoring(), "of this program, which is not plain data"),
        (Plain(), "of this program, which is not plain data"),
        (Lookup.A, "of this program, which is not plain data"),
        (Restored(), "of this program, which is not plain data"),
        (pstats.FunctionProfile(0, 0.0, 0.0, 0.0, 0.0, "f", 1), "which is not evflow state"),
    ],
)
def test_classes_that_unpickling_would_run_or_that_are_not_the_programs_are_refused(
    value: Any, says: str
) -> None:
    refused = check_snapshot(pickle.dumps({"states": {"k": value}}))
    cls = type(value)
    assert refused is not None and f"{cls.__module__}.{cls.__qualname__}" in refused
    assert says in refused


def test_state_that_cannot_be_pickled_is_named_with_its_step() -> None:
    import threading

    from operators._pickles import check_state

    with pytest.raises(
        StateNotSavable,
        match=r"step 'keep' keeps state that cannot be "
        r"snapshotted \(TypeError: cannot pickle '_thread.lock' object\)\. Hint",
    ):
        check_state("keep", {"states": {"k": {"lock": threading.Lock()}}})


def test_state_a_resume_would_refuse_stops_the_run_at_its_first_snapshot(tmp_path: Path) -> None:
    from datetime import timedelta

    from tests.helpers import Purchase

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def make(rng: Any, i: int) -> Purchase:
        return Purchase(user=f"u{i % 3}", amount=i, time=t0 + timedelta(seconds=i))

    def keep(state: Any, e: Purchase, ctx: Any) -> Plain:
        return Plain()

    stream = (
        Pipeline("plain")
        .read(sources.generate(make, count=40, batch_size=1, rate=40))
        .key_by(lambda e: e.user)
        .process(keep, initial=Plain, name="keep")
    )
    with pytest.raises(StateNotSavable) as raised:
        stream.write(sinks.memory("o")).run(recovery=tmp_path / "s", snapshot_interval=0.1)
    said = str(raised.value)
    assert "step 'keep' keeps state that a resume would refuse" in said
    assert "tests.pipelines.test_store.Plain' of this program" in said and "Hint" in said


def _tamper(store: Path, blob: bytes) -> None:
    part = next(store.glob("*.sqlite3"))
    with sqlite3.connect(part) as db:
        db.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
            "VALUES ('t.read_memory', 'part0', 99, ?)",
            (blob,),
        )


@pytest.mark.parametrize("form", FORMS)
def test_a_snapshot_naming_os_system_under_evflows_module_runs_nothing(
    tmp_path: Path, form: str
) -> None:
    store = tmp_path / "store"
    p = Pipeline("t").read(sources.memory(range(10))).write(sinks.memory("o"))
    p.run(recovery=store)
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    blob = payload("operators._sources", "os.system", form, "short", call=False)
    # Call it with the command: ( <global> command TUPLE1 REDUCE )
    blob = blob[:-1] + _text(command, "short") + b"\x85R."
    _tamper(store, blob)
    with pytest.raises(UnsafeSnapshotError, match=r"'operators\._sources\.os\.system'"):
        p.run(recovery=store)
    assert not marker.exists()


def test_a_store_file_others_can_write_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    p = Pipeline("t").read(sources.memory([1])).write(sinks.memory("o"))
    p.run(recovery=store)
    part = next(store.glob("*.sqlite3"))
    part.chmod(0o666)
    with pytest.raises(
        UnsafeSnapshotError,
        match=rf"recovery store file '{part}' can be written by other users "
        rf"\(mode -rw-rw-rw-\).*Hint: chmod go-w {part}",
    ):
        p.run(recovery=store)
    part.chmod(0o600)
    assert p.run(recovery=store).reconciles  # resumed at the end: nothing left to read


def test_a_link_in_the_store_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    p = Pipeline("t").read(sources.memory([1])).write(sinks.memory("o"))
    p.run(recovery=store)
    elsewhere = tmp_path / "elsewhere.sqlite3"
    elsewhere.write_bytes(b"")
    (store / "part-1.sqlite3").symlink_to(elsewhere)
    with pytest.raises(UnsafeSnapshotError, match=r"part-1.sqlite3' is a symbolic link"):
        p.run(recovery=store)


def test_a_store_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    p = Pipeline("t").read(sources.memory([1])).write(sinks.memory("o"))
    p.run(recovery=store)
    owner = store.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # as another user sees it
    with pytest.raises(
        UnsafeSnapshotError,
        match=rf"recovery directory '{store}' belongs to user id {owner}, not to you "
        rf"\({owner + 1}\).*chown -R \$USER {store}",
    ):
        p.run(recovery=store)


def _halted_store(tmp_path: Path) -> tuple[Pipeline, Path]:
    from datetime import datetime, timedelta, timezone

    from operators import agg, windows
    from pipelines import PipelineHalted
    from tests.helpers import Purchase

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    buys = [
        Purchase(user=f"u{i % 3}", amount=i, time=t0 + timedelta(seconds=i)) for i in range(2_000)
    ]

    def stop(e: Purchase) -> Purchase:
        if e.amount == 1_900:
            raise RuntimeError("stop")
        return e

    p = (
        Pipeline("damaged")
        .read(sources.memory(buys, schema=Purchase, batch_size=10))
        .map(stop, on_error="halt")
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=100))
        .aggregate(n=agg.count())
        .write(sinks.jsonl(tmp_path / "w.jsonl"))
    )
    store = tmp_path / "store"
    with pytest.raises(PipelineHalted):
        p.run(recovery=store, snapshot_interval=0.001)
    return p, store


@pytest.mark.parametrize(
    "step",
    ["damaged.read_memory", "damaged.aggregate_tumbling_100s_n", "damaged.jsonl_w_exact"],
)
def test_a_snapshot_of_the_wrong_shape_gives_one_message(tmp_path: Path, step: str) -> None:
    from pipelines import ResumeError

    p, store = _halted_store(tmp_path)
    part = next(store.glob("*.sqlite3"))
    with sqlite3.connect(part) as db:
        changed = db.execute(
            "UPDATE snaps SET ser_change = ? WHERE step_id = ? AND ser_change IS NOT NULL",
            (pickle.dumps("not a state"), step),
        ).rowcount
    assert changed > 0
    name = step.split(".")[1]
    with pytest.raises(
        ResumeError,
        match=rf"recovery store '{store}' \(part-0.sqlite3\): step '{name}'.* cannot resume "
        r"from its snapshot \(.*\): the recovery store is damaged, or was written by another "
        r"pipeline.*Hint: remove the store and the outputs written with it to start over",
    ):
        p.run(recovery=store)


def test_flipped_bytes_in_a_snapshot_give_one_message(tmp_path: Path) -> None:
    p, store = _halted_store(tmp_path)
    part = next(store.glob("*.sqlite3"))
    with sqlite3.connect(part) as db:
        step, key, epoch, blob = db.execute(
            "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps "
            "WHERE step_id LIKE '%aggregate%' AND ser_change IS NOT NULL"
        ).fetchone()
        db.execute(
            "UPDATE snaps SET ser_change = ? "
            "WHERE step_id = ? AND state_key = ? AND snap_epoch = ?",
            (blob[: len(blob) // 2], step, key, epoch),
        )
    with pytest.raises(
        UnsafeSnapshotError,
        match=rf"recovery store '{store}' \(part-0.sqlite3\) holds a snapshot of step "
        rf"'{step}' \(key '{key}'\) that is damaged \(.*\).*Hint: remove the store",
    ):
        p.run(recovery=store)


def test_resuming_from_another_directory_says_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines import PipelineHalted, ResumeError

    def pipeline(fail: bool) -> Pipeline:
        def stop(x: int) -> int:
            if fail and x == 15_000:
                raise RuntimeError("stop")
            return x

        return (
            Pipeline("rel")
            .read(sources.memory(range(20_000), batch_size=100))
            .map(stop, on_error="halt")
            .write(sinks.jsonl("out.jsonl"))  # relative to the working directory
        )

    store = tmp_path / "store"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    with pytest.raises(PipelineHalted):
        pipeline(True).run(recovery=store, snapshot_interval=0.001)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(
        ResumeError,
        match=rf"holds the state of step 'jsonl_out_exact' for partition\(s\) "
        rf"\['{tmp_path}/a/out.jsonl'\], which this run does not have \(it has "
        rf"\['{tmp_path}/b/out.jsonl'\]\).*started from another directory",
    ):
        pipeline(False).run(recovery=store)
    monkeypatch.chdir(tmp_path / "a")
    pipeline(False).run(recovery=store)
    written = [int(line) for line in (tmp_path / "a" / "out.jsonl").read_text().splitlines()]
    assert sorted(written) == list(range(20_000))


def test_durable_states_come_from_a_helper_that_checks_and_can_be_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import time

    from operators._sources import record_digest
    from pipelines._running import store as store_module
    from pipelines._running.store import DurableStates

    store = tmp_path / "store"
    p = Pipeline("t").read(sources.memory(range(10), batch_size=3)).write(sinks.memory("o"))
    p.run(recovery=store)
    states = DurableStates(store)
    try:
        # The position a resume would start from: the source's end (10 of 0 to 10 read,
        # the last of them 9).
        assert states("t.read_memory", "part0") == (True, (10, 0, 10, record_digest(9)))
        assert states("t.read_memory", "no_such_part") == (False, None)
        # A snapshot that could run code is never unpickled here.
        blob = payload("operators._sources", "os.system", FORMS[0], "short", call=False)
        _tamper(store, blob[:-1] + _text("true", "short") + b"\x85R.")
        with sqlite3.connect(next(store.glob("*.sqlite3"))) as db:
            db.execute("UPDATE exs SET resume_epoch = 100")
        assert states("t.read_memory", "part0") == (False, None)
    finally:
        states.close()
    assert states.proc is None
    # A helper that does not answer is killed, and the answer is "nothing yet".
    monkeypatch.setattr(store_module, "ANSWER_WITHIN", 0.3)
    stuck = DurableStates(store)
    stuck.command = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = time.monotonic()
    assert stuck("t.read_memory", "part0") == (False, None)
    assert time.monotonic() - started < 10 and stuck.proc is None
