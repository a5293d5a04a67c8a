"""`RunResult`: what a run produced, and counts that reconcile."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from operators import DEAD_LETTERS_KEPT, DeadLetter, count_dead
from pipelines._showing.html import COUNT_COLUMNS

__all__ = ["COUNT_COLUMNS", "RunResult", "StepCounts"]


@dataclass(frozen=True)
class StepCounts:
    """What one step saw: records in and out, and where the others went.

    For every step, ``received + created == out + filtered + unrouted + dead +
    skipped + aggregated``, where ``created`` counts records a step made (a
    flat_map's outputs past the first, copies for several routes or readers,
    an aggregate's results) and ``aggregated`` the events an aggregate took
    in. ``open`` is what the step still holds: windows, join state, or a
    process step's key states, held events and pending timers;
    ``handled`` counts deliveries whose dispatch handler returned nothing.
    """

    step: str
    kind: str
    received: int = 0
    out: int = 0
    filtered: int = 0
    unrouted: int = 0
    dead: int = 0
    skipped: int = 0
    created: int = 0
    aggregated: int = 0
    open: int = 0
    handled: int = 0
    #: Events behind the watermark (already counted as out to the late stream, or dead).
    late: int = 0
    #: Key states a process step dropped: past their ttl, or left when the input ended
    #: (after every held event was delivered and every timer fired).
    expired: int = 0
    #: Timers a process step's ``on_timer`` set once the input had ended: they never
    #: fire (a periodic timer stops there).
    unfired: int = 0
    #: Early results of windows still open (``aggregate(emit="early")``), among ``out``.
    early: int = 0
    #: Copies handed to the further steps that read this one (a step read by two
    #: others hands each record on twice): not in ``out``, which counts each once.
    copies: int = 0

    @property
    def balanced(self) -> bool:
        """Whether this step's counts add up."""
        return self.received + self.created == (
            self.out
            + self.filtered
            + self.unrouted
            + self.dead
            + self.skipped
            + self.aggregated
            + self.handled
        )


class StepCountsByName(dict[str, StepCounts]):
    """Each step's counts by its name; a name the run has no step of says the names it has.

    >>> StepCountsByName(read=StepCounts("read", "read"))["reed"]
    Traceback (most recent call last):
    ...
    KeyError: "the run has no step 'reed'; its steps: ['read']. Hint: did you mean 'read'?"
    """

    def __missing__(self, step: str) -> StepCounts:
        close = difflib.get_close_matches(str(step), list(self), n=1)
        hint = f" Hint: did you mean {close[0]!r}?" if close else ""
        msg = f"the run has no step {step!r}; its steps: {list(self)}.{hint}"
        raise KeyError(msg)


#: What a run's result is often asked for by, and where it is.
_RESULT_MEANT = {
    **dict.fromkeys(
        ("output", "results", "records", "data", "out", "values"),
        "result['o'] is what memory sink 'o' kept; result.outputs holds them all by name.",
    ),
    **dict.fromkeys(
        ("errors", "failures", "failed", "dlq", "dead_letter", "deadletters", "bad"),
        "result.dead_letters holds them (result.dead counts them).",
    ),
    **dict.fromkeys(
        ("ok", "success", "valid", "balanced", "reconciled"),
        "result.reconciles says whether every record read is accounted for.",
    ),
    **dict.fromkeys(
        ("steps", "stats", "metrics", "step_counts"),
        "result.counts['step'] holds each step's counts; result.summary() shows them.",
    ),
}


class RunResult:
    """The outcome of a run: memory-sink outputs, dead letters, counts.

    Counts reconcile for a bounded input:
    ``read + created + copies == written + filtered + unrouted + dead + skipped +
    aggregated + handled`` (``copies``: records a step handed to more than one reader).
    """

    def __init__(
        self,
        pipeline: str,
        outputs: dict[str, list[Any]],
        dead_letters: list[DeadLetter],
        counts: dict[str, StepCounts],
        workers: int,
        seconds: float,
        processes: int = 1,
        *,
        dead_counts: dict[tuple[str, str], int] | None = None,
    ) -> None:
        """Hold the parts of a finished run."""
        self.processes = processes
        self.pipeline = pipeline
        self.outputs = outputs
        #: The dead letters kept in memory: all of them up to
        #: ``operators.DEAD_LETTERS_KEPT``, the first ones beyond (see
        #: `dead_letter_counts` for exact counts; a dead-letter sink gets them all).
        self.dead_letters = dead_letters
        if dead_counts is None:
            dead_counts = count_dead(dead_letters)
        #: Exact numbers of dead letters kept or counted, by ``(step, kind)``.
        self.dead_letter_counts = dead_counts
        self.counts = StepCountsByName(counts)
        self.workers = workers
        self.seconds = seconds
        #: How many times a supervised run started its cluster again.
        self.restarts = 0
        #: The process id of a cluster member started by hand: its counts are
        #: its own share only (records cross members), so they are partial.
        self.member: int | None = None
        #: The recovery store a run resumed from (None: no store, or a fresh one).
        self.resumed_from: str | None = None

    def __getattr__(self, name: str) -> Any:
        """Say where what a name that is none asks for is (``result.errors``: ``dead_letters``).

        >>> from pipelines import Pipeline, sources, sinks
        >>> Pipeline("p").read(sources.memory([1])).write(sinks.memory("o")).run().output
        Traceback (most recent call last):
        ...
        AttributeError: a RunResult has no 'output'. Hint: result['o'] is what memory sink 'o' ...
        """
        if name.startswith("__") or name in ("outputs", "counts", "dead_letters"):
            raise AttributeError(name)  # (being made, or unpickled)
        if name in self.outputs:
            meant = f"result[{name!r}] is what memory sink {name!r} kept."
        else:
            close = difflib.get_close_matches(name, [a for a in dir(self) if a[0] != "_"], n=1)
            meant = _RESULT_MEANT.get(name.lower()) or (
                f"did you mean {close[0]!r}?" if close else "see help(RunResult)."
            )
        msg = f"a RunResult has no {name!r}. Hint: {meant}"
        raise AttributeError(msg)

    @property
    def partial(self) -> bool:
        """Whether the counts are one cluster member's share (they reconcile only in all)."""
        return self.member is not None

    def _sum(self, field: str, kinds: tuple[str, ...] | None = None) -> int:
        return sum(
            getattr(c, field) for c in self.counts.values() if kinds is None or c.kind in kinds
        )

    @property
    def read(self) -> int:
        """Records read from every source."""
        return self._sum("received", ("read",))

    @property
    def written(self) -> int:
        """Records written to every sink (dead letters not included)."""
        return self._sum("out", ("write",))

    @property
    def filtered(self) -> int:
        """Records dropped by filters (and flat_maps that returned nothing)."""
        return self._sum("filtered")

    @property
    def unrouted(self) -> int:
        """Records that matched no route of a forward without ``otherwise``."""
        return self._sum("unrouted")

    @property
    def dead(self) -> int:
        """Records that became dead letters."""
        return self._sum("dead") - self.letters_unwritten

    @property
    def letters_unwritten(self) -> int:
        """Dead letters that did not reach the dead-letter sink: kept in `dead_letters` alone.

        It refused them, or they were made by an output that cannot hand them
        on to it (an exactly-once sink's in a run with recovery).
        """
        return self._sum("dead", ("dead_letters",))

    @property
    def skipped(self) -> int:
        """Failing records dropped by the ``skip`` policy."""
        return self._sum("skipped")

    @property
    def created(self) -> int:
        """Extra records made by flat_maps, multi-route copies and fan-out."""
        return self._sum("created")

    @property
    def aggregated(self) -> int:
        """Events taken into aggregates (windows or running aggregates)."""
        return self._sum("aggregated")

    @property
    def handled(self) -> int:
        """Deliveries to dispatch handlers that returned nothing."""
        return self._sum("handled")

    @property
    def open_windows(self) -> int:
        """Windows, key states, held events and timers still held (zero once a bounded run ends)."""
        return self._sum("open")

    @property
    def expired(self) -> int:
        """Key states dropped by process steps (past their ttl, or at the end of input)."""
        return self._sum("expired")

    @property
    def unfired(self) -> int:
        """Timers set by process steps' ``on_timer`` after the input ended: never fired."""
        return self._sum("unfired")

    @property
    def copies(self) -> int:
        """Records handed to more than one next step, counted once per further step."""
        return self._sum("copies")

    @property
    def copies_term(self) -> str:
        """The copies in the reconciliation line ("" when no step was read twice)."""
        return f" + copies {self.copies}" if self.copies else ""

    @property
    def early(self) -> int:
        """Early results emitted by windows still open (counted in created and written too)."""
        return self._sum("early")

    @property
    def notes(self) -> str:
        """The reconciliation line's notes: early results, dropped key states ("" when none)."""
        notes = []
        if self.early:
            notes.append(f"{self.early} early results of open windows among those made")
        if self.expired:
            notes.append(
                f"{self.expired} key states dropped: past their ttl or at the end of input"
            )
        if self.unfired:
            notes.append(f"{self.unfired} timers set after the end of input, never fired")
        if self.resumed_from is not None and not self.read:
            notes.append(
                f"resumed from recovery store {self.resumed_from!r}, whose runs had read their "
                f"input to its end: nothing new was left to read (another store, or none, "
                f"runs it again from the start)"
            )
        if self.open_windows:
            notes.append(
                f"{self.open_windows} windows, key states, held records and timers still "
                f"open when the run stopped: what they took in was not emitted (a rerun "
                f"resumes them only from a recovery store)"
            )
        return f" ({'; '.join(notes)})" if notes else ""

    @property
    def reconciles(self) -> bool:
        """Whether every record read is accounted for, step by step and in all."""
        total = (
            self.written
            + self.filtered
            + self.unrouted
            + self.dead
            + self.skipped
            + self.aggregated
            + self.handled
        )
        made = self.read + self.created + self.copies
        return made == total and all(c.balanced for c in self.counts.values())

    @property
    def dead_ratio(self) -> float:
        """The share of the records read that became dead letters (0.0 when none was read)."""
        return self.dead / self.read if self.read else 0.0

    @property
    def warnings(self) -> list[str]:
        """Steps that turned every record they received into a dead letter.

        Such a step (a typo in a lambda, a wrong field) lets the run "succeed"
        while nothing gets through it, so the summary says so.

        >>> from pipelines import Pipeline, sources, sinks
        >>> r = (Pipeline("p").read(sources.memory([1, 2])).map(lambda x: x.amout)
        ...      .write(sinks.memory("o")).run())
        >>> r.warnings
        ["step 'map' turned all 2 records it received into dead letters (user_error)"]
        """
        found = []
        for counts in self.counts.values():
            seen = counts.received + counts.created
            if counts.kind == "dead_letters":
                if counts.dead:
                    found.append(
                        f"{counts.dead:,} of the {seen:,} dead letters did not reach the "
                        f"dead-letter sink: they are kept in the result's dead_letters alone "
                        f"(the first {DEAD_LETTERS_KEPT:,}), each message saying why"
                    )
                continue
            if seen and counts.dead == seen:
                kinds = sorted(
                    kind
                    for (step, kind), n in self.dead_letter_counts.items()
                    if step == counts.step and n
                )
                why = f" ({', '.join(kinds)})" if kinds else ""
                found.append(
                    f"step {counts.step!r} turned all {seen:,} records it received into "
                    f"dead letters{why}"
                )
        return found

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as plain data (for JSON): totals, steps, dead letters by kind.

        >>> from pipelines import Pipeline, sources, sinks
        >>> r = Pipeline("p").read(sources.memory([1, 2])).write(sinks.memory("o")).run()
        >>> d = r.to_dict()
        >>> step = d["steps"].get("memory_o")
        >>> d["read"], d["written"], d["reconciles"], step.get("out")
        (2, 2, True, 2)
        """
        kinds: dict[str, int] = {}
        for (_, kind), n in self.dead_letter_counts.items():
            kinds[kind] = kinds.get(kind, 0) + n
        return {
            "pipeline": self.pipeline,
            "workers": self.workers,
            "processes": self.processes,
            "restarts": self.restarts,
            "seconds": round(self.seconds, 6),
            "read": self.read,
            "written": self.written,
            "filtered": self.filtered,
            "unrouted": self.unrouted,
            "dead": self.dead,
            "skipped": self.skipped,
            "created": self.created,
            "copies": self.copies,
            "aggregated": self.aggregated,
            "handled": self.handled,
            "open": self.open_windows,
            "expired": self.expired,
            "unfired": self.unfired,
            "early": self.early,
            "reconciles": None if self.partial else self.reconciles,
            "dead_ratio": round(self.dead_ratio, 6),
            "warnings": self.warnings,
            "member": self.member,
            "resumed_from": self.resumed_from,
            "steps": {
                step: {k: v for k, v in vars(c).items() if k != "step"}
                for step, c in self.counts.items()
            },
            "dead_letters_kept": kinds,
            "dead_letters_in_memory": len(self.dead_letters),
            "outputs": {name: len(items) for name, items in self.outputs.items()},
        }

    def __getitem__(self, name: str) -> list[Any]:
        """Return the outputs of memory sink ``name``."""
        return self._output(name)

    def __contains__(self, name: object) -> bool:
        """Whether the run has a memory output ``name``.

        >>> from pipelines import Pipeline, sources, sinks
        >>> r = Pipeline("p").read(sources.memory([1])).write(sinks.memory("o")).run()
        >>> "o" in r, "x" in r, list(r)
        (True, False, ['o'])
        """
        return name in self.outputs

    def __iter__(self) -> Iterator[str]:
        """Iterate over the memory outputs' names, as a dict over its keys."""
        return iter(self.outputs)

    def __repr__(self) -> str:
        """Summarise in one line."""
        return (
            f"RunResult({self.pipeline!r}, read={self.read}, written={self.written}, "
            f"filtered={self.filtered}, unrouted={self.unrouted}, dead={self.dead}, "
            f"skipped={self.skipped}, created={self.created}, aggregated={self.aggregated}, "
            f"reconciles={self.reconciles})"
        )

    def summary(self) -> Any:
        """Return a rich table of per-step counts with the totals line."""
        from pipelines._showing.tables import summary_table

        return summary_table(self)

    def to_dicts(self, name: str) -> list[dict[str, Any]]:
        """Return memory output ``name`` as a list of dicts (events by their fields).

        >>> from pipelines import Pipeline, sources, sinks
        >>> r = Pipeline("p").read(sources.memory([1, 2])).write(sinks.memory("o")).run()
        >>> r.to_dicts("o")
        [{'value': 1}, {'value': 2}]
        """
        from pipelines._showing.html import record_dict

        return [record_dict(r) for r in self._output(name)]

    def to_pandas(self, name: str | None = None) -> Any:
        """Return memory output ``name`` (or the dead letters) as a pandas DataFrame.

        Needs pandas (``pip install pandas``); evflow does not require it.

        >>> from pipelines import Pipeline, sources, sinks
        >>> p = Pipeline("p").read(sources.memory([{"a": 1}, {"a": 2}]))
        >>> p.write(sinks.memory("o")).run().to_pandas("o")["a"].tolist()
        [1, 2]
        """
        try:
            import pandas as pd  # type: ignore[import-untyped]
        except ImportError:
            msg = (
                "RunResult.to_pandas needs pandas, which is not installed. Hint: pip install "
                "pandas, or use RunResult.to_dicts(name) for plain dicts."
            )
            raise ImportError(msg) from None
        if name is None:
            return pd.DataFrame([d.model_dump() for d in self.dead_letters])
        return pd.DataFrame(self.to_dicts(name))

    def _output(self, name: str) -> list[Any]:
        if name not in self.outputs:
            known = ", ".join(sorted(self.outputs)) or "none"
            msg = (
                f"run of pipeline {self.pipeline!r} has no memory output {name!r}; it has: "
                f"{known}. Hint: write the stream to sinks.memory({name!r})."
            )
            raise KeyError(msg)
        return self.outputs[name]

    def tables(self, limit: int = 20) -> Any:
        """Return rich tables: counts, the first ``limit`` records of each output, dead letters."""
        from pipelines._showing.tables import result_tables

        return result_tables(self, limit)

    def __rich__(self) -> Any:
        """Render as tables: counts, outputs and dead letters."""
        return self.tables()

    def _repr_html_(self) -> str:
        """Show as HTML tables in a notebook: counts, outputs, dead letters."""
        from pipelines._showing.html import result_html

        return result_html(self)
