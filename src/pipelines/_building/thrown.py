"""Steps whose stream or pipeline was thrown away: branches that would never run.

Pipelines and streams are values. ``s.filter(f)`` as a statement makes a
stream with that step and drops it, so ``s.write(x)`` after it writes every
record; ``s.map(g).write(y)`` as a statement drops a whole branch, and a
later ``s.write(z).run()`` runs without it. `watch` follows each stream and
each pipeline ``write`` returns that the user's statement throws away at once
(its value popped, unused), and `thrown_away` finds one for `check` to refuse.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import os
import sys
import weakref
from collections import deque
from types import CodeType, FrameType

from pipelines._building.graph import Graph, Node

__all__ = ["Made", "by_user", "thrown_away", "thrown_write", "used", "watch"]


class Made:
    """A step and the graph of the value (stream or pipeline) that came with it."""

    __slots__ = ("graph", "node", "pipeline", "used", "what", "where")

    def __init__(self, pipeline: str, graph: Graph, node: Node, what: str, where: str) -> None:
        self.pipeline = pipeline
        self.graph = graph
        self.node = node
        self.what = what
        self.where = where
        self.used = False


#: Steps whose value was dropped unused (the newest last): a pipeline that shares
#: steps with one of them but lacks it is refused (`thrown_away`).
THROWN: deque[Made] = deque(maxlen=1024)

#: The values `watch` follows that are still held somewhere, and what came with each.
LIVE: weakref.WeakKeyDictionary[object, Made] = weakref.WeakKeyDictionary()


def _dropped(made: Made) -> None:
    if not made.used:
        THROWN.append(made)


#: evflow's own packages' folders (pipelines, operators): frames there are not the caller.
_OWN = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (os.path.dirname(__file__), sys.modules["operators"].__file__ or "")
)


def by_user() -> bool:
    """Whether the function calling this one was called by the user's code, not evflow's."""
    frame = sys._getframe(2)
    return not os.path.abspath(frame.f_code.co_filename).startswith(_OWN)


def _caller() -> FrameType:
    """Return the frame of the user's code that called into evflow."""
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OWN):
        frame = frame.f_back
    return frame


#: Instructions that call into evflow: a method, or ``|`` (`Pipeline.__or__`).
_CALLS = ("CALL", "PRECALL", "BINARY_OP", "BINARY_OR")


@functools.lru_cache(maxsize=512)
def _discarding(code: CodeType) -> frozenset[int]:
    """Offsets in ``code`` of the calls whose value is thrown away (a ``POP_TOP`` next)."""
    caches = {"show_caches": True} if sys.version_info >= (3, 11) else {}
    found: set[int] = set()
    call: list[int] = []  # the offsets of a call and its inline caches
    for instruction in dis.get_instructions(code, **caches):
        if instruction.opname == "CACHE":
            call.append(instruction.offset)
            continue
        if instruction.opname == "POP_TOP":
            found.update(call)
        call = [instruction.offset] if instruction.opname.startswith(_CALLS) else []
    return frozenset(found)


def _discarded(frame: FrameType) -> bool:
    """Whether ``frame``'s code throws away the value of the call it is making.

    ``stream.filter(f)`` as a statement: its value is popped at once. A value
    bound to a name, passed on or shown in a notebook is not.
    """
    try:
        return frame.f_lasti in _discarding(frame.f_code)
    except Exception:  # noqa: BLE001 - code dis cannot read: taken as thrown away when dropped
        return True


def watch(value: object, pipeline: str, graph: Graph, node: Node, what: str) -> Made:
    """Follow ``value`` (which came with ``node`` of ``graph``) until it is used or dropped.

    Only a value the user's statement throws away at once is followed: one
    bound to a name and never used is left alone (a branch kept aside).
    """
    frame = _caller()
    where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
    made = Made(pipeline, graph, node, what, where)
    if _discarded(frame):
        weakref.finalize(value, _dropped, made).atexit = False
    LIVE[value] = made
    return made


def used(made: Made | None) -> None:
    """Note that the value ``made`` came with was used."""
    if made is not None:
        made.used = True


def thrown_away(graph: Graph) -> Made | None:
    """Return a step built on ``graph``'s steps, missing from it, whose value was dropped unused.

    ``s.filter(f)`` then ``s.write(x)``: the filter is not in what is written.
    ``s.filter(f).write(x)`` then ``s.map(g).write(y).run()``: the first
    branch is not in what runs (it was never combined with it, ``|``). One
    such step is returned once (then forgotten), unless ``graph``, or a value
    still held that shares steps with it, has a step of its name (built
    again: a notebook cell run twice).
    """
    mine = {id(node) for node in graph}
    for made in list(THROWN):
        combined = made.what == "|"
        if all(id(node) in mine for node in made.graph) if combined else id(made.node) in mine:
            _forget(made)  # it is part of what runs
            continue
        if not any(id(node) in mine for node in made.graph):
            continue  # another pipeline's
        name = made.node.name
        if combined and name in graph:
            continue  # the other part's is told when that part runs
        _forget(made)
        if name in graph:
            continue
        if combined or not any(
            name in held.graph and any(id(node) in mine for node in held.graph)
            for held in list(LIVE.values())
        ):
            # (What `|` combined is held by its parts: the combination was what was meant.)
            return made
    return None


def _forget(made: Made) -> None:
    with contextlib.suppress(ValueError):  # another thread's check forgot it first
        THROWN.remove(made)


def thrown_write(pipeline: str) -> Made | None:
    """Return the newest write of pipeline ``pipeline`` whose pipeline was dropped unused.

    ``p.read(...).write(x)`` as a statement, then ``p.run()``: ``p`` is still
    empty, and the steps were in the pipeline ``write`` returned.
    """
    for made in reversed(THROWN):
        if made.pipeline == pipeline and made.node.kind == "write":
            return made
    return None
