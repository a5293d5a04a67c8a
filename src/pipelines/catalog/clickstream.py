"""Clickstream: web and app page views, clicks and purchases; big purchases alert.

Generated records (a few percent malformed, invalid or of an unknown type)
from two sources, web and app, are merged, bots are filtered out, events are
keyed by user, purchases above a threshold are forwarded to an alerts sink
(converted to euros; an unknown currency is a dead letter), every other
event feeds per-page hit records into a counts sink, and each user's events,
views and purchases are counted per one-minute window.

>>> from pipelines import testing
>>> result = testing.run(build(count=2000))
>>> result.reconciles, result.read
(True, 2500)
>>> {d.kind for d in result.dead_letters} >= {"parse", "validation", "user_error"}
True
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Literal

from operators import Event, Sink, agg, windows
from pipelines import sinks, sources
from pipelines._building.builder import Pipeline

__all__ = ["Alert", "Click", "PageView", "Purchase", "build", "make_record", "pipeline"]

PAGES = ("/", "/search", "/product/1", "/product/2", "/product/3", "/cart", "/checkout")
CURRENCIES = ("EUR", "EUR", "USD", "USD", "GBP", "XTS")
TO_EUR = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


class PageView(Event):
    """A page was shown."""

    type: Literal["view"] = "view"
    user: str
    page: str


class Click(Event):
    """Something on a page was clicked."""

    type: Literal["click"] = "click"
    user: str
    page: str
    target: str


class Purchase(Event):
    """A basket was bought."""

    type: Literal["purchase"] = "purchase"
    user: str
    amount: float
    currency: str = "EUR"


class Alert(Event):
    """A purchase large enough to look at."""

    type: Literal["alert"] = "alert"
    user: str
    amount_eur: float
    purchase_id: str


ClickEvents = PageView | Click | Purchase


def make_record(rng: random.Random, i: int) -> str:
    """Make record number ``i`` as JSON text; about 4% are bad in some way."""
    user = f"bot-{rng.randrange(5)}" if rng.random() < 0.05 else f"u{rng.randrange(500)}"
    when = (START + timedelta(milliseconds=37 * i)).isoformat()
    roll = rng.random()
    record: dict[str, object]
    if roll < 0.60:
        record = {"type": "view", "user": user, "page": rng.choice(PAGES)}
    elif roll < 0.90:
        record = {"type": "click", "user": user, "page": rng.choice(PAGES), "target": "button"}
    else:
        amount = round(rng.lognormvariate(3.5, 1.0), 2)
        record = {
            "type": "purchase",
            "user": user,
            "amount": amount,
            "currency": rng.choice(CURRENCIES),
        }
    record.update(id=f"e{i}", time=when)
    bad = rng.random()
    if bad < 0.015:
        return json.dumps(record)[:-7]  # cut short: not JSON
    if bad < 0.030:
        record.pop("user")  # schema violation: a required field is missing
    elif bad < 0.040:
        record["type"] = "hover"  # a type the schema does not know
    return json.dumps(record)


def is_human(event: Event) -> bool:
    """Bots are not customers."""
    return not getattr(event, "user", "").startswith("bot-")


def user_of(event: PageView | Click | Purchase) -> str:
    """Events are keyed by user."""
    return event.user


def to_alert(event: PageView | Click | Purchase) -> Alert:
    """Convert a big purchase to an alert in euros (an unknown currency fails)."""
    assert isinstance(event, Purchase)
    return Alert(
        id=f"alert-{event.id}",
        user=event.user,
        amount_eur=round(event.amount * TO_EUR[event.currency], 2),
        purchase_id=event.id,
        time=event.time,
    )


def page_hits(event: PageView | Click | Purchase) -> list[str]:
    """Each view or click counts a hit on its page; a purchase counts as a sale."""
    if isinstance(event, Purchase):
        return ["sale"]
    if isinstance(event, Click) and event.page == "/checkout":
        return [event.page, "checkout_click"]
    return [event.page]


def build(
    *,
    count: int = 100_000,
    seed: int = 7,
    threshold: float = 150.0,
    alerts: Sink | None = None,
    counts: Sink | None = None,
    per_user_sink: Sink | None = None,
) -> Pipeline:
    """Build the clickstream pipeline on ``count`` web and ``count // 4`` app records."""
    p = Pipeline("clickstream")
    web = p.read(
        sources.generate(
            make_record, count=count, seed=seed, partitions=2, schema=ClickEvents, name="web"
        )
    )
    app = p.read(
        sources.generate(
            make_record, count=count // 4, seed=seed + 1, schema=ClickEvents, name="app"
        )
    )
    users = web.merge(app, name="all_events").filter(is_human).key_by(user_of)
    routes = users.forward(
        big=lambda e: isinstance(e, Purchase) and e.amount > threshold, otherwise="rest"
    )
    per_user = users.window(windows.tumbling(minutes=1)).aggregate(
        events=agg.count(), views=agg.count(PageView), purchases=agg.count(Purchase)
    )
    return (
        routes.big.map(to_alert).write(alerts or sinks.memory("alerts"))
        | routes.rest.flat_map(page_hits).write(counts or sinks.memory("counts"))
        | per_user.write(per_user_sink or sinks.memory("per_user"))
    )


pipeline = build
