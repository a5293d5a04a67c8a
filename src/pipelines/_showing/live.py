"""The live view of a running pipeline: per-step counts and rates, redrawn as it runs."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipelines._running.compile import Compiled

__all__ = [
    "SHOWN",
    "LiveView",
    "NotebookProgress",
    "Progress",
    "Sample",
    "in_notebook",
    "watermark_lines",
]

#: The counters the live displays show, by step.
SHOWN = ("in", "out", "filtered", "dead", "late", "aggregated", "handled", "open")


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


@dataclass
class Sample:
    """A run's counts at one moment: by step, in all, and the rates since the last sample."""

    totals: dict[str, dict[str, int]]
    read: int
    written: int
    dead: int
    late: int
    rate_in: float
    rate_out: float
    elapsed: float

    @property
    def line(self) -> str:
        """The one-line summary the live displays show above their table."""
        return (
            f"events in {self.rate_in:,.0f}/s, out {self.rate_out:,.0f}/s; read {self.read:,}, "
            f"written {self.written:,}, dead letters {self.dead:,}, late events {self.late:,}"
        )


class Progress:
    """Sample a running pipeline's counters for live displays and metrics."""

    def __init__(self) -> None:
        """Watch nothing yet."""
        self.watch(None)

    def watch(self, compiled: Compiled | None) -> None:
        """Start watching ``compiled``; rates count from now."""
        self.compiled = compiled
        self.started = time.perf_counter()
        self._last = (self.started, 0, 0)
        self._rates = (0.0, 0.0)

    def sample(self, every: float = 0.5) -> Sample:
        """Sum the counters; rates are renewed when ``every`` seconds have passed."""
        compiled = self.compiled
        assert compiled is not None, "nothing watched yet"
        totals = compiled.counters.totals()
        kinds = compiled.kinds
        read = sum(row["in"] for step, row in totals.items() if kinds[step] == "read")
        written = sum(row["out"] for step, row in totals.items() if kinds[step] == "write")
        now = time.perf_counter()
        then, read_before, written_before = self._last
        if now - then >= every and now > then:
            span = now - then
            self._rates = ((read - read_before) / span, (written - written_before) / span)
            self._last = (now, read, written)
        return Sample(
            totals,
            read,
            written,
            sum(row["dead"] for step, row in totals.items() if kinds[step] != "dead_letters"),
            sum(row["late"] for row in totals.values()),
            *self._rates,
            now - self.started,
        )


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
        self.progress = Progress()
        self.frames = 0
        self.live = Live(
            get_renderable=self.render,
            console=console,
            refresh_per_second=refresh_per_second,
            transient=True,
        )

    @property
    def compiled(self) -> Compiled | None:
        """The pipeline being watched, once the run has compiled it."""
        return self.progress.compiled

    def __call__(self, compiled: Compiled) -> None:
        """Watch ``compiled`` (called by the run, before it starts)."""
        self.progress.watch(compiled)

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
        sample = self.progress.sample()
        table = Table(title=f"running for {sample.elapsed:.1f}s", expand=False)
        # Only the counters that have something in them (in and out always).
        shown = [
            n for n in SHOWN if n in ("in", "out") or any(r[n] for r in sample.totals.values())
        ]
        table.add_column("step")
        table.add_column("kind")
        for name in shown:
            table.add_column(name, justify="right")
        for step, row in sample.totals.items():
            table.add_row(
                step, compiled.kinds[step], *(str(row[n]) if row[n] else "." for n in shown)
            )
        marks = [Text(m) for m in watermark_lines(compiled)]
        return Group(Text(sample.line), table, *marks)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython with a kernel attached)."""
    import sys

    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class NotebookProgress:
    """The live view in a notebook: an HTML table updated in place while a run lasts.

    `Pipeline.run` uses it by itself in a Jupyter kernel (``progress=False``
    turns it off). It needs IPython, which every notebook has.
    """

    def __init__(self, interval: float = 0.5) -> None:
        """Update every ``interval`` seconds."""
        self.interval = interval
        self.progress = Progress()
        self.updates = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None

    def __call__(self, compiled: Compiled) -> None:
        """Watch ``compiled`` (called by the run, before it starts)."""
        self.progress.watch(compiled)

    def html(self, done: bool = False) -> str:
        """Return the current display."""
        from pipelines._showing.html import progress_html

        compiled = self.progress.compiled
        if compiled is None:
            return "<p>starting...</p>"
        sample = self.progress.sample(self.interval / 2)
        state = "finished" if done else "running"
        title = f"{state} for {sample.elapsed:.1f}s"
        return progress_html(
            title, sample.totals, compiled.kinds, SHOWN, sample.line, watermark_lines(compiled)
        )

    def _show(self, done: bool = False) -> None:
        from IPython.display import HTML

        self._handle.update(HTML(self.html(done)))  # type: ignore[no-untyped-call]
        self.updates += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._show()

    def __enter__(self) -> NotebookProgress:
        """Show the display and start updating it."""
        from IPython.display import HTML, display

        self._handle = display(HTML(self.html()), display_id=True)  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(target=self._loop, name="evflow-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop updating; leave the final counts shown."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._show(done=True)
