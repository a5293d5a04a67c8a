"""Pictures of a pipeline: Mermaid text, Graphviz DOT, SVG and a rich tree.

Small pure functions from a pipeline to text; the builder's ``__rich__`` and
its notebook displays (``_repr_html_``, ``_repr_svg_``) only call them, and so
does ``evflow graph --format tree|mermaid|dot|svg``.

Every step is drawn with its kind, name and event type; forward routes,
dispatch handlers and the late stream of windows are labelled; dead letters
(and late events nobody reads) go to one dead-letter box by dashed red edges.

>>> from pipelines import Pipeline, sources, sinks
>>> p = Pipeline("tiny").read(sources.memory([1])).filter(lambda x: x > 0).write(sinks.memory("o"))
>>> print(to_mermaid(p))  # doctest: +NORMALIZE_WHITESPACE
flowchart LR
    s0["read: read_memory<br/>any<br/>memory"]
    s1["filter: filter<br/>any<br/>&lt;pipelines.render.lambda line 1&gt;"]
    s2["write: memory_o<br/>any"]
    dead[("dead letters<br/>RunResult.dead_letters")]
    s0 --> s1
    s1 -. dead letters .-> dead
    s1 --> s2
    s2 -. dead letters .-> dead
    classDef deadbox stroke:#c00,color:#c00
    class dead deadbox
"""

from __future__ import annotations

import html
import shutil
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from operators import Context
from pipelines._building.graph import Node
from pipelines._showing.tables import node_detail, to_tree

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline

__all__ = [
    "Box",
    "Drawing",
    "Edge",
    "describe",
    "drawing",
    "event_types",
    "has_dot",
    "to_dot",
    "to_html",
    "to_mermaid",
    "to_svg",
    "to_tree",
]

#: Steps whose failures become dead letters (merge and key-free routing cannot fail).
_FAILING = {
    "filter",
    "map",
    "flat_map",
    "inspect",
    "key_by",
    "forward",
    "aggregate",
    "join",
    "dispatch",
    "write",
}


@dataclass
class Box:
    """One step as drawn: its id, kind, name, event type and a detail line."""

    id: str
    name: str
    kind: str
    event_type: str
    detail: str = ""

    @property
    def lines(self) -> list[str]:
        """The text lines of the box."""
        lines = [f"{self.kind}: {self.name}", self.event_type]
        if self.detail and self.detail != self.name:
            lines.append(self.detail)
        return lines


@dataclass
class Edge:
    """An arrow between boxes; ``style`` is ``data``, ``late`` or ``dead``."""

    source: str
    target: str
    label: str = ""
    style: str = "data"


@dataclass
class Drawing:
    """A pipeline as boxes and edges, ready for any of the text formats."""

    name: str
    boxes: list[Box] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    dead_label: str = "RunResult.dead_letters"
    #: Whether the dead-letter box and its edges are drawn.
    show_dead: bool = True


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t)


def _hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unannotated or unresolvable: unknown
        return {}


def _named(hint: Any) -> str | None:
    """Say what a type annotation names: ``A | B`` for a union, ``tuple`` for ``tuple[int, str]``.

    >>> _named(int | None), _named(tuple[int, str]), _named(typing.Any)
    ('int', 'tuple', None)
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if isinstance(a, type) and a is not type(None)]
        return " | ".join(a.__name__ for a in args) or None
    if origin is not None:
        return _named(origin)
    return None if hint is Any else _type_name(hint)


def _returns(fn: Any) -> str | None:
    """Return the class a user function is annotated to return, if any."""
    ret = _hints(fn).get("return")
    return None if ret is None else _named(ret)


def _emits(fn: Any) -> str | None:
    """Return what a process function's context is annotated to emit (``Context[Out]``)."""
    for name, hint in _hints(fn).items():
        if name != "return" and typing.get_origin(hint) is Context:
            return _named(typing.get_args(hint)[0])
    return None


def event_types(pipeline: Pipeline) -> dict[str, str]:
    """Say what each step emits, as far as the graph tells: class names, or ``any``."""
    found: dict[str, str] = {}
    #: What the ``late`` output of a step on event time carries: its own input.
    late: dict[str, str] = {}
    for node in pipeline.graph:
        inputs = [
            late[p.node.name]
            if p.route == "late" and p.node.name in late
            else found.get(p.node.name, "any")
            for p in node.inputs
        ]
        here = inputs[0] if inputs else "any"
        if node.kind in ("aggregate", "join", "process"):
            late[node.name] = _either(inputs)
        if node.kind == "read":
            classes = node.params.get("classes")
            here = " | ".join(c.__name__ for c in classes) if classes else "any"
        elif node.kind == "filter" and "cls" in node.params:
            here = node.params["cls"].__name__
        elif node.kind in ("map", "flat_map"):
            here = (_returns(node.fn) if node.kind == "map" else None) or "any"
        elif node.kind == "merge":
            here = _either(inputs)
        elif node.kind == "aggregate":
            here = node.params["result_model"].__name__.split("_")[0]
        elif node.kind == "join":
            select = node.params["select"]
            here = "Joined" if select is None else (_returns(select) or "any")
        elif node.kind == "dispatch":
            here = "handler results"
        elif node.kind == "process":
            here = _emits(node.fn) or "any"
        found[node.name] = here
    return found


def _either(types: list[str]) -> str:
    """Say what a stream of records of any of ``types`` carries: ``A | B``, or ``any``."""
    parts: list[str] = []
    for t in types:
        parts += [p for p in t.split(" | ") if p not in parts]
    return "any" if "any" in parts or not parts else " | ".join(parts)


def describe(node: Node) -> str:
    """One line of detail for a step: routes, handlers, window, source or sink."""
    params = node.params
    if node.kind == "dispatch":
        parts = []
        for event_type, handlers in params["table"].items():
            names = ", ".join(_handler_name(h) for h in handlers)
            parts.append(f"{_type_name(event_type)} -> {names}")
        if params["default"]:
            parts.append("default -> " + ", ".join(_handler_name(h) for h in params["default"]))
        return "; ".join(parts)
    if node.kind == "read":
        return str(params["source"].label)
    if node.kind == "aggregate":
        window = params["window"]
        aggs = ", ".join(f"{n}={a.label}" for n, a in params["aggregators"].items())
        return f"{window.label if window is not None else 'running'}: {aggs}"
    return node_detail(node)


def _handler_name(handler: Any) -> str:
    name = getattr(handler, "__name__", None) or type(handler).__name__
    return "lambda" if name == "<lambda>" else name


def drawing(pipeline: Pipeline, *, dead_letters: bool = True) -> Drawing:
    """Lay the pipeline out as boxes and labelled edges (the common model).

    ``dead_letters=False`` leaves out the dead-letter box and its edges (for
    large graphs). The late stream of a window is labelled with its events' type.
    """
    types = event_types(pipeline)
    graph = pipeline.graph
    ids = {node.name: f"s{i}" for i, node in enumerate(graph)}
    draw = Drawing(pipeline.name, show_dead=dead_letters)
    sink = pipeline.dead_letter_sink
    if sink is not None:
        draw.dead_label = sink.label
    users = graph.consumers()
    for node in graph:
        draw.boxes.append(
            Box(ids[node.name], node.name, node.kind, types[node.name], describe(node))
        )
        for port in node.inputs:
            label = port.route or ""
            style = "data"
            if port.route == "late":
                style = "late"
                late: list[str] = []  # a join's late events come from both inputs
                for source in port.node.inputs:
                    late += [t for t in types[source.node.name].split(" | ") if t not in late]
                label = f"late {' | '.join(late)}"
            draw.edges.append(Edge(ids[port.node.name], ids[node.name], label, style))
        failing = node.kind in _FAILING or (node.kind == "read" and node.params.get("classes"))
        label = "dead letters" if node.policy.mode in ("dead_letter", "retry") else ""
        if node.kind in ("aggregate", "join") and not users[(node.name, "late")]:
            label = f"{label} + late" if label else "late"  # unread late events die too
        if failing and label and dead_letters:
            draw.edges.append(Edge(ids[node.name], "dead", label, "dead"))
    return draw


# -- Mermaid -----------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    return html.escape(text, quote=True).replace("#", "&num;").replace("|", "&#124;")


def to_mermaid(pipeline: Pipeline, *, dead_letters: bool = True) -> str:
    """Render the pipeline as a Mermaid flowchart (for Markdown, GitHub, docs)."""
    draw = drawing(pipeline, dead_letters=dead_letters)
    out = ["flowchart LR"]
    for box in draw.boxes:
        text = "<br/>".join(_mermaid_text(line) for line in box.lines)
        out.append(f'    {box.id}["{text}"]')
    if draw.show_dead:
        out.append(f'    dead[("dead letters<br/>{_mermaid_text(draw.dead_label)}")]')
    for edge in draw.edges:
        label = _mermaid_text(edge.label)
        if edge.style in ("dead", "late"):
            out.append(f"    {edge.source} -. {label} .-> {edge.target}")
        elif label:
            out.append(f"    {edge.source} -->|{label}| {edge.target}")
        else:
            out.append(f"    {edge.source} --> {edge.target}")
    if draw.show_dead:
        out.append("    classDef deadbox stroke:#c00,color:#c00")
        out.append("    class dead deadbox")
    return "\n".join(out)


# -- Graphviz DOT ------------------------------------------------------------


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_DOT_STYLE = {
    "data": "",
    "late": ", style=dashed, color=darkorange, fontcolor=darkorange",
    "dead": ", style=dashed, color=red3, fontcolor=red3, constraint=false",
}


def to_dot(pipeline: Pipeline, *, dead_letters: bool = True) -> str:
    """Render the pipeline as Graphviz DOT (``dot -Tsvg`` draws it)."""
    draw = drawing(pipeline, dead_letters=dead_letters)
    out = [
        f"digraph {_dot_string(draw.name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for box in draw.boxes:
        label = "\n".join(box.lines)
        out.append(f"  {box.id} [label={_dot_string(label)}];")
    if draw.show_dead:
        dead = f"dead letters\n{draw.dead_label}"
        out.append(
            f"  dead [label={_dot_string(dead)}, shape=cylinder, color=red3, fontcolor=red3];"
        )
        out.append("  { rank=sink; dead; }")
    for edge in draw.edges:
        out.append(
            f"  {edge.source} -> {edge.target} [label={_dot_string(edge.label)}"
            f"{_DOT_STYLE[edge.style]}];"
        )
    out.append("}")
    return "\n".join(out)


# -- SVG ---------------------------------------------------------------------


def has_dot() -> bool:
    """Whether the Graphviz ``dot`` program and the ``graphviz`` package are installed."""
    if shutil.which("dot") is None:
        return False
    try:
        import graphviz  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


def to_svg(pipeline: Pipeline, *, engine: str = "auto", dead_letters: bool = True) -> str:
    """Render the pipeline as SVG.

    ``engine="graphviz"`` lays it out with the ``dot`` program (through the
    ``graphviz`` package); ``"builtin"`` with evflow's own layered layout,
    which needs nothing installed; ``"auto"`` uses Graphviz when it is there.
    """
    if engine not in ("auto", "graphviz", "builtin"):
        msg = f"to_svg: engine must be 'auto', 'graphviz' or 'builtin'; got {engine!r}."
        raise ValueError(msg)
    if engine == "graphviz" or (engine == "auto" and has_dot()):
        import graphviz

        dot = to_dot(pipeline, dead_letters=dead_letters)
        svg: str = graphviz.Source(dot).pipe(format="svg", encoding="utf-8")
        return svg
    return _builtin_svg(drawing(pipeline, dead_letters=dead_letters))


_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _LINE = 250, 58, 60, 22, 14
_STROKE = {"data": "#444", "late": "#d2691e", "dead": "#c00"}


def _clip(text: str, width: int = 300) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _box_width(draw: Drawing) -> int:
    """Wide enough for the longest line of any box (about 7 px a character at 11 px)."""
    lines = [line for box in draw.boxes for line in box.lines] + [draw.dead_label]
    longest = max((len(_clip(line)) for line in lines), default=0)
    return max(_BOX_W, 24 + 7 * longest)


def _builtin_svg(draw: Drawing) -> str:
    """Lay steps out in columns by depth from the sources, dead letters in a row below."""
    box_w = _box_width(draw)  # sized to the longest label: no box clips its text
    depth: dict[str, int] = {}
    for box in draw.boxes:
        ins = [depth[e.source] for e in draw.edges if e.target == box.id and e.source in depth]
        depth[box.id] = 1 + max(ins) if ins else 0
    columns: dict[int, list[str]] = {}
    for box_id, d in depth.items():
        columns.setdefault(d, []).append(box_id)
    pos: dict[str, tuple[float, float]] = {}
    for d, members in columns.items():
        for row, box_id in enumerate(members):
            pos[box_id] = (20 + d * (box_w + _GAP_X), 20 + row * (_BOX_H + _GAP_Y))
    width = max(x for x, _ in pos.values()) + box_w + 20
    bottom = max(y for _, y in pos.values()) + _BOX_H + 3 * _GAP_Y
    pos["dead"] = ((width - box_w) / 2, bottom)
    height = bottom + _BOX_H + 20 if draw.show_dead else bottom - 2 * _GAP_Y
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" '
        f'font-size="11">',
        f"<title>pipeline {html.escape(draw.name)}</title>",
        "<defs>",
    ]
    for style, color in _STROKE.items():
        out.append(
            f'<marker id="arrow-{style}" viewBox="0 0 10 10" refX="10" refY="5" '
            f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
            f'<path d="M 0 0 L 10 5 L 0 10 z" fill="{color}"/></marker>'
        )
    out.append("</defs>")
    for edge in draw.edges:
        (x1, y1), (x2, y2) = pos[edge.source], pos[edge.target]
        if edge.target == "dead":
            # Right into the margin or gap beside the step's column, down below every
            # box, across, and down into the dead-letter box: through no other box.
            ax, ay, bx, by = x1 + box_w, y1 + _BOX_H - 12, x2 + box_w / 2, y2
            gx, lane = ax + 10, bottom - _GAP_Y
            route = f"L {gx:.0f} {ay:.0f} L {gx:.0f} {lane:.0f} L {bx:.0f} {lane:.0f}"
            mx, my = gx, lane
        elif depth[edge.target] - depth[edge.source] > 1:
            # Over several columns: along a lane below the boxes of the columns between.
            ax, ay, bx, by = x1 + box_w, y1 + _BOX_H / 2, x2, y2 + _BOX_H / 2
            between = [
                pos[b][1] + _BOX_H
                for b, d in depth.items()
                if depth[edge.source] < d < depth[edge.target]
            ]
            lane = max(between) + _GAP_Y / 2
            g1, g2 = ax + _GAP_X / 2, bx - _GAP_X / 2
            route = (
                f"L {g1:.0f} {ay:.0f} L {g1:.0f} {lane:.0f} L {g2:.0f} {lane:.0f} "
                f"L {g2:.0f} {by:.0f}"
            )
            mx, my = (g1 + g2) / 2, lane - 4
        else:
            ax, ay, bx, by = x1 + box_w, y1 + _BOX_H / 2, x2, y2 + _BOX_H / 2
            route = f"C {ax + 35:.0f} {ay:.0f} {bx - 35:.0f} {by:.0f}"
            mx, my = (ax + bx) / 2, (ay + by) / 2 - 4
        dash = ' stroke-dasharray="5,4"' if edge.style != "data" else ""
        color = _STROKE[edge.style]
        out.append(
            f'<path class="edge {edge.style}" d="M {ax:.0f} {ay:.0f} {route} {bx:.0f} {by:.0f}" '
            f'fill="none" stroke="{color}"{dash} marker-end="url(#arrow-{edge.style})"/>'
        )
        if edge.label and edge.style != "dead":
            out.append(
                f'<text x="{mx:.0f}" y="{my:.0f}" text-anchor="middle" fill="{color}" '
                f'font-size="9">{html.escape(edge.label)}</text>'
            )
        elif edge.label:
            out.append(
                f'<text x="{ax + 4:.0f}" y="{ay + 12:.0f}" fill="{color}" font-size="9">'
                f"{html.escape(edge.label)}</text>"
            )
    for box in draw.boxes:
        x, y = pos[box.id]
        out.append(
            f'<g class="step" id="{box.id}"><rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" '
            f'height="{_BOX_H}" rx="8" fill="#f7f7fb" stroke="#556"/>'
        )
        for i, line in enumerate(box.lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            out.append(
                f'<text x="{x + 10:.0f}" y="{y + 17 + i * _LINE:.0f}"{weight}>'
                f"{html.escape(_clip(line))}</text>"
            )
        out.append("</g>")
    x, y = pos["dead"]
    out.append(
        ""
        if not draw.show_dead
        else f'<g class="dead" id="dead"><rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" '
        f'height="{_BOX_H}" rx="20" fill="#fff5f5" stroke="#c00" stroke-dasharray="5,4"/>'
        f'<text x="{x + 10:.0f}" y="{y + 22:.0f}" fill="#c00" font-weight="bold">dead letters'
        f'</text><text x="{x + 10:.0f}" y="{y + 38:.0f}" fill="#c00">'
        f"{html.escape(_clip(draw.dead_label))}</text></g>"
    )
    out.append("</svg>")
    return "\n".join(out)


def to_html(pipeline: Pipeline) -> str:
    """Render the notebook display: the SVG drawing, the Mermaid text folded under it."""
    svg = to_svg(pipeline)
    if svg.startswith("<?xml"):
        svg = svg[svg.index("<svg") :]
    mermaid = html.escape(to_mermaid(pipeline))
    return (
        f'<div class="evflow-pipeline">{svg}<details><summary>Mermaid</summary>'
        f"<pre>{mermaid}</pre></details></div>"
    )
