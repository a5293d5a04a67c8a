"""HTML tables for notebooks: records, dead letters and per-step counts.

Small pure functions from data to markup (escaped, well-formed XHTML, so it
parses as XML); `RunResult`, previews and the notebook progress display call
them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from operators import DeadLetter
    from pipelines._showing.result import RunResult

__all__ = [
    "counts_html",
    "dead_letters_html",
    "progress_html",
    "record_columns",
    "record_dict",
    "records_html",
    "result_html",
    "table_html",
]

#: The count columns of summaries, in order: (StepCounts field, header); the
#: text tables (`pipelines._showing.tables`) show them too.
COUNT_COLUMNS = (
    ("received", "in"),
    ("out", "out"),
    ("filtered", "filtered"),
    ("unrouted", "unrouted"),
    ("dead", "dead"),
    ("skipped", "skipped"),
    ("created", "created"),
    ("aggregated", "aggregated"),
    ("handled", "handled"),
    ("late", "late"),
    ("open", "open"),
    ("expired", "expired"),
    ("unfired", "unfired"),
    ("early", "early"),
    ("copies", "copies"),
)

#: Rows shown per table before "... and N more".
LIMIT = 20


def record_dict(record: Any) -> dict[str, Any]:
    """Turn an output record into a flat dict (events by their fields).

    >>> record_dict({"a": 1})
    {'a': 1}
    >>> record_dict(3)
    {'value': 3}
    """
    if isinstance(record, BaseModel):
        return record.model_dump()
    if isinstance(record, Mapping):
        return dict(record)
    if isinstance(record, tuple) and hasattr(record, "_asdict"):
        return dict(record._asdict())
    return {"value": record}


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        text = value.isoformat()
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    if len(text) > 200:
        text = text[:197] + "..."
    return escape(text)


def table_html(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    caption: str | None = None,
    total: int | None = None,
) -> str:
    """Render rows as an HTML table; ``total`` rows existed if more than shown.

    >>> table_html(["a"], [["<b>"]])[-50:]
    '<tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
    """
    parts = ['<table class="evflow">']
    if caption:
        parts.append(f"<caption>{escape(caption)}</caption>")
    parts.append("<thead><tr>")
    parts.extend(f"<th>{escape(h)}</th>" for h in headers)
    parts.append("</tr></thead><tbody>")
    shown = 0
    for row in rows:
        shown += 1
        parts.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
    if total is not None and total > shown:
        parts.append(f'<tr><td colspan="{len(headers)}">... and {total - shown:,} more</td></tr>')
    parts.append("</tbody></table>")
    return "".join(parts)


def record_columns(records: Sequence[Any], limit: int) -> tuple[list[str], list[list[Any]]]:
    """Lay the first ``limit`` records out as columns (every field seen) and rows.

    >>> record_columns([{"a": 1}, {"b": 2}], 10)
    (['a', 'b'], [[1, ''], ['', 2]])
    """
    dicts = [record_dict(r) for r in records[:limit]]
    headers: list[str] = []
    for d in dicts:
        headers.extend(k for k in d if k not in headers)
    return headers or ["value"], [[d.get(h, "") for h in headers] for d in dicts]


def records_html(records: Sequence[Any], *, caption: str | None = None, limit: int = LIMIT) -> str:
    """Render the first ``limit`` records as a table, one column per field."""
    headers, rows = record_columns(records, limit)
    return table_html(headers, rows, caption=caption, total=len(records))


_LETTER_FIELDS = ("step", "kind", "error_type", "message", "payload")


def dead_letters_html(letters: Sequence[DeadLetter], *, limit: int = LIMIT) -> str:
    """Render dead letters: where, what kind, why, and the payload."""
    rows = [[getattr(d, f) for f in _LETTER_FIELDS] for d in letters[:limit]]
    caption = f"dead letters ({len(letters):,})"
    return table_html(list(_LETTER_FIELDS), rows, caption=caption, total=len(letters))


def counts_html(result: RunResult) -> str:
    """Render per-step counts with the reconciliation line as the caption."""
    rows = [
        [c.step, c.kind, *(getattr(c, f) for f, _ in COUNT_COLUMNS)] for c in result.counts.values()
    ]
    verdict = "reconciles" if result.reconciles else "does NOT reconcile"
    caption = (
        f"read {result.read} + created {result.created}{result.copies_term} = written "
        f"{result.written} + "
        f"filtered {result.filtered} + unrouted {result.unrouted} + dead {result.dead} + "
        f"skipped {result.skipped} + aggregated {result.aggregated} + handled "
        f"{result.handled}: {verdict}{result.notes}"
    )
    headers = ["step", "kind", *(h for _, h in COUNT_COLUMNS)]
    return table_html(headers, rows, caption=caption)


def result_html(result: RunResult, *, limit: int = LIMIT) -> str:
    """Render a whole result: heading, counts, each output, dead letters."""
    where = f"{result.workers} worker(s)"
    if result.processes > 1:
        where += f" x {result.processes} processes"
    parts = [
        '<div class="evflow-result">',
        f"<h4>pipeline {escape(result.pipeline)}: {escape(where)}, {result.seconds:.2f} s</h4>",
        counts_html(result),
    ]
    parts += [f'<p class="evflow-warning"><b>warning:</b> {escape(w)}</p>' for w in result.warnings]
    for name, records in result.outputs.items():
        parts.append(
            records_html(records, caption=f"output {name} ({len(records):,})", limit=limit)
        )
    if result.dead_letters:
        parts.append(dead_letters_html(result.dead_letters, limit=limit))
    parts.append("</div>")
    return "".join(parts)


def progress_html(
    title: str,
    totals: Mapping[str, Mapping[str, int]],
    kinds: Mapping[str, str],
    shown: Sequence[str],
    line: str,
    notes: Sequence[str],
) -> str:
    """Render a running pipeline's counts (the notebook's live display), notes below."""
    rows = [[step, kinds[step], *(row[n] for n in shown)] for step, row in totals.items()]
    parts = [
        '<div class="evflow-progress">',
        f"<p>{escape(title)}: {escape(line)}</p>",
        table_html(["step", "kind", *shown], rows),
        *(f"<p>{escape(note)}</p>" for note in notes),
        "</div>",
    ]
    return "".join(parts)
