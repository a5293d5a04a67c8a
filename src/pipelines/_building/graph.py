"""The logical graph: immutable nodes, named ports, deterministic step names."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from operators import ErrorPolicy
from operators.windows import Count, EventTime

__all__ = ["Graph", "Node", "Port", "auto_name", "check_name", "early_ancestor", "makes_marks"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, eq=False)
class Node:
    """One logical step. Identity (not equality) tells two nodes apart."""

    name: str
    kind: str
    inputs: tuple[Port, ...] = ()
    fn: Any = None
    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    params: Mapping[str, Any] = field(default_factory=dict)

    def ports(self) -> tuple[str | None, ...]:
        """Name this node's outputs: a forward has one per route."""
        if self.kind == "write":
            return ()
        if self.kind in ("aggregate", "join", "process"):
            return (None, "late")
        if self.kind == "forward":
            names: tuple[str | None, ...] = tuple(self.params["routes"])
            if self.params["otherwise"] is not None:
                names += (self.params["otherwise"],)
            return names
        return (None,)


@dataclass(frozen=True)
class Port:
    """An output of a node: ``route`` names a forward's branch."""

    node: Node
    route: str | None = None

    def __str__(self) -> str:
        """Show ``step`` or ``step.route``."""
        return self.node.name if self.route is None else f"{self.node.name}.{self.route}"


def makes_marks(node: Node) -> bool:
    """Whether a step reports watermarks with its results (a step on event time).

    Its key buckets are then the partitions of the stream it makes.
    """
    if node.kind in ("join", "process"):
        return True
    if node.kind != "aggregate":
        return False
    window = node.params["window"]
    timed = window is not None and not isinstance(window, Count)
    return timed and isinstance(node.params["clock"], EventTime)


def check_name(name: str, what: str = "step name") -> str:
    """Check that a user-given step name is a plain identifier.

    >>> check_name("by_user")
    'by_user'
    """
    if not isinstance(name, str) or not _NAME.match(name):
        msg = (
            f"{what} must be a plain identifier (letters, digits, underscores, not "
            f"starting with a digit); got {name!r}. Hint: name='by_user'."
        )
        raise ValueError(msg)
    return name


def auto_name(kind: str, detail: str | None) -> str:
    """Make a default step name from the kind and a stable detail.

    >>> auto_name("filter", "is_human"), auto_name("map", "<lambda>")
    ('filter_is_human', 'map')
    """
    if detail and _NAME.match(detail):
        return f"{kind}_{detail}"
    return kind


class Graph:
    """An immutable, insertion-ordered set of nodes keyed by step name."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Mapping[str, Node] | None = None) -> None:
        """Hold ``nodes`` (copied)."""
        self._nodes: dict[str, Node] = dict(nodes or {})

    def __contains__(self, name: object) -> bool:
        """Whether a step of that name exists."""
        return name in self._nodes

    def __iter__(self) -> Any:
        """Iterate over nodes in the order they were added."""
        return iter(self._nodes.values())

    def __len__(self) -> int:
        """Count the nodes."""
        return len(self._nodes)

    def __getitem__(self, name: str) -> Node:
        """Return the node of that step name."""
        return self._nodes[name]

    def unique(self, base: str) -> str:
        """Return ``base``, or ``base_2``, ``base_3``... if taken."""
        if base not in self._nodes:
            return base
        n = 2
        while f"{base}_{n}" in self._nodes:
            n += 1
        return f"{base}_{n}"

    def add(self, node: Node) -> Graph:
        """Return a new graph with ``node``; a taken name is an error."""
        if node.name in self._nodes:
            other = self._nodes[node.name]
            msg = (
                f"step name {node.name!r} ({node.kind}) is already used by a "
                f"{other.kind} step in this pipeline. Hint: step names are state "
                f"keys and must be unique; pass another name=, e.g. "
                f"name={node.name + '_2'!r}."
            )
            raise ValueError(msg)
        nodes = dict(self._nodes)
        nodes[node.name] = node
        return Graph(nodes)

    def union(self, others: Iterable[Graph]) -> Graph:
        """Return the union; the same name on two different steps is an error."""
        nodes = dict(self._nodes)
        for other in others:
            for node in other:
                mine = nodes.get(node.name)
                if mine is None:
                    nodes[node.name] = node
                elif mine is not node:
                    msg = (
                        f"two different steps are named {node.name!r} ({mine.kind} "
                        f"and {node.kind}) in the pipelines being combined. Hint: "
                        f"give one of them another name=, e.g. name={node.name + '_b'!r}."
                    )
                    raise ValueError(msg)
        return Graph(nodes)

    def consumers(self) -> dict[tuple[str, str | None], list[Node]]:
        """Map each port (step, route) to the nodes that read it."""
        users: dict[tuple[str, str | None], list[Node]] = {
            (n.name, port): [] for n in self for port in n.ports()
        }
        for node in self:
            for port in node.inputs:
                users[(port.node.name, port.route)].append(node)
        return users


#: Steps that hand each record on as it is, or make one of each (a map): what an
#: early result becomes through them reaches the steps after them.
_ONE_FOR_ONE = frozenset({"key_by", "inspect", "merge", "map"})


def later_aggregate(node: Node, consumers: dict[tuple[str, str | None], list[Node]]) -> Node | None:
    """Return an aggregate that what ``node`` hands on reaches one for one, if any.

    Through steps that pass each record on (key_by, inspect, merge, map): a
    filter, a route or a step that makes any number of records is where the
    user chooses what goes on.
    """
    seen: set[int] = set()
    todo = [node]
    while todo:
        step = todo.pop()
        for port in step.ports():
            for user in consumers[(step.name, port)]:
                if user.kind == "aggregate":
                    return user
                if user.kind in _ONE_FOR_ONE and id(user) not in seen:
                    seen.add(id(user))
                    todo.append(user)
    return None


def early_ancestor(node: Node) -> Node | None:
    """Return an ``emit="early"`` aggregate whose results may reach ``node``, by any steps.

    Through a filter or a map they may or may not: the aggregate after them
    dead-letters any early result that comes (see ``joins.early_upstream``), and
    so does a map whose records reach an aggregate (`later_aggregate`).
    """
    seen: set[int] = set()
    todo = [port.node for port in node.inputs]
    while todo:
        found = todo.pop()
        if id(found) in seen:
            continue
        seen.add(id(found))
        if found.kind == "aggregate" and found.params.get("emit") == "early":
            return found
        todo.extend(port.node for port in found.inputs)
    return None
