"""Orders: order events dispatched by type to handlers that keep each order's state.

Generated order events (placed, paid, payment failed, shipped, refunded, plus
address changes nobody handles, a few of a type the schema does not know and
a few malformed) are keyed by order and dispatched: each handler updates the
order's state (kept per key by the dispatch step) and emits notifications; a
handler refuses an impossible transition (shipping an unpaid order). Unknown,
unhandled and failing events are dead letters, written to their own sink.

>>> from pipelines import testing
>>> result = testing.run(build(count=4000))
>>> result.reconciles, result.read
(True, 4000)
>>> kinds = {d.kind for d in result["dead_letters"]}
>>> kinds >= {"parse", "validation", "unhandled", "user_error"}
True
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from operators import Event, Sink
from operators._dispatch import stateful
from pipelines import sinks, sources
from pipelines._building.builder import Pipeline

__all__ = [
    "AddressChanged",
    "Notification",
    "OrderPaid",
    "OrderPlaced",
    "OrderRefunded",
    "OrderShipped",
    "PaymentFailed",
    "build",
]

START = datetime(2026, 9, 1, tzinfo=timezone.utc)
PARTITIONS = 2


class OrderPlaced(Event):
    """A customer placed an order."""

    type: Literal["order_placed"] = "order_placed"
    order_id: str
    customer: str
    total: float


class OrderPaid(Event):
    """The payment went through."""

    type: Literal["order_paid"] = "order_paid"
    order_id: str
    amount: float


class PaymentFailed(Event):
    """The payment was declined."""

    type: Literal["payment_failed"] = "payment_failed"
    order_id: str
    reason: str


class OrderShipped(Event):
    """The parcel left the warehouse."""

    type: Literal["order_shipped"] = "order_shipped"
    order_id: str
    carrier: str


class OrderRefunded(Event):
    """Money went back to the customer."""

    type: Literal["order_refunded"] = "order_refunded"
    order_id: str
    amount: float


class AddressChanged(Event):
    """A customer changed the delivery address (no handler: a dead letter)."""

    type: Literal["address_changed"] = "address_changed"
    order_id: str


class Notification(Event):
    """What the handlers emit: a message to a customer or to the warehouse."""

    type: Literal["notification"] = "notification"
    order_id: str
    to: str
    text: str


OrderEvents = (
    OrderPlaced | OrderPaid | PaymentFailed | OrderShipped | OrderRefunded | AddressChanged
)


def make_event(rng: random.Random, index: int) -> str:
    """Make event ``index``: each partition walks its own orders, five events each."""
    part, local = index % PARTITIONS, index // PARTITIONS
    order, step = f"o{part}-{local // 5}", local % 5
    when = START + timedelta(seconds=index)
    record: dict[str, Any] = {"id": f"ev{index}", "time": when.isoformat(), "order_id": order}
    roll = rng.random()
    if step == 0:
        record.update(
            type="order_placed",
            customer=f"c{rng.randrange(300)}",
            total=round(rng.uniform(5, 400), 2),
        )
    elif step == 1:
        if roll < 0.1:
            record.update(type="payment_failed", reason="card declined")
        else:
            record.update(type="order_paid", amount=round(rng.uniform(5, 400), 2))
    elif step == 2:
        record.update(type="order_shipped", carrier=rng.choice(["post", "courier"]))
    elif step == 3:
        if roll < 0.2:
            record.update(type="order_refunded", amount=round(rng.uniform(5, 50), 2))
        else:
            record.update(type="address_changed")
    else:
        record.update(type="order_cancelled" if roll < 0.05 else "address_changed")
    if rng.random() < 0.01:
        return json.dumps(record)[:-6]
    return json.dumps(record)


State = dict[str, Any]


def on_placed(state: State, e: OrderPlaced) -> tuple[State, Notification]:
    """Open the order."""
    state = {"status": "placed", "customer": e.customer, "total": e.total}
    return state, Notification(
        order_id=e.order_id, to=e.customer, text="order received", id=f"n-{e.id}", time=e.time
    )


def on_paid(state: State, e: OrderPaid) -> tuple[State, list[Notification]]:
    """Mark it paid; tell the customer and the warehouse."""
    customer = state.get("customer", "unknown")
    state = {**state, "status": "paid"}
    return state, [
        Notification(
            order_id=e.order_id, to=customer, text="payment received", id=f"n-{e.id}-c", time=e.time
        ),
        Notification(
            order_id=e.order_id, to="warehouse", text="ready to ship", id=f"n-{e.id}-w", time=e.time
        ),
    ]


def on_failed(state: State, e: PaymentFailed) -> tuple[State, Notification]:
    """Ask the customer for another card."""
    state = {**state, "status": "payment_failed"}
    return state, Notification(
        order_id=e.order_id,
        to=state.get("customer", "unknown"),
        text=f"payment failed: {e.reason}",
        id=f"n-{e.id}",
        time=e.time,
    )


def on_shipped(state: State, e: OrderShipped) -> tuple[State, Notification]:
    """Ship only what is paid for: anything else is refused (a dead letter)."""
    if state.get("status") != "paid":
        msg = f"order {e.order_id} cannot ship while {state.get('status', 'unknown')}"
        raise ValueError(msg)
    state = {**state, "status": "shipped"}
    return state, Notification(
        order_id=e.order_id,
        to=state.get("customer", "unknown"),
        text=f"shipped by {e.carrier}",
        id=f"n-{e.id}",
        time=e.time,
    )


def on_refunded(state: State, e: OrderRefunded) -> tuple[State, Notification]:
    """Record the refund."""
    state = {**state, "status": "refunded"}
    return state, Notification(
        order_id=e.order_id,
        to=state.get("customer", "unknown"),
        text=f"refunded {e.amount:.2f}",
        id=f"n-{e.id}",
        time=e.time,
    )


def build(
    *,
    count: int = 50_000,
    seed: int = 11,
    notifications: Sink | None = None,
    dead_letters: Sink | None = None,
) -> Pipeline:
    """Build the orders pipeline on ``count`` generated events."""
    return (
        Pipeline("orders")
        .read(
            sources.generate(
                make_event,
                count=count,
                seed=seed,
                partitions=PARTITIONS,
                schema=OrderEvents,
                name="order_events",
            )
        )
        .key_by(lambda e: e.order_id)
        .dispatch(
            {
                OrderPlaced: stateful(on_placed),
                OrderPaid: stateful(on_paid),
                PaymentFailed: stateful(on_failed),
                OrderShipped: stateful(on_shipped),
                OrderRefunded: stateful(on_refunded),
            },
            default="dead_letter",
        )
        .write(notifications or sinks.memory("notifications"))
        .dead_letters(dead_letters or sinks.memory("dead_letters"))
    )
