"""NEXMark events and generator, after Beam's rules: persons, auctions and bids, 1:3:46.

Event ``n`` (one every millisecond of event time) is a person when
``n % 50 == 0``, an auction when ``n % 50`` is 1 to 3, and a bid otherwise.
An auction's seller is a person already created (mostly one of the most
recent, "hot" sellers), its category one of 10 to 14, its reserve and
initial bid random, and it expires 10 seconds after it opens. A bid is for an
auction already open (mostly a recent, "hot" one), by a person already
created, at a random price. Persons live in one of six US states.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from operators import Event

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
CITIES = ("Phoenix", "Los Angeles", "Boise", "Portland", "Seattle", "Cheyenne")
EXPIRES = 10.0  # seconds an auction stays open
FIRST_ID = 1000


class Person(Event):
    person: int
    name: str
    city: str
    state: str


class Auction(Event):
    auction: int
    seller: int
    category: int
    initial_bid: int
    reserve: int
    expires: datetime


class Bid(Event):
    auction: int
    bidder: int
    price: int


def generate(n: int, seed: int = 1) -> list[Person | Auction | Bid]:
    """Make the first ``n`` events, in event-time order."""
    rng = random.Random(seed)
    events: list[Person | Auction | Bid] = []
    persons = auctions = 0
    for i in range(n):
        at = T0 + timedelta(milliseconds=i)
        kind = i % 50
        if kind == 0:
            pid = FIRST_ID + persons
            persons += 1
            where = rng.randrange(len(STATES))
            events.append(
                Person(
                    id=f"e{i}", time=at, person=pid, name=f"person{pid}",
                    city=CITIES[where], state=STATES[where],
                )
            )  # fmt: skip
        elif kind <= 3:
            aid = FIRST_ID + auctions
            auctions += 1
            hot = rng.random() < 0.5
            seller = (
                persons - 1 - (rng.randrange(min(persons, 10)) if hot else rng.randrange(persons))
            )
            initial = rng.randrange(1, 100)
            events.append(
                Auction(
                    id=f"e{i}", time=at, auction=aid, seller=FIRST_ID + max(seller, 0),
                    category=10 + rng.randrange(5), initial_bid=initial,
                    reserve=initial + rng.randrange(0, 200),
                    expires=at + timedelta(seconds=EXPIRES),
                )
            )  # fmt: skip
        else:
            # Mostly one of the 20 newest auctions (all still open), else any of
            # the last 300 (some closed: such bids win nothing).
            back = (
                rng.randrange(min(auctions, 20))
                if rng.random() < 0.8
                else rng.randrange(min(auctions, 300))
            )
            events.append(
                Bid(
                    id=f"e{i}", time=at, auction=FIRST_ID + auctions - 1 - back,
                    bidder=FIRST_ID + rng.randrange(persons), price=rng.randrange(1, 1000),
                )
            )  # fmt: skip
    return events
