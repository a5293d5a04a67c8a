"""The layout: no module imports one that imports it back, and the top folder holds only ours."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def type_only(tree: ast.AST) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:``: imports for annotations, never run."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {id(sub) for sub in ast.walk(node)}
    return hidden


def imports(package: str) -> dict[str, set[str]]:
    """Every import that runs (at module level or in a function) between a package's modules."""
    modules = {}
    for path in (ROOT / "src" / package).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        hidden = type_only(tree)
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            found = []
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                found = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[name] |= {f for f in found if f in modules and f != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other (directly or through others)."""
    found: list[list[str]] = []
    for start in sorted(graph):
        ahead = reachable(graph, start)
        if start in ahead:
            group = sorted(m for m in ahead if start in reachable(graph, m))
            if group not in found:
                found.append(group)
    return found


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_operators_modules_import_no_circle() -> None:
    assert cycles(imports("operators")) == []


def test_pipelines_modules_import_no_circle() -> None:
    assert cycles(imports("pipelines")) == []


#: What the repository's top folder holds: the project's own files, and what the
#: tools make there (ignored by .gitignore).
TOP = {
    ".ci", ".git", ".gitignore", "README.md", "bench", "docs", "mkdocs.yml", "notebooks",
    "pyproject.toml", "src", "tests",
}  # fmt: skip
MADE_BY_TOOLS = {
    ".venv", ".hypothesis", ".mypy_cache", ".ruff_cache", ".pytest_cache", "site", "build",
    "dist", "__pycache__",
}  # fmt: skip


def test_the_top_folder_holds_only_the_projects_files() -> None:
    # A scratch file written by hand (a CSV a probe read, a sink's output) was committed
    # twice beside README.md.
    stray = sorted(p.name for p in ROOT.iterdir() if p.name not in TOP | MADE_BY_TOOLS)
    assert stray == [], f"files that are no part of the project at its top: {stray}"
