"""Types flow through the chain: mypy accepts a correct pipeline and rejects a wrong one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOOD = """
from typing import Literal
from pipelines import Event, Pipeline, Stream, KeyedStream, sinks, sources

class Buy(Event):
    type: Literal["buy"] = "buy"
    user: str
    amount: float

start: Stream[Buy] = Pipeline("t").read(sources.memory([Buy(user="a", amount=1.0)]))
amounts: Stream[float] = start.map(lambda e: e.amount)
doubled: Stream[float] = amounts.map(lambda a: a * 2)
words: Stream[str] = start.flat_map(lambda e: [e.user, e.type])
keyed: KeyedStream[Buy] = start.key_by(lambda e: e.user)
only: Stream[Buy] = Pipeline("t").read(sources.memory([])).filter(Buy)
routes = start.forward(big=lambda e: e.amount > 10, otherwise="rest")
big: Stream[Buy] = routes.big
from_file: Stream[Buy] = Pipeline("t").read(sources.jsonl("buys.jsonl", schema=Buy))
total: Stream[float] = from_file.map(lambda t: t.amount * 2)
numbers: Stream[int] = Pipeline("t").read(sources.memory(range(3)))

class Visit(Event):
    type: Literal["visit"] = "visit"
    user: str

both: Stream[Buy | Visit] = Pipeline("t").read(sources.jsonl("x.jsonl", schema=(Buy, Visit)))
users: Stream[str] = both.map(lambda e: e.user)
buys: Stream[Buy] = both.filter(Buy)
visits = Pipeline("t").read(sources.jsonl("v.jsonl", schema=Visit))
merged: Stream[Buy | Visit] = start.merge(visits)
merged_users: Stream[str] = merged.map(lambda e: e.user)
same: Stream[Buy] = start.merge(routes.big)

class Receipt(Event):
    user: str
    total: float

receipts: Stream[Receipt] = start.dispatch(
    {Buy: lambda b: Receipt(user=b.user, total=b.amount)}, out=Receipt
)
totals: Stream[float] = receipts.map(lambda r: r.total)

# Broker, generated and bytewax sources are typed by their schema (or factory) too.
from_redis: Stream[Buy] = Pipeline("t").read(
    sources.redis("redis://h", "s", schema=Buy, until=None, group="g", poll=0.1)
)
from_nats: Stream[Buy | Visit] = Pipeline("t").read(
    sources.nats("nats://h", ["a", "b"], schema=(Buy, Visit), start="end")
)
made: Stream[dict[str, int]] = Pipeline("t").read(
    sources.generate(lambda rng, i: {"n": i}, count=None, rate=5.0, seed=1)
)
parsed: Stream[Buy] = Pipeline("t").read(
    sources.generate(lambda rng, i: {"user": "a", "amount": i}, count=3, schema=Buy)
)
from_bytewax: Stream[Buy] = Pipeline("t").read(
    sources.bytewax(object(), schema=Buy, value=lambda m: m, name="k")
)
untyped = Pipeline("t").read(sources.redis("redis://h", "s")).map(lambda r: r.anything)
"""

RESULTS = """
from operators import agg, windows
from pipelines import Event, Pipeline, Stream, WindowResult, sinks, sources

class Buy(Event):
    user: str
    amount: float

class Totals(WindowResult):
    n: int = 0
    revenue: float = 0.0

keyed = Pipeline("t").read(sources.memory([Buy(user="a", amount=1.0)])).key_by(lambda b: b.user)
totals: Stream[Totals] = keyed.window(windows.tumbling(seconds=60)).aggregate(
    into=Totals, n=agg.count(), revenue=agg.sum("amount")
)
revenue: Stream[float] = totals.map(lambda w: w.revenue)
"""

JOINS = """
from datetime import timedelta
from operators import Context, Timer, windows
from pipelines import Event, Joined, Pipeline, Stream, sources

class Order(Event):
    customer: str
    amount: float

class Customer(Event):
    customer: str
    tier: str

p = Pipeline("t")
orders = p.read(sources.memory([], schema=Order), name="o").key_by(lambda o: o.customer)
customers = p.read(sources.memory([], schema=Customer), name="c").key_by(lambda c: c.customer)
pairs: Stream[Joined[Order, Customer]] = orders.join(customers, between=(0, 60))
tiers: Stream[str] = orders.join(
    customers.as_table(), select=lambda o, c: c.tier if c is not None else "none"
)
amounts: Stream[float] = orders.join(
    customers, window=windows.tumbling(seconds=60), select=lambda o, c: o.amount
)
left: Stream[float] = pairs.map(lambda j: j.left.amount if j.left is not None else 0.0)

def count(n: int, o: Order, ctx: Context[str]) -> int:
    ctx.emit(o.customer)
    ctx.timer(ctx.time + timedelta(seconds=5))
    return n + 1

def fire(n: int, t: Timer, ctx: Context[str]) -> int | None:
    ctx.emit(t.key)
    return None

names: Stream[str] = orders.process(count, initial=int, on_timer=fire)
"""

WRONG = {
    # a typo in a field of a typed source's events
    "field": (
        """
from pipelines import Event, Pipeline, sources

class Txn(Event):
    amount: float

Pipeline("t").read(sources.jsonl("t.jsonl", schema=Txn)).map(lambda t: t.amout)
""",
        '"Txn" has no attribute "amout"',
    ),
    # a typo in a field of a broker's, or a generator's, events
    "broker": (
        """
from pipelines import Event, Pipeline, sources

class Ping(Event):
    host: str

Pipeline("t").read(sources.redis("redis://h", "s", schema=Ping, poll=1.0)).map(lambda p: p.hots)
Pipeline("t").read(sources.nats("nats://h", "s", schema=Ping)).map(lambda p: p.hst)
Pipeline("t").read(sources.generate(lambda r, i: Ping(host="a"), count=1)).map(lambda p: p.hot)
""",
        '"Ping" has no attribute "hots"',
    ),
    "broker_nats": ("", '"Ping" has no attribute "hst"'),
    "generated": ("", '"Ping" has no attribute "hot"'),
    # a field that only one class of a (tuple) union has
    "union": (
        """
from pipelines import Event, Pipeline, sources

class Sale(Event):
    amount: float

class Look(Event):
    page: str

Pipeline("t").read(sources.memory([], schema=(Sale, Look))).map(lambda e: e.amount)
""",
        'Item "Look" of "Sale | Look" has no attribute "amount"',
    ),
    # a typo in a field of a typed result
    "result": (
        RESULTS + "typo = totals.map(lambda w: w.totl)\n",
        '"Totals" has no attribute "totl"',
    ),
    # the other side of a join is typed: its fields are checked
    "join": (
        JOINS + "wrong = orders.join(customers, between=(0, 1), select=lambda o, c: c.teir)\n",
        '"Customer" has no attribute "teir"',
    ),
    # a process step's output type is its context's (after the join's code above)
    "process": (
        "wrong_names: Stream[int] = orders.process(count, initial=int)\n",
        'Argument 1 to "process" of "KeyedStream" has incompatible type',
    ),
    # dispatch with out= gives typed results
    "dispatch": (
        GOOD + "typo_total = receipts.map(lambda r: r.totl)\n",
        '"Receipt" has no attribute "totl"',
    ),
    # a merged stream holds both classes: a field only one has is an error
    "merge": (
        "amounts_of_both = merged.map(lambda e: e.amount)\n",
        'Item "Visit" of "Buy | Visit" has no attribute "amount"',
    ),
    # window before key_by: only a keyed stream has windows
    "order": (
        """
from operators import windows
from pipelines import Pipeline, sources

Pipeline("t").read(sources.memory([1])).window(windows.tumbling(seconds=1))
""",
        'has no attribute "window"',
    ),
    # a key that is not a string
    "key": (
        """
from pipelines import Pipeline, sources

Pipeline("t").read(sources.memory([1])).key_by(lambda x: x + 1)
""",
        "Incompatible return value type",
    ),
}

BAD = """
from pipelines import Pipeline, Stream, sources

start: Stream[int] = Pipeline("t").read(sources.memory([1]))
names: Stream[int] = start.map(lambda n: str(n))
"""


def mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "example.py"
    path.write_text(code)
    # Outside the repository, as a user's project: mypy finds the installed
    # packages through the install's .pth file.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_types_flow_through_the_chain(tmp_path: Path) -> None:
    good = mypy(tmp_path, GOOD)
    assert good.returncode == 0, good.stdout
    bad = mypy(tmp_path, BAD)
    assert bad.returncode == 1
    assert 'Incompatible return value type (got "str", expected "int")' in bad.stdout


def test_typed_sources_results_and_wrong_steps(tmp_path: Path) -> None:
    good = mypy(tmp_path, RESULTS + JOINS)
    assert good.returncode == 0, good.stdout
    # All the wrong uses in one file (one mypy run): each must be reported.
    bad = mypy(tmp_path, "\n".join(code for code, _ in WRONG.values()))
    assert bad.returncode == 1
    for what, (_, expected) in WRONG.items():
        assert expected in bad.stdout, (what, bad.stdout)


def test_into_must_hold_every_aggregator() -> None:
    import pytest

    from operators import agg, windows
    from pipelines import Pipeline, WindowResult, sources

    class Partial(WindowResult):
        n: int = 0

    class Extra(WindowResult):
        n: int = 0
        owner: str

    keyed = Pipeline("t").read(sources.memory([1])).key_by(lambda x: str(x))
    window = keyed.window(windows.tumbling(seconds=1), clock=windows.processing_time())
    with pytest.raises(ValueError, match=r"Partial has no field for \['total'\]"):
        window.aggregate(into=Partial, n=agg.count(), total=agg.sum("x"))
    with pytest.raises(ValueError, match=r"fields \['owner'\] are filled by no aggregator"):
        window.aggregate(into=Extra, n=agg.count())
    with pytest.raises(TypeError, match="must be a subclass of WindowResult"):
        window.aggregate(into=int, n=agg.count())  # type: ignore[type-var]


def test_pyright_sees_the_installed_packages_and_the_same_types(tmp_path: Path) -> None:
    # pyright, as a user's editor runs it, outside the repository.
    (tmp_path / "pyrightconfig.json").write_text('{"typeCheckingMode": "standard"}')
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "results.py").write_text(RESULTS + JOINS)
    (tmp_path / "bad.py").write_text(WRONG["field"][0])
    done = subprocess.run(
        [
            sys.executable, "-m", "basedpyright", "--pythonpath", sys.executable,
            "good.py", "results.py", "bad.py",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "good.py" not in done.stdout and "results.py:" not in done.stdout, done.stdout
    assert 'Cannot access attribute "amout" for class "Txn"' in done.stdout, done.stdout
    assert done.returncode == 1
