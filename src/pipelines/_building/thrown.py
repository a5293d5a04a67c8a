"""Writes whose pipeline was thrown away: branches that would never run.

Pipelines are values: ``s.filter(f).write(x)`` as a statement makes a
pipeline with that branch and drops it, and a later ``s.map(g).write(y).run()``
runs without it. `thrown_away` finds such a write for `check` to refuse.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections import deque
from typing import TYPE_CHECKING

from pipelines._building.graph import Graph, Node

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline

__all__ = ["LIVE", "Written", "caller", "dropped", "thrown_away"]


class Written:
    """A write step and the pipeline that ``write`` returned with it (until used)."""

    __slots__ = ("graph", "node", "used", "where")

    def __init__(self, graph: Graph, node: Node, where: str) -> None:
        self.graph = graph
        self.node = node
        self.where = where
        self.used = False


#: Writes whose pipeline was thrown away unused (the newest last): a branch that would
#: never run. A pipeline that shares steps with one of them is refused (`thrown_away`).
THROWN: deque[Written] = deque(maxlen=64)


def dropped(written: Written) -> None:
    """Keep ``written`` when the pipeline it came with goes unused."""
    if not written.used:
        THROWN.append(written)


#: evflow's own packages' folders (pipelines, operators): frames there are not the caller.
_OWN = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (os.path.dirname(__file__), sys.modules["operators"].__file__ or "")
)


def caller() -> str:
    """Name the file and line of the user's code that called into evflow."""
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OWN):
        frame = frame.f_back
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


#: The pipelines ``write`` returned that are still held somewhere.
LIVE: weakref.WeakSet[Pipeline] = weakref.WeakSet()


def thrown_away(pipeline: Pipeline) -> Written | None:
    """Return a write made on ``pipeline``'s steps whose pipeline was thrown away unused.

    ``a = s.filter(f).write(x)`` then ``s.map(g).write(y).run()`` runs only the
    second branch: pipelines are values, and the first was never combined
    with it (``|``). One such write is returned once (then forgotten), unless
    ``pipeline`` or a pipeline still held has a write of its name (the branch
    written again: a notebook cell run twice).
    """
    mine = {id(node) for node in pipeline.graph}
    for written in list(THROWN):
        shared = any(id(node) in mine for node in written.graph if node is not written.node)
        if not shared:
            continue
        name = written.node.name
        again = name in pipeline.graph or any(
            name in object.__getattribute__(live, "_graph") for live in list(LIVE)
        )
        THROWN.remove(written)
        if not again:
            return written
    return None
