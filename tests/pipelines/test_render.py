from __future__ import annotations

import copy
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from rich.console import Console

from operators import Context, Event, agg, windows
from pipelines import Pipeline, sinks, sources
from pipelines._cli import main
from pipelines.render import to_dot, to_mermaid, to_svg, to_tree
from tests.helpers import Purchase, View


def render(obj: object) -> str:
    console = Console(width=200, record=True)
    console.print(obj)
    return console.export_text()


def test_tree_shows_every_step_route_and_dead_letter_sink() -> None:
    routes = (
        Pipeline("shop")
        .read(sources.memory([], schema=View | Purchase))
        .filter(Purchase, on_error="skip")
        .forward(big=lambda e: e.amount > 9, otherwise="rest")
    )
    p = (
        routes.big.write(sinks.memory("big")) | routes.rest.write(sinks.memory("rest"))
    ).dead_letters(sinks.memory("dead"))
    text = render(to_tree(p))
    for part in (
        "pipeline shop",
        "read_memory read memory as View | Purchase",
        "filter_Purchase filter Purchase [on_error=skip]",
        "route big",
        "route rest",
        "big_memory_big write memory_big",
        "dead letters -> memory_dead",
    ):
        assert part in text, part
    assert render(p) == text


def test_summary_table_shows_totals_and_reconciliation() -> None:
    result = (
        Pipeline("s")
        .read(sources.memory([1, 2, 3]))
        .filter(lambda x: x > 1)
        .write(sinks.memory("o"))
        .run()
    )
    text = render(result)
    assert "filter" in text and "total" in text
    assert "read 3 + created 0 = written 2 + filtered 1" in text and "reconciles" in text
    assert "RunResult('s', read=3, written=2, filtered=1" in repr(result)


# -- pictures: Mermaid, DOT, SVG, notebook displays ---------------------------

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def review(p: Purchase) -> View:
    return View(user=p.user, page="/review")


def shop() -> Pipeline:
    """Routes, a dispatch, a window whose late events are written, and one whose are not."""
    source = Pipeline("shop").read(sources.memory([], schema=View | Purchase))
    routes = source.forward(big=lambda e: isinstance(e, Purchase), otherwise="rest")
    reviewed = routes.big.dispatch({Purchase: review}, default="dead_letter").write(
        sinks.memory("reviews")
    )
    windowed = routes.rest.key_by(lambda e: e.user).window(windows.tumbling(seconds=60))
    counted = windowed.aggregate(n=agg.count(), name="per_minute")
    return (
        reviewed
        | counted.write(sinks.memory("counts"))
        | counted.late.write(sinks.memory("late"))
        | source.key_by(lambda e: e.user, name="by_user")
        .window(windows.tumbling(seconds=10))
        .aggregate(n=agg.count(), name="no_late_reader")
        .write(sinks.memory("tens"))
    )


EDGES = {
    ("read_memory", "forward_big", ""),
    ("forward_big", "big_dispatch", "big"),
    ("big_dispatch", "big_memory_reviews", ""),
    ("forward_big", "rest_key_by", "rest"),
    ("rest_key_by", "per_minute", ""),
    ("per_minute", "rest_memory_counts", ""),
    ("per_minute", "per_minute_late_memory_late", "late View | Purchase"),
    ("read_memory", "by_user", ""),
    ("by_user", "no_late_reader", ""),
    ("no_late_reader", "memory_tens", ""),
}


def parse_dot(text: str) -> tuple[dict[str, str], set[tuple[str, str, str, str]]]:
    """Read back the nodes (id -> first label line) and edges (with label and style)."""
    assert text.startswith('digraph "shop" {') and text.rstrip().endswith("}")
    nodes: dict[str, str] = {}
    edges: set[tuple[str, str, str, str]] = set()
    for line in text.splitlines()[1:-1]:
        edge = re.fullmatch(r'\s*(\w+) -> (\w+) \[label="([^"]*)"(.*)\];', line)
        node = re.fullmatch(r'\s*(\w+) \[label="((?:[^"\\]|\\.)*)"(.*)\];', line)
        if edge:
            style = "dashed" if "style=dashed" in edge.group(4) else "solid"
            edges.add((edge.group(1), edge.group(2), edge.group(3), style))
        elif node:
            nodes[node.group(1)] = node.group(2).split("\\n")
    return nodes, edges


def test_dot_has_every_step_and_edge_with_routes_late_and_dead_letters() -> None:
    p = shop()
    nodes, edges = parse_dot(to_dot(p))
    names = {n.name for n in p.graph}
    by_id = {i: lines[0].split(": ", 1)[1] for i, lines in nodes.items() if i != "dead"}
    assert set(by_id.values()) == names
    ids = {name: i for i, name in by_id.items()}
    data = {(by_id[a], by_id[b], label) for a, b, label, style in edges if b != "dead"}
    assert {e[:2] for e in data} == {e[:2] for e in EDGES} and data == {
        (a, b, label) for a, b, label in EDGES
    }
    kinds = {lines[0].split(": ")[0] for i, lines in nodes.items() if i != "dead"}
    assert kinds == {"read", "forward", "dispatch", "write", "key_by", "aggregate"}
    # event types and dispatch handlers are labelled
    assert nodes[ids["read_memory"]][1] == "View | Purchase"
    assert "Purchase -> review" in nodes[ids["big_dispatch"]][2]
    assert nodes[ids["per_minute"]][2] == "tumbling_60s: n=count()"
    # dead letters are drawn apart; late events nobody reads go there too
    dead = {(by_id[a], label, style) for a, b, label, style in edges if b == "dead"}
    assert ("forward_big", "dead letters", "dashed") in dead
    assert ("no_late_reader", "dead letters + late", "dashed") in dead
    assert ("per_minute", "dead letters", "dashed") in dead
    late_edge = [e for e in edges if e[2].startswith("late ")]
    assert len(late_edge) == 1 and by_id[late_edge[0][0]] == "per_minute"


def test_mermaid_has_every_step_and_edge() -> None:
    p = shop()
    text = to_mermaid(p)
    assert text.startswith("flowchart LR\n")
    boxes = {m[0]: m[2] for m in re.findall(r'^\s+(s\d+)\["(\w+): (\w+)', text, re.M)}
    assert set(boxes.values()) == {n.name for n in p.graph}
    arrows = re.findall(r"^\s+(s\d+) -->(?:\|(\w+)\|)? (s\d+)$", text, re.M)
    dashed = re.findall(r"^\s+(s\d+) -\. ([^.]+?) \.-> (\w+)$", text, re.M)
    data = {(boxes[a], boxes[b], label) for a, label, b in arrows}
    data |= {
        (boxes[a], boxes[b], label.replace("&#124;", "|")) for a, label, b in dashed if b != "dead"
    }
    assert data == EDGES
    assert {boxes[a] for a, _, b in dashed if b == "dead"} >= {"forward_big", "per_minute"}
    assert "class dead deadbox" in text


def test_dead_letter_edges_can_be_left_out_of_a_large_picture() -> None:
    p = shop()
    assert "dead" not in to_mermaid(p, dead_letters=False)
    nodes, edges = parse_dot(to_dot(p, dead_letters=False))
    assert "dead" not in nodes and all(b != "dead" for _, b, _, _ in edges)
    assert len(edges) == len(EDGES)
    svg = to_svg(p, engine="builtin", dead_letters=False)
    root = ElementTree.fromstring(svg)
    assert "dead letters" not in " ".join(t or "" for t in root.itertext())
    assert "dead letters" in to_svg(p, engine="builtin")


def test_svg_and_html_displays_are_well_formed() -> None:
    p = shop()
    for svg in (to_svg(p, engine="builtin"), p._repr_svg_()):
        root = ElementTree.fromstring(svg[svg.index("<svg") :])
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        text = " ".join(t or "" for t in root.itertext())
        for name in ("read_memory", "forward_big", "big_dispatch", "per_minute", "dead letters"):
            assert name in text, name
    root = ElementTree.fromstring(p._repr_html_())
    assert root.tag == "div" and root.find("{http://www.w3.org/2000/svg}svg") is not None
    assert "flowchart LR" in (root.find("details/pre").text or "")  # type: ignore[union-attr]
    builtin = ElementTree.fromstring(to_svg(p, engine="builtin"))
    ns = {"svg": "http://www.w3.org/2000/svg"}
    assert len(builtin.findall(".//svg:g[@class='step']", ns)) == len(p.graph)
    assert builtin.findall(".//svg:path[@class='edge dead']", ns)
    assert builtin.findall(".//svg:path[@class='edge late']", ns)


def test_graphviz_draws_the_dot_when_installed() -> None:
    from pipelines.render import has_dot

    if not has_dot():
        with pytest.raises(Exception, match="dot"):
            to_svg(shop(), engine="graphviz")
        return
    p = shop()
    svg = to_svg(p, engine="graphviz")
    root = ElementTree.fromstring(svg[svg.index("<svg") :])
    titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
    _, edges = parse_dot(to_dot(p))
    assert {f"s{i}" for i in range(len(p.graph))} | {"dead"} <= titles  # every step
    assert {f"{a}->{b}" for a, b, _, _ in edges} <= titles  # every edge


def test_cli_graph_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "orders.svg"
    assert main(["graph", "orders", "--format", "svg", "-o", str(out)]) == 0
    root = ElementTree.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert main(["graph", "orders", "--format", "mermaid"]) == 0
    assert capsys.readouterr().out.startswith("flowchart LR")
    assert main(["graph", "orders", "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith('digraph "orders"')
    assert main(["graph", "orders"]) == 0
    assert "pipeline orders" in capsys.readouterr().out


# -- previews and results as tables -------------------------------------------


def test_preview_on_a_sample_shows_outputs_dead_letters_and_counts(tmp_path: Path) -> None:
    target = tmp_path / "never.jsonl"
    p = (
        Pipeline("pv")
        .read(sources.memory([], schema=View | Purchase))
        .filter(Purchase)
        .write(sinks.jsonl(target))
    )
    sample = [
        '{"type": "purchase", "user": "a", "amount": 3}',
        '{"type": "view", "user": "b"}',
        '{"type": "purchase", "user": "c"}',
        "not json",
    ]
    result = p.preview(sample)
    assert not target.exists()  # a preview writes nowhere
    assert [e.user for e in result["jsonl_never"]] == ["a"]
    assert sorted(d.kind for d in result.dead_letters) == ["parse", "validation"]
    assert result.reconciles and result.read == 4
    html = result._repr_html_()
    root = ElementTree.fromstring(html)
    captions = [c.text or "" for c in root.iter("caption")]
    assert any(c.startswith("output jsonl_never (1)") for c in captions)
    assert any(c.startswith("dead letters (2)") for c in captions)
    assert any("reconciles" in c for c in captions)
    cells = [td.text for td in root.iter("td")]
    assert "validation" in cells and "parse" in cells and "a" in cells
    text = render(result)
    assert "output jsonl_never (1)" in text and "dead letters (2)" in text


def test_a_results_warnings_show_in_its_notebook_view() -> None:
    # The summary's warnings (a step that ate everything) were printed by the CLI and
    # the console view only: a notebook's view of the result did not show them.
    result = (
        Pipeline("typo")
        .read(sources.memory([1, 2, 3]))
        .map(lambda x: x.amout, name="typo")
        .write(sinks.memory("o"))
    ).run()
    [warning] = result.warnings
    root = ElementTree.fromstring(result._repr_html_())
    shown = ["".join(p.itertext()) for p in root.iter("p") if p.get("class") == "evflow-warning"]
    assert shown == [f"warning: {warning}"]
    assert "turned all 3 records" in warning


def test_the_summarys_notes_and_warnings_are_shown_as_they_are(tmp_path: Path) -> None:
    # They were read as rich markup: a store named "st[bold]" was shown as "st", in bold.
    flow = Pipeline("again").read(sources.memory([1])).write(sinks.memory("o"))
    flow.run(recovery=tmp_path / "st[bold]")
    result = flow.run(recovery=tmp_path / "st[bold]")
    assert "st[bold]" in result.notes
    shown = "".join(render(result).split())  # the caption is wrapped to the table's width
    assert "".join(f"recovery store '{tmp_path}/st[bold]'".split()) in shown


def test_preview_reads_the_first_records_of_the_source() -> None:
    p = (
        Pipeline("head")
        .read(sources.generate(lambda rng, i: i, count=None, rate=100_000))
        .map(lambda n: n * 2)
        .write(sinks.stdout())
    )
    result = p.preview(limit=7)
    assert result["stdout"] == [0, 2, 4, 6, 8, 10, 12]


def test_results_convert_to_dicts_and_dataframes() -> None:
    import pandas as pd

    events = [Purchase(user=u, amount=a, time=T0) for u, a in (("a", 1.0), ("b", 2.5))]
    result = Pipeline("df").read(sources.memory(events)).write(sinks.memory("o")).run()
    rows = result.to_dicts("o")
    assert [(r["user"], r["amount"], r["type"]) for r in rows] == [
        ("a", 1.0, "purchase"),
        ("b", 2.5, "purchase"),
    ]
    frame = result.to_pandas("o")
    assert isinstance(frame, pd.DataFrame) and list(frame["amount"]) == [1.0, 2.5]
    with pytest.raises(KeyError, match=r"no memory output 'x'; it has: o"):
        result.to_dicts("x")
    # a result reads as a dict of its outputs: `in` and iteration asked for output 0, 1, ...
    # and raised "no memory output 0"
    assert "o" in result and "x" not in result and 0 not in result
    assert list(result) == ["o"] and {name: len(result[name]) for name in result} == {"o": 2}
    # a name that is none says where it is (a bare AttributeError before)
    for asked, told in [
        ("output", r"result\['o'\] is what memory sink 'o' kept"),
        ("o", r"result\['o'\] is what memory sink 'o' kept"),
        ("errors", r"result\.dead_letters holds them"),
        ("reconcile", r"did you mean 'reconciles'\?"),
    ]:
        with pytest.raises(AttributeError, match=rf"^a RunResult has no '{asked}'\. Hint: {told}"):
            getattr(result, asked)
    assert not hasattr(result, "_repr_latex_") and copy.copy(result)["o"] == result["o"]
    broken = (
        Pipeline("dl").read(sources.memory([1, 0])).map(lambda x: 1 // x).write(sinks.memory("o"))
    ).run()
    dead = broken.to_pandas()
    assert list(dead["error_type"]) == ["ZeroDivisionError"]


def test_to_svg_names_its_engines_and_to_pandas_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    with pytest.raises(ValueError, match=r"engine must be 'auto', 'graphviz' or 'builtin'"):
        to_svg(shop(), engine="cairo")
    result = Pipeline("np").read(sources.memory([1])).write(sinks.memory("o")).run()
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match=r"to_pandas needs pandas, which is not installed"):
        result.to_pandas("o")
    assert result.to_dicts("o") == [{"value": 1}]


def test_tables_show_only_the_counters_that_have_something_in_them() -> None:
    import io

    from pipelines._showing.live import LiveView

    view = LiveView(Console(file=io.StringIO()))
    p = Pipeline("few").read(sources.memory([1, 2, 3])).filter(lambda x: x > 1)
    result = p.write(sinks.memory("o")).run(monitor=view)

    def header(renderable: Any) -> str:
        out = Console(file=io.StringIO(), width=200)
        out.print(renderable)
        text = out.file.getvalue()  # type: ignore[attr-defined]
        return next(line for line in text.splitlines() if "step" in line and "kind" in line)

    for line in (header(result.summary()), header(view.render())):
        assert "in" in line and "out" in line and "filtered" in line, line
        for empty in ("late", "open", "handled", "aggregated", "unrouted"):
            assert empty not in line, (empty, line)


def test_builtin_boxes_are_as_wide_as_their_longest_label() -> None:
    import re

    from pipelines import Pipeline, render, sinks, sources

    def a_function_with_a_rather_long_descriptive_name_for_its_work(x: int) -> int:
        return x

    p = (
        Pipeline("wide")
        .read(sources.memory([1]))
        .map(a_function_with_a_rather_long_descriptive_name_for_its_work)
        .write(sinks.memory("o"))
    )
    svg = render.to_svg(p, engine="builtin")
    assert "a_function_with_a_rather_long_descriptive_name_for_its_work" in svg
    assert "\u2026" not in svg  # nothing cut short
    widths = {int(w) for w in re.findall(r'<rect x="\d+" y="\d+" width="(\d+)"', svg)}
    longest = max(len(line) for box in render.drawing(p).boxes for line in box.lines)
    assert min(widths) >= 7 * longest


def _points(d: str) -> list[tuple[float, float]]:
    """Points along an SVG path of M, L and C commands (curves sampled)."""
    import re

    tokens = re.findall(r"[MLC]|-?\d+(?:\.\d+)?", d)
    points: list[tuple[float, float]] = []
    command = "M"
    i = 0
    while i < len(tokens):
        if tokens[i] in "MLC":
            command = tokens[i]
            i += 1
            continue
        if command == "C":
            c = [float(t) for t in tokens[i : i + 6]]
            p0 = points[-1]
            for k in range(1, 41):
                t = k / 40
                u = 1 - t
                x = u**3 * p0[0] + 3 * u * u * t * c[0] + 3 * u * t * t * c[2] + t**3 * c[4]
                y = u**3 * p0[1] + 3 * u * u * t * c[1] + 3 * u * t * t * c[3] + t**3 * c[5]
                points.append((x, y))
            i += 6
        else:
            x, y = float(tokens[i]), float(tokens[i + 1])
            if points and command == "L":
                x0, y0 = points[-1]
                points += [(x0 + (x - x0) * k / 40, y0 + (y - y0) * k / 40) for k in range(1, 40)]
            points.append((x, y))
            i += 2
    return points


def test_builtin_edges_go_through_no_other_step() -> None:
    import re

    from pipelines import render as pictures
    from pipelines.catalog import clickstream, enrichment

    rect = r'<g class="step" id="(\w+)"><rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"'
    for pipeline in (enrichment.build(count=10), clickstream.build(count=10)):
        svg = pictures.to_svg(pipeline, engine="builtin")
        boxes = {
            m.group(1): tuple(float(v) for v in m.group(2, 3, 4, 5)) for m in re.finditer(rect, svg)
        }
        ids = {b.name: b.id for b in pictures.drawing(pipeline).boxes}
        drawn = re.findall(r'<path class="edge \w+" d="([^"]+)"', svg)
        edges = pictures.drawing(pipeline).edges
        assert len(drawn) == len(edges)
        for edge, d in zip(edges, drawn, strict=True):
            ends = {edge.source, edge.target}
            for box_id, (x, y, w, h) in boxes.items():
                if box_id in ends:
                    continue
                inside = [
                    p for p in _points(d) if x + 1 < p[0] < x + w - 1 and y + 1 < p[1] < y + h - 1
                ]
                assert not inside, (pipeline.name, edge, box_id, inside[:2], ids)


class Order(Event):
    customer: str


class Payment(Event):
    customer: str


def flag(state: int, order: Order, ctx: Context[Payment]) -> int:
    return state


def pair(order: Order) -> tuple[int, str]:
    return (1, order.customer)


def test_late_streams_and_process_steps_are_drawn_with_what_they_carry() -> None:
    # A late stream was drawn with its step's results' type (Joined, the
    # aggregate's result class), a process step with its input's type.
    from pipelines import render

    p = Pipeline("shop")
    orders = p.read(sources.memory([], schema=Order), name="orders").key_by(lambda o: o.customer)
    pays = p.read(sources.memory([], schema=Payment), name="pays").key_by(
        lambda x: x.customer, name="pay_key"
    )
    joined = orders.join(pays, between=(0, 60), name="paid")
    counted = orders.window(windows.tumbling(seconds=60)).aggregate(n=agg.count(), name="n")
    flagged = orders.process(flag, initial=int, name="flag")
    flow = (
        joined.write(sinks.memory("j"), name="j")
        | joined.late.write(sinks.memory("jl"), name="jl")
        | counted.late.write(sinks.memory("cl"), name="cl")
        | flagged.write(sinks.memory("f"), name="f")
        | flagged.late.write(sinks.memory("fl"), name="fl")
        | orders.map(pair, name="pair").write(sinks.memory("m"), name="m")
    )
    types = render.event_types(flow)
    assert types["j"] == "Joined" and types["jl"] == "Order | Payment"
    assert types["cl"] == "Order"
    assert types["flag"] == types["f"] == "Payment" and types["fl"] == "Order"
    assert types["pair"] == "tuple"  # was "int | str"
    assert "Order &#124; Payment" in to_mermaid(flow)
