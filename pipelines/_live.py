"""The live view of a running pipeline: per-step counts and rates, redrawn as it runs."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipelines._compile import Compiled

__all__ = ["LiveView"]

_SHOWN = ("in", "out", "filtered", "dead", "late", "aggregated", "handled", "open")


def watermark_lines(compiled: Compiled) -> list[str]:
    """Describe each windowed step's event-time progress, one line each.

    The lag is how far the watermark (what closes windows) is behind the
    newest event time seen: the allowed delay plus any slow partition.
    """
    lines = []
    for step, (mark, newest) in sorted(compiled.counters.progress().items()):
        if mark == math.inf:
            lines.append(f"{step}: input ended, every window closed")
        elif mark == -math.inf:
            lines.append(f"{step}: no watermark yet (a partition has sent nothing)")
        else:
            when = datetime.fromtimestamp(mark, timezone.utc).isoformat(timespec="seconds")
            lines.append(
                f"{step}: watermark {when}, lag {newest - mark:,.1f} s behind the newest event"
            )
    return lines


class LiveView:
    """Redraw per-step counts of the run a few times a second (a rich ``Live``).

    Use it as the ``monitor`` of a run, inside ``with``:

    >>> import io
    >>> from pipelines import Pipeline, sources, sinks
    >>> view = LiveView(Console(file=io.StringIO()))
    >>> with view:
    ...     _ = Pipeline("p").read(sources.memory([1])).write(sinks.memory("o")).run(monitor=view)
    >>> view.frames > 0
    True
    """

    def __init__(self, console: Console, refresh_per_second: float = 4.0) -> None:
        """Draw on ``console``."""
        self.console = console
        self.compiled: Compiled | None = None
        self.started = time.perf_counter()
        self.last: tuple[float, int, int] = (self.started, 0, 0)
        self.rates = (0.0, 0.0)
        self.frames = 0
        self.live = Live(
            get_renderable=self.render,
            console=console,
            refresh_per_second=refresh_per_second,
            transient=True,
        )

    def __call__(self, compiled: Compiled) -> None:
        """Watch ``compiled`` (called by the run, before it starts)."""
        self.compiled = compiled
        self.started = time.perf_counter()
        self.last = (self.started, 0, 0)

    def __enter__(self) -> LiveView:
        """Start drawing."""
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop drawing (the live display goes; the summary follows it)."""
        self.render()
        self.live.stop()

    def render(self) -> Any:
        """Return the current frame."""
        self.frames += 1
        compiled = self.compiled
        if compiled is None:
            return Text("starting...")
        totals = compiled.counters.totals()
        read = sum(row["in"] for step, row in totals.items() if compiled.kinds[step] == "read")
        written = sum(row["out"] for step, row in totals.items() if compiled.kinds[step] == "write")
        now = time.perf_counter()
        then, read_before, written_before = self.last
        if now - then >= 0.5:
            span = now - then
            self.rates = ((read - read_before) / span, (written - written_before) / span)
            self.last = (now, read, written)
        table = Table(title=f"running for {now - self.started:.1f}s", expand=False)
        table.add_column("step")
        table.add_column("kind")
        for name in _SHOWN:
            table.add_column(name, justify="right")
        for step, row in totals.items():
            table.add_row(
                step, compiled.kinds[step], *(str(row[n]) if row[n] else "." for n in _SHOWN)
            )
        dead = sum(row["dead"] for row in totals.values())
        late = sum(row["late"] for row in totals.values())
        line = Text(
            f"events in {self.rates[0]:,.0f}/s, out {self.rates[1]:,.0f}/s; "
            f"read {read:,}, written {written:,}, dead letters {dead:,}, late events {late:,}"
        )
        marks = [Text(m) for m in watermark_lines(compiled)]
        return Group(line, table, *marks)
