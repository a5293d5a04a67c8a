"""The catalog pipelines run with no set-up and give the same results on any worker count."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipelines import catalog, testing
from pipelines.catalog import clickstream
from tests.helpers import multiset


def test_catalog_lists_and_loads() -> None:
    assert "clickstream" in catalog.NAMES and "sensors" in catalog.NAMES
    assert catalog.load("clickstream").name == "clickstream"
    assert catalog.describe("clickstream").startswith("Clickstream:")


def test_clickstream_exercises_every_operator_and_reconciles() -> None:
    p = clickstream.build(count=4000)
    kinds = {n.kind for n in p.graph}
    assert kinds == {
        "read",
        "merge",
        "filter",
        "key_by",
        "forward",
        "map",
        "flat_map",
        "write",
        "aggregate",
    }
    one = testing.run(p)
    two = testing.run(p, workers=2)
    assert one.read == 5000 and one.reconciles and two.reconciles
    for sink in ("alerts", "counts", "per_user"):
        assert multiset(one[sink]) == multiset(two[sink]) and one[sink]
    dead = Counter(d.kind for d in one.dead_letters)
    assert dead["parse"] > 0 and dead["validation"] > 0 and dead["user_error"] > 0
    assert all(a.amount_eur > 0 for a in one["alerts"])
    assert 0.02 < one.dead / one.read < 0.08  # "a few percent" bad records
    assert one.counts["filter_is_human"].filtered > 0


def test_clickstream_alerts_follow_the_threshold() -> None:
    low = testing.run(clickstream.build(count=2000, threshold=10.0))
    high = testing.run(clickstream.build(count=2000, threshold=1000.0))
    assert len(low["alerts"]) > len(high["alerts"])


def test_unknown_catalog_name() -> None:
    import pytest

    with pytest.raises(KeyError, match=r"no catalog pipeline 'nope'; the catalog has"):
        catalog.load("nope")


def test_sensors_same_results_on_1_2_and_4_workers() -> None:
    from pipelines.catalog import sensors

    p = sensors.build(count=6000)
    runs = [testing.run(p, workers=w) for w in (1, 2, 4)]
    for r in runs:
        assert r.reconciles and r.open_windows == 0 and r.read == 6000

    def rows(r: Any, sink: str) -> Counter[Any]:
        if sink == "late_readings":
            return multiset(r[sink])
        # means are sums of floats, whose last bits depend on the order of adding
        return Counter((w.key, w.start, round(w.mean, 9), w.peak, w.n) for w in r[sink])

    for sink in ("alerts", "stats", "late_readings"):
        assert runs[0][sink], sink
        assert rows(runs[0], sink) == rows(runs[1], sink) == rows(runs[2], sink)
    # exactly the readings an hour behind are late; nothing within the allowed delay is
    for late in runs[0]["late_readings"]:
        made = sensors.START.timestamp() + int(late.id[1:]) / 10
        assert made - late.at.timestamp() >= 3600 - 4


def test_orders_dispatch_by_type_with_per_order_state() -> None:
    from pipelines.catalog import orders

    p = orders.build(count=5000)
    runs = [testing.run(p, workers=w) for w in (1, 2, 4)]
    for r in runs:
        assert r.reconciles and r.read == 5000
    assert multiset(runs[0]["notifications"]) == multiset(runs[1]["notifications"])
    assert multiset(runs[0]["notifications"]) == multiset(runs[2]["notifications"])
    dead = Counter(d.kind for d in runs[0]["dead_letters"])
    assert dead["unhandled"] > 0 and dead["validation"] > 0 and dead["parse"] > 0
    refused = [d for d in runs[0]["dead_letters"] if d.kind == "user_error"]
    assert refused and all("cannot ship while" in d.message for d in refused)
    texts = Counter(n.text for n in runs[0]["notifications"])
    assert texts["order received"] > 0 and texts["ready to ship"] > 0


def test_enrichment_joins_match_a_direct_computation_on_any_worker_count() -> None:
    import json

    from pipelines.catalog import enrichment

    p = enrichment.build(count=3000)
    kinds = Counter(n.kind for n in p.graph)
    assert kinds["join"] == 2 and kinds["aggregate"] == 1
    one = testing.run(p)
    assert one.reconciles and one.open_windows == 0
    for workers, processes in ((2, 1), (1, 2)):
        other = p.run(workers=workers, processes=processes)
        for sink in ("paid", "unpaid", "revenue"):
            assert multiset(other[sink]) == multiset(one[sink]), (sink, workers, processes)
    # Direct computation from the generated records: the tier each order's
    # customer had at the order's time, and the payments within 10 minutes.
    import random

    def records(make: Any, count: int, seed: int, parts: int) -> list[dict[str, Any]]:
        # As sources.generate makes them: partition p makes records p, p + parts, ...
        texts = []
        for p in range(parts):
            rng = random.Random(f"{seed}:{p}")
            texts += [make(rng, i) for i in range(p, count, parts)]
        return [json.loads(t) for t in texts if t.endswith("}")]  # broken lines are cut short

    customers = records(enrichment.make_customer, enrichment.CUSTOMERS + 100, 11, 1)
    customers.sort(key=lambda c: int(c["id"][1:]))
    orders = records(enrichment.make_order, 3000, 12, 2)
    payments = records(enrichment.make_payment, 3000, 13, 2)
    rows: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for c in customers:
        rows.setdefault(c["customer"], []).append((c["time"], c))
    tier_of: dict[str, str] = {}
    for o in orders:
        valid = [c for t, c in rows.get(o["customer"], []) if t <= o["time"]]
        if valid and not valid[-1]["closed"]:
            tier_of[o["id"]] = valid[-1]["tier"]
    assert one.dead_letter_counts[("with_customer", "unmatched")] == len(orders) - len(tier_of)
    from datetime import datetime

    seconds = {o["id"]: datetime.fromisoformat(o["time"]).timestamp() for o in orders}
    pairs = Counter()
    for pay in payments:
        oid = pay["order_id"]
        if oid in tier_of:
            lag = datetime.fromisoformat(pay["time"]).timestamp() - seconds[oid]
            if 0 <= lag <= 600:
                pairs[(oid, pay["id"])] += 1
    assert Counter((j.left.id, j.right.id) for j in one["paid"]) == pairs
    assert {j.left.id for j in one["unpaid"]} == set(tier_of) - {o for o, _ in pairs}
