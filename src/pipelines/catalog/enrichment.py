"""Enrichment: orders joined with the customer row valid at their time, then with payments.

Three generated sources: a changelog of customers (a first row for each,
then tier changes and a few closed accounts), orders, and payments that
arrive up to 30 seconds out of order, most 5 minutes after their order, a few
too late. Each order is joined, as of its own time, with its customer's
row (orders of closed accounts become ``unmatched`` dead letters); each
enriched order is matched with its payments within 10 minutes (a left join:
unpaid orders go to their own sink); paid revenue is summed per tier and
hour. A few records of each source are malformed.

>>> from pipelines import testing
>>> result = testing.run(build(count=3000))
>>> result.reconciles, result.open_windows
(True, 0)
>>> len(result["paid"]) > 0 and len(result["unpaid"]) > 0 and len(result["revenue"]) > 0
True
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from operators import Event, Joined, Sink, agg, windows
from pipelines import sinks, sources
from pipelines._building.builder import Pipeline

__all__ = ["Customer", "EnrichedOrder", "Order", "PaidOrder", "Payment", "build"]

START = datetime(2026, 6, 1, tzinfo=timezone.utc)
CUSTOMERS = 200
TIERS = ("basic", "silver", "gold")


class Customer(Event):
    """A customer row of the changelog: the latest one of a customer wins."""

    customer: str
    tier: str
    closed: bool = False


class Order(Event):
    """An order of a customer."""

    customer: str
    amount: float


class Payment(Event):
    """A payment of an order."""

    order_id: str
    amount: float


class EnrichedOrder(Event):
    """An order with its customer's tier at the time of the order."""

    customer: str
    tier: str
    amount: float


class PaidOrder(Event):
    """A paid order, dated when it was paid."""

    tier: str
    amount: float


def _text(record: dict[str, Any], rng: random.Random) -> str:
    text = json.dumps(record)
    return text[:-4] if rng.random() < 0.004 else text  # now and then a broken line


def make_customer(rng: random.Random, i: int) -> str:
    """Make customer row ``i``: first one row per customer, then a change a minute."""
    if i < CUSTOMERS:
        at = START - timedelta(hours=1)
        row = {"customer": f"c{i}", "tier": TIERS[i % 3], "closed": False}
    else:
        at = START + timedelta(minutes=i - CUSTOMERS)
        who = rng.randrange(CUSTOMERS)
        row = {"customer": f"c{who}", "tier": rng.choice(TIERS), "closed": rng.random() < 0.05}
    return _text({"type": "customer", "id": f"k{i}", "time": at.isoformat(), **row}, rng)


def make_order(rng: random.Random, i: int) -> str:
    """Order ``i``: one every 2 seconds."""
    at = START + timedelta(seconds=2 * i)
    record = {
        "type": "order",
        "id": f"o{i}",
        "time": at.isoformat(),
        "customer": f"c{rng.randrange(CUSTOMERS)}",
        "amount": round(rng.uniform(5, 200), 2),
    }
    return _text(record, rng)


def make_payment(rng: random.Random, i: int) -> str:
    """Make payment ``i``, up to 30 s out of order.

    It pays the order of 5 minutes before (now and then one of 10.7 minutes
    before, too late to count).
    """
    at = START + timedelta(seconds=2 * i - rng.uniform(0, 30))
    order = i - (320 if rng.random() < 0.08 else 150)
    record = {
        "type": "payment",
        "id": f"p{i}",
        "time": at.isoformat(),
        "order_id": f"o{order}",
        "amount": round(rng.uniform(5, 200), 2),
    }
    return _text(record, rng)


def enrich(order: Order, customer: Customer | None) -> EnrichedOrder:
    """Give an order its customer's tier."""
    assert customer is not None  # missing="dead_letter": only matched orders come here
    return EnrichedOrder(
        id=order.id,
        time=order.time,
        customer=order.customer,
        tier=customer.tier,
        amount=order.amount,
    )


def paid_order(j: Joined[EnrichedOrder, Payment]) -> PaidOrder:
    """Keep what the revenue needs of a matched order."""
    assert j.left is not None and j.right is not None
    return PaidOrder(id=j.id, time=j.time, tier=j.left.tier, amount=j.left.amount)


def build(
    *,
    count: int = 20_000,
    seed: int = 11,
    paid: Sink | None = None,
    unpaid: Sink | None = None,
    revenue: Sink | None = None,
) -> Pipeline:
    """Build the enrichment pipeline on ``count`` orders (and as many payments)."""
    p = Pipeline("enrichment")
    customers = p.read(
        sources.generate(make_customer, count=CUSTOMERS + count // 30, seed=seed, schema=Customer),
        name="customers",
    ).key_by(lambda c: c.customer, name="customer_id")
    orders = p.read(
        sources.generate(make_order, count=count, seed=seed + 1, partitions=2, schema=Order),
        name="orders",
    ).key_by(lambda o: o.customer, name="order_customer")
    payments = p.read(
        sources.generate(make_payment, count=count, seed=seed + 2, partitions=2, schema=Payment),
        name="payments",
    ).key_by(lambda x: x.order_id, name="paid_order")
    late_payments = windows.event_time(max_delay=timedelta(seconds=30))
    enriched = orders.join(
        customers.as_table(deleted=lambda c: c.closed),
        missing="dead_letter",
        select=enrich,
        name="with_customer",
    )
    matched = enriched.key_by(lambda o: o.id, name="order_id").join(
        payments,
        between=(timedelta(0), timedelta(minutes=10)),
        how="left",
        clock=(windows.event_time(), late_payments),
        name="with_payment",
    )
    routes = matched.forward(unpaid=lambda j: j.right is None, otherwise="paid")
    per_tier = (
        routes.paid.map(paid_order)
        .key_by(lambda o: o.tier, name="tier")
        .window(windows.tumbling(hours=1))
        .aggregate(revenue=agg.sum("amount"), orders=agg.count(), name="revenue_per_tier")
    )
    return (
        routes.paid.write(paid or sinks.memory("paid"))
        | routes.unpaid.write(unpaid or sinks.memory("unpaid"))
        | per_tier.write(revenue or sinks.memory("revenue"))
    )
