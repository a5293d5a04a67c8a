"""NEXMark Q0 to Q8: evflow vs hand-written bytewax vs a plain Python reference, same events.

Events are generated after Beam's rules (persons, auctions, bids; 1:3:46;
model.py) and built as evflow events before timing. Each query runs in
evflow (with_evflow.py: streaming, on event time: auctions close at their
expiry by a timer, windows over window results, joins), in hand-written
bytewax 0.21 (with_bytewax.py) and as a plain loop (reference.py), round
after round; all three must give the same result. Printed: each variant's
median and evflow's speed against the other two, with the targets (1.5x
bytewax on every query; 0.5x the reference on Q3 to Q8).

Queries: Q0 pass-through; Q1 bid prices in euro; Q2 bids of some auctions;
Q3 auctions of category 10 with their sellers in OR, ID or CA (join with a
table of persons); Q4 average winning price per category, updated as each
auction closes at its expiry; Q5 the hottest auction's bid count per 10-second
window sliding every 2 seconds (a top_k of each window; also reported written
in two steps as the bytewax version is, a count per auction and window, then
a window over those results); Q6 each
seller's average price over their last 10 closed auctions; Q7 the highest
bid per 10-second window; Q8 persons who opened an account and an auction
in the same 10-second window (a window join).

Run: ``python bench/nexmark/run.py [--events N] [--rounds R] [--queries q3,q4]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/harness.py

import reference
import with_bytewax
import with_evflow
from harness import interleaved
from model import generate

STATEFUL = {"q3", "q4", "q5", "q6", "q7", "q8"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", default=",".join(reference.QUERIES))
    args = parser.parse_args()
    events = generate(args.events)
    rows = []
    chosen = args.queries.split(",")
    runs = [(q, with_evflow.QUERIES[q]) for q in chosen]
    runs += [(name, fn) for name, (q, fn) in with_evflow.VARIANTS.items() if q in chosen]
    for name, evflow_query in runs:
        q = name.split()[0]
        print(f"-- {name}")
        medians, _ = interleaved(
            {
                "evflow": lambda fn=evflow_query: fn(events),
                "bytewax": lambda q=q: with_bytewax.QUERIES[q](events),
                "reference": lambda q=q: reference.QUERIES[q](events),
            },
            args.rounds,
        )
        rows.append((name, medians))
    print(f"\n{args.events:,} events, {args.rounds} rounds, medians (seconds) and evflow's speed:")
    print(
        f"{'query':15}  evflow  bytewax  reference  vs bytewax (>= 1.5x)  "
        f"vs reference (>= 0.5x on Q3-Q8)"
    )
    for name, m in rows:
        vs_bw = m["bytewax"] / m["evflow"]
        vs_ref = m["reference"] / m["evflow"]
        ok_bw = "ok" if vs_bw >= 1.5 else "MISSED"
        ok_ref = ("ok" if vs_ref >= 0.5 else "MISSED") if name.split()[0] in STATEFUL else "-"
        print(
            f"{name:15}  {m['evflow']:6.3f}  {m['bytewax']:7.3f}  {m['reference']:9.3f}  "
            f"{vs_bw:6.2f}x {ok_bw:6}  {vs_ref:13.3f}x {ok_ref}"
        )


if __name__ == "__main__":
    main()
