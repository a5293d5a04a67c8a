"""Write the notebooks from the cells below and execute them (outputs kept).

Run from the repository root after the README's test command:
``.venv/bin/python notebooks/build.py``. The test suite executes the written
notebooks again (tests/test_notebooks.py); edit the cells here, not the
``.ipynb`` files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    """# evflow quickstart

Define events, build a pipeline with **filter** and **forward**, look at its
picture, preview it on a few records, and read the dead letters. Everything
here runs on generated data, in this process.""",
    """from typing import Literal

from pipelines import Event, Pipeline, sinks, sources


class View(Event):
    type: Literal["view"] = "view"
    user: str
    page: str


class Purchase(Event):
    type: Literal["purchase"] = "purchase"
    user: str
    amount: float""",
    """## A pipeline

Raw JSON lines are validated into `View | Purchase` events (bad lines become
dead letters, never errors). Bots are filtered out; purchases over 100 go to
one sink, the rest to another.""",
    """def is_human(event: View | Purchase) -> bool:
    return not event.user.startswith("bot")


events = (
    Pipeline("quickstart")
    .read(sources.memory([], schema=View | Purchase, name="clicks"))
    .filter(is_human)
)
routes = events.forward(big=lambda e: isinstance(e, Purchase) and e.amount > 100, otherwise="rest")
shop = routes.big.write(sinks.memory("big")) | routes.rest.write(sinks.memory("rest"))
shop""",
    """### As Mermaid text

The same picture as Mermaid text, for a README or a wiki:""",
    """from pipelines import render

print(render.to_mermaid(shop))""",
    """## Preview on a sample

`preview` runs the pipeline in this process on the records given (or on the
first records of its sources) and keeps every sink's output in memory:""",
    """sample = [
    '{"type": "view", "user": "ana", "page": "/"}',
    '{"type": "purchase", "user": "ana", "amount": 250}',
    '{"type": "purchase", "user": "bot7", "amount": 999}',
    '{"type": "purchase", "user": "ben", "amount": 12.5}',
    '{"type": "purchase", "user": "cy"}',
    '{"type": "refund", "user": "cy", "amount": 3}',
    'this is not JSON',
]
preview = shop.preview(sample)
preview""",
    """## Dead letters

Nothing is lost silently: each bad record is a dead letter with the step, the
reason (pydantic's errors for validation) and the payload, and the counts
reconcile.""",
    """for letter in preview.dead_letters:
    why = letter.errors[0]["msg"] if letter.errors else letter.message
    print(f"{letter.step:12} {letter.kind:10} {why[:60]:60} {letter.payload}")
print("reconciles:", preview.reconciles)""",
    """preview.to_pandas()[["step", "kind", "error_type", "payload"]]""",
    """## A full run

On 20,000 generated lines: `testing.run` runs the whole pipeline in this
process with every source reading the lines, and shows the counts while it
runs.""",
    """import json
import random

rng = random.Random(1)


def line(i: int) -> str:
    user = rng.choice(["ana", "ben", "cy", "dee", "bot1"])
    if rng.random() < 0.3:
        amount = round(rng.uniform(1, 300), 2)
        return json.dumps({"type": "purchase", "user": user, "amount": amount})
    return json.dumps({"type": "view", "user": user, "page": f"/p{i % 7}"})


from pipelines import testing

lines = [line(i) for i in range(20_000)]
result = testing.run(shop, lines)
big, rest = len(result["big"]), len(result["rest"])
print(f"{result.read:,} read, {big:,} big purchases, {rest:,} others,")
print(f"{result.filtered:,} bot events filtered; reconciles: {result.reconciles}")""",
]

WINDOWS = [
    """# Windows and aggregates

Sensor readings arrive through three partitions, some out of order, a few far
too late. Each sensor gets tumbling one-minute windows in **event time** with
its mean, peak and a 90th percentile; late readings are kept apart.""",
    """from datetime import datetime, timedelta, timezone
import random

from operators import agg, windows
from pipelines import Event, Pipeline, sinks, sources
from pydantic import AwareDatetime

START = datetime(2026, 6, 1, tzinfo=timezone.utc)


class Reading(Event):
    sensor: str
    celsius: float
    at: AwareDatetime


def make_reading(rng: random.Random, i: int) -> Reading:
    sensor = f"s{i % 4}"
    at = START + timedelta(seconds=i * 0.5 - rng.uniform(0, 4))
    if rng.random() < 0.002:
        at -= timedelta(minutes=5)  # far too late
    base = 20 + 5 * (i % 4) + 3 * ((i * 0.5 / 60) % 10) ** 0.5
    return Reading(sensor=sensor, celsius=round(base + rng.gauss(0, 1), 2), at=at)""",
    """per_sensor = (
    Pipeline("sensors")
    .read(sources.generate(make_reading, count=12_000, partitions=3, seed=5))
    .key_by(lambda r: r.sensor)
    .window(
        windows.tumbling(minutes=1),
        clock=windows.event_time("at", max_delay=timedelta(seconds=5)),
    )
    .aggregate(
        mean=agg.mean("celsius"),
        peak=agg.max("celsius"),
        p90=agg.quantile("celsius", 0.9),
        n=agg.count(),
    )
)
pipeline = per_sensor.write(sinks.memory("minutes")) | per_sensor.late.write(sinks.memory("late"))
pipeline""",
    """result = pipeline.run(workers=2)
print(f"{len(result['minutes'])} windows, {len(result['late'])} late readings kept apart")
print("reconciles:", result.reconciles)""",
    """frame = result.to_pandas("minutes").sort_values(["key", "start"])
frame.head()""",
    """## Windowed results over event time""",
    """import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(9, 4))
for sensor, rows in frame.groupby("key"):
    ax.plot(rows["start"], rows["mean"], label=f"{sensor} mean")
    ax.fill_between(rows["start"], rows["mean"], rows["p90"], alpha=0.2)
ax.set_xlabel("window start (event time)")
ax.set_ylabel("°C")
ax.set_title("one-minute windows per sensor: mean, shaded up to the 90th percentile")
ax.legend(ncol=4, fontsize=8)
fig.autofmt_xdate()""",
    """## Late readings

A reading behind its partition's watermark (the newest time seen, less the
allowed delay) is late: written here to its own sink, never mixed in.""",
    """result.to_pandas("late")[["sensor", "celsius", "at"]].head()""",
]

DISPATCH = [
    """# Dispatch, the event bus, and dead letters

evflow grew out of the classic event bus: handlers register for an event
type, publishers publish, the bus delivers. `EventBus` keeps that API, and
`dispatch` turns it into a dataflow step.""",
    """from pipelines import Event, EventBus, Handler


class Signup(Event):
    user: str


class Order(Event):
    user: str
    amount: float


class Welcome(Handler):
    def handle(self, event: Signup) -> None:
        print("welcome,", event.user)


bus = EventBus()
bus.register(Signup, Welcome())
bus.publish(Signup(user="ana"))
bus.publish(Order(user="ana", amount=3))  # no handler: kept, not dropped
bus.unhandled""",
    """## The same handlers as a dataflow step

`dispatch` sends each event to the handlers of its type; what a handler
returns flows on. A bad order fails a check before it (a deterministic error:
no retry can mend it, so it is a dead letter at once); a handler that raises
is retried (here up to 3 attempts, for a busy payment service) and then
dead-lettered; a type with no handler goes to dead letters too.""",
    """from pipelines import Pipeline, retry, sinks, sources

attempts = {}


def check(event: Event) -> Event:
    if isinstance(event, Order) and event.amount < 0:
        raise ValueError(f"negative amount {event.amount}")
    return event


def bill(order: Order) -> dict:
    if order.user == "flaky":
        attempts[order.id] = attempts.get(order.id, 0) + 1
        if attempts[order.id] < 2:
            raise TimeoutError("payment service busy")  # succeeds on the second try
    return {"user": order.user, "billed": order.amount}


def greet(signup: Signup) -> dict:
    return {"user": signup.user, "mail": "welcome"}


class Unknown(Event):
    note: str


events = [
    Signup(user="ana"),
    Order(user="ana", amount=30),
    Order(user="flaky", amount=5),
    Order(user="ben", amount=-1),
    Unknown(note="nobody handles me"),
]
flow = (
    Pipeline("billing")
    .read(sources.memory(events))
    .map(check)
    .dispatch(
        {Order: bill, Signup: greet},
        default="dead_letter",
        on_error=retry(attempts=3, backoff=0.01),
    )
    .write(sinks.memory("done"))
)
flow""",
    """result = flow.run()
result""",
    """## Reconciliation

Every event read is accounted for: written, filtered, handled or dead.""",
    """print(f"read {result.read} = written {result.written} + dead {result.dead}", end=" ")
print(f"+ handled {result.handled}")
print("reconciles:", result.reconciles)
for letter in result.dead_letters:
    print(f"- {letter.kind}: {letter.error_type}: {letter.message[:60]}", end=" ")
    print(f"(attempts: {letter.attempts})")""",
    """## Async and stateful handlers

An `async def` handler (an HTTP call, say) runs concurrently with the others
of its batch, up to `concurrency` at once on each worker, and results keep
their order. A `stateful` handler on a keyed stream keeps one state per key
(saved with the run's snapshots), instead of attributes on a handler object,
which each worker would hold a copy of.""",
    """import asyncio

from pipelines import stateful


async def notify(order: Order) -> dict:
    await asyncio.sleep(0.01)  # the call to a notification service
    return {"user": order.user, "notified": order.amount}


def running_total(total: float, order: Order) -> tuple[float, dict]:
    total += order.amount  # the state: this user's total so far
    return total, {"user": order.user, "total": total}


orders = [Order(user=u, amount=a) for u, a in [("ana", 3), ("ben", 5), ("ana", 4)]]
keyed = Pipeline("orders").read(sources.memory(orders)).key_by(lambda o: o.user)
notified = keyed.dispatch({Order: notify}, concurrency=8, name="notify")
totals = keyed.dispatch({Order: stateful(running_total, initial=float)}, name="totals")
both = (notified.write(sinks.memory("notified")) | totals.write(sinks.memory("totals"))).run(
    progress=False
)
print(both["notified"])
print(both["totals"])""",
]

SCALING = [
    """# Scaling out

The same pipeline runs on one worker, on several worker threads, and on
several processes (bytewax's own cluster on loopback), with the same results.
This uses the catalog's clickstream pipeline, whose event classes live in an
importable module (events cross processes pickled).""",
    """import time

from pipelines.catalog import clickstream

pipeline = clickstream.build(count=40_000)
pipeline""",
    """def signature(result):
    return {
        name: sorted(map(repr, records)) for name, records in result.outputs.items()
    }


timings = {}
results = {}
for label, options in {
    "1 worker": dict(workers=1),
    "2 workers": dict(workers=2),
    "2 processes": dict(processes=2),
}.items():
    started = time.perf_counter()
    results[label] = pipeline.run(progress=False, **options)
    timings[label] = time.perf_counter() - started
    done = results[label]
    print(f"{label:12} {timings[label]:5.2f} s, read {done.read:,}, ok {done.reconciles}")""",
    """base = signature(results["1 worker"])
print({label: signature(r) == base for label, r in results.items()})""",
    """import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(list(timings), list(timings.values()), color=["#557", "#779", "#99b"])
ax.set_ylabel("seconds (lower is better)")
ax.set_title(f"clickstream, {results['1 worker'].read:,} generated events, this machine")
plt.show()""",
    """## About the timings

Timings on a shared machine are noisy, and a small run is dominated by
starting the processes; `bench/scaling.py` measures the windowed workload on
1, 2, 4, ... processes with medians of several rounds.""",
]

JOINS = [
    """# Joins, timers and windows over windows

Correlate streams on event time: enrich orders with the customer row valid at
their time, match payments within 10 minutes, find abandoned carts with a
timer, and sum per-minute counts per hour. Everything runs on generated data,
in this process, and gives the same result on any batch size or worker count.""",
    """from datetime import datetime, timedelta, timezone

from operators import Context, Timer, agg, windows
from pipelines import Event, Pipeline, sinks, sources

t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return t0 + timedelta(minutes=minutes)


class Order(Event):
    customer: str
    amount: float


class Payment(Event):
    customer: str


class Customer(Event):
    customer: str
    tier: str""",
    """## A table as of each event's time, and an interval join

`as_table()` views a keyed stream as the latest row per key; `join(table)`
looks each order up **as of its own time**. `join(payments, between=...)`
matches each order with the payments of the next 10 minutes; `how="left"`
keeps the unpaid ones, with `right=None`.""",
    """shop = Pipeline("shop")
orders = shop.read(
    sources.memory(
        [
            Order(customer="ada", amount=30, time=at(1)),
            Order(customer="bob", amount=5, time=at(2)),
            Order(customer="ada", amount=12, time=at(20)),
        ]
    ),
    name="orders",
).key_by(lambda o: o.customer, name="order_customer")
customers = shop.read(
    sources.memory(
        [
            Customer(customer="ada", tier="basic", time=at(0)),
            Customer(customer="bob", tier="gold", time=at(0)),
            Customer(customer="ada", tier="gold", time=at(10)),
        ]
    ),
    name="customers",
).key_by(lambda c: c.customer, name="customer_key")
payments = shop.read(
    sources.memory([Payment(customer="ada", time=at(4)), Payment(customer="ada", time=at(25))]),
    name="payments",
).key_by(lambda p: p.customer, name="payment_customer")

tiers = orders.join(customers.as_table(), select=lambda o, c: (o.customer, o.amount, c.tier))
paid = orders.join(payments, between=(timedelta(0), timedelta(minutes=10)), how="left")
flow = tiers.write(sinks.memory("tiers")) | paid.write(sinks.memory("paid"))
flow""",
    """result = flow.run()
print(sorted(result["tiers"]))
print(sorted((j.left.time.minute, j.right is not None) for j in result["paid"]))
result.summary()""",
    """## A timer: abandoned carts

`process` hands each key's events to a function in event-time order, with the
key's state and timers. A cart with no purchase 30 minutes after its last
addition is reported; at the end of the input, every pending timer fires.""",
    """class Cart(Event):
    user: str
    action: str


def on_event(state: dict, e: Cart, ctx: Context[tuple]) -> dict | None:
    if e.action == "buy":
        ctx.cancel("abandoned")
        return None
    ctx.timer(ctx.time + timedelta(minutes=30), "abandoned")
    return {"items": state.get("items", 0) + 1}


def on_timer(state: dict, timer: Timer, ctx: Context[tuple]) -> dict | None:
    ctx.emit((timer.key, state["items"], timer.time.strftime("%H:%M")))
    return None


carts = [
    Cart(user=u, action=a, time=at(m))
    for u, a, m in [("ada", "add", 0), ("bob", "add", 1), ("ada", "add", 5), ("bob", "buy", 9)]
]
abandoned = (
    Pipeline("carts")
    .read(sources.memory(carts))
    .key_by(lambda c: c.user)
    .process(on_event, initial=dict, on_timer=on_timer)
)
abandoned.write(sinks.memory("abandoned")).run()["abandoned"]""",
    """## Windows over window results

A window's result is dated its last instant and carries the step's watermark
on, so a second window groups the first one's results, none of them late.""",
    """import random


class View(Event):
    page: str


rng = random.Random(5)
views = [View(page=rng.choice(["/", "/a", "/b"]), time=at(i * 0.1)) for i in range(3000)]
per_minute = (
    Pipeline("pages")
    .read(sources.memory(views, partitions=3))
    .key_by(lambda v: v.page)
    .window(windows.tumbling(minutes=1))
    .aggregate(views=agg.count())
)
per_hour = (
    per_minute.key_by(lambda r: r.key, name="page")
    .window(windows.tumbling(hours=1))
    .aggregate(views=agg.sum("views"), minutes=agg.count(), name="per_hour")
)
hours = per_hour.write(sinks.memory("hours")).run(workers=2)
sorted((r.start.hour, r.key, r.views, r.minutes) for r in hours["hours"])""",
    """## The enrichment pipeline of the catalog

`evflow run enrichment` runs the same joins on generated orders, customers and
payments, with malformed records and late payments; its picture shows both
inputs of each join.""",
    """from pipelines import testing
from pipelines.catalog import enrichment

pipeline = enrichment.build(count=5000)
done = testing.run(pipeline)
print(len(done["paid"]), "paid,", len(done["unpaid"]), "unpaid, reconciles:", done.reconciles)
pipeline""",
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_windows_and_aggregates.ipynb": WINDOWS,
    "03_dispatch_and_dead_letters.ipynb": DISPATCH,
    "04_scaling_out.ipynb": SCALING,
    "05_joins_and_timers.ipynb": JOINS,
}


def make(cells: list[str]) -> nbformat.NotebookNode:
    """Turn the cell texts into a notebook: a cell that starts with # is markdown."""
    nb = nbformat.v4.new_notebook()
    for text in cells:
        markdown = text.startswith("#")
        nb.cells.append(
            nbformat.v4.new_markdown_cell(text) if markdown else nbformat.v4.new_code_cell(text)
        )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell top to bottom in a fresh kernel; raise on the first error."""
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def main() -> None:
    """Write and execute the notebooks named on the command line (all by default)."""
    names = sys.argv[1:] or list(NOTEBOOKS)
    for name in names:
        nb = execute(make(NOTEBOOKS[name]), HERE.parent)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
