"""Rendering: small pure functions from a pipeline or result to rich output."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from operators import describe_function
from pipelines._building.graph import Node
from pipelines._showing.html import COUNT_COLUMNS

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline
    from pipelines._showing.result import RunResult

__all__ = ["node_detail", "node_label", "result_tables", "summary_table", "to_tree"]


def node_detail(node: Node) -> str:
    """Say in plain text what a step calls or touches, and its policy when not the default."""
    kind = node.kind
    detail = ""
    if kind == "read":
        detail = node.params["source"].label
        classes = node.params.get("classes")
        if classes:
            detail += " as " + " | ".join(c.__name__ for c in classes)
    elif kind == "write":
        detail = node.params["sink"].label
    elif kind == "forward":
        detail = ", ".join(node.params["routes"]) + f" (mode={node.params['mode']})"
        if node.params["otherwise"]:
            detail += f", otherwise={node.params['otherwise']}"
    elif kind == "filter" and "cls" in node.params:
        detail = node.params["cls"].__name__
    elif kind == "join":
        detail = join_detail(node.params)
    elif node.fn is not None:
        detail = describe_function(node.fn)
    policy = "" if node.policy.mode == "dead_letter" else f" [on_error={node.policy.mode}]"
    return f"{detail}{policy}"


def join_detail(params: Any) -> str:
    """Say what a join matches: its window, its interval, or its table.

    >>> from operators import windows
    >>> join_detail({"kind": "interval", "how": "left", "lower": 0.0, "upper": 600.0})
    'left join between 0s and 600s'
    >>> join_detail({"kind": "window", "how": "inner", "window": windows.tumbling(seconds=60)})
    'inner join in tumbling_60s'
    """
    kind = params["kind"]
    if kind == "window":
        return f"{params['how']} join in {params['window'].label}"
    if kind == "interval":
        return f"{params['how']} join between {params['lower']:g}s and {params['upper']:g}s"
    ttl = params.get("ttl")
    life = "" if ttl is None else f", ttl {ttl:g}s"
    return f"as of the table{life}, missing: {params['missing']}"


def node_label(node: Node) -> str:
    """Describe one step in a line of rich markup: kind, name and what it calls or touches."""
    text = escape(node_detail(node))
    return f"[bold]{node.name}[/bold] [dim]{node.kind}[/dim] {text}".rstrip()


def to_tree(pipeline: Pipeline) -> Tree:
    """Render the pipeline's graph as a rich tree, sources at the roots."""
    graph = pipeline.graph
    users = graph.consumers()
    root = Tree(f"[bold cyan]pipeline {pipeline.name}[/bold cyan]")
    shown: set[str] = set()

    def grow(branch: Tree, node: Node) -> None:
        here = branch.add(node_label(node))
        if node.name in shown:
            return
        shown.add(node.name)
        for port in node.ports():
            target = here if port is None else here.add(f"[magenta]route {port}[/magenta]")
            for user in users[(node.name, port)]:
                if user.kind == "merge" and user.name in shown:
                    target.add(f"[dim]-> {user.name}[/dim]")
                else:
                    grow(target, user)

    for node in graph:
        if node.kind == "read":
            grow(root, node)
    if pipeline.dead_letter_sink is not None:
        root.add(f"[red]dead letters[/red] -> {pipeline.dead_letter_sink.label}")
    return root


def summary_table(result: RunResult) -> Table:
    """Per-step counts with totals, and whether they reconcile."""
    ok = "[green]reconciles[/green]" if result.reconciles else "[red]does NOT reconcile[/red]"
    if result.partial:
        ok = (
            f"the share of cluster member {result.member} of {result.processes} only: "
            f"records cross members, so counts reconcile over the whole cluster, not here"
        )
    table = Table(
        title=f"pipeline {result.pipeline}: {result.workers} worker(s)"
        + (f" x {result.processes} processes" if result.processes > 1 else "")
        + f", {result.seconds:.2f}s",
        caption=(
            f"read {result.read} + created {result.created}{result.copies_term} = written "
            f"{result.written} "
            f"+ filtered {result.filtered} + unrouted {result.unrouted} + dead "
            f"{result.dead} + skipped {result.skipped} + aggregated {result.aggregated} + "
            f"handled {result.handled}: {ok}{escape(result.notes)}"
            + "".join(f"\n[bold red]warning:[/bold red] {escape(w)}" for w in result.warnings)
        ),
    )
    # Only the columns that have something in them (received and out always).
    columns = [
        (field, header)
        for field, header in COUNT_COLUMNS
        if field in ("received", "out") or any(getattr(c, field) for c in result.counts.values())
    ]
    table.add_column("step")
    table.add_column("kind")
    for _, header in columns:
        table.add_column(header, justify="right")
    for counts in result.counts.values():
        values = [getattr(counts, field) for field, _ in columns]
        table.add_row(counts.step, counts.kind, *(str(v) if v else "." for v in values))
    totals = {
        "received": result.read,
        "out": result.written,
        "open": result.open_windows,
    }
    table.add_row(
        "[bold]total[/bold]",
        "",
        *(str(totals.get(field, getattr(result, field, 0))) for field, _ in columns),
        end_section=True,
    )
    return table


def _cell(value: Any) -> str:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return escape(text if len(text) <= 60 else text[:59] + "\u2026")


def records_table(title: str, records: list[Any], limit: int = 20) -> Table:
    """Show the first ``limit`` records as a table, one column per field."""
    from pipelines._showing.html import record_columns

    headers, rows = record_columns(records, limit)
    more = len(records) - len(rows)
    table = Table(title=title, caption=f"... and {more:,} more" if more > 0 else None)
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def result_tables(result: RunResult, limit: int = 20) -> Group:
    """Render counts, then each memory output, then dead letters, as rich tables."""
    parts: list[Any] = [summary_table(result)]
    for name, records in result.outputs.items():
        parts.append(records_table(f"output {name} ({len(records):,})", records, limit))
    if result.dead_letters:
        total = sum(result.dead_letter_counts.values())
        kept = len(result.dead_letters)
        shown = f"{total:,}" if kept == total else f"{total:,}; the first {kept:,} kept"
        table = Table(title=f"dead letters ({shown})")
        for column in ("step", "kind", "error_type", "message", "payload"):
            table.add_column(column)
        for letter in result.dead_letters[:limit]:
            columns = ("step", "kind", "error_type", "message", "payload")
            table.add_row(*(_cell(getattr(letter, c)) for c in columns))
        parts.append(table)
    return Group(*parts)
