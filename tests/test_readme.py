"""The README's snippets run, and its two commands are the ones CI and users run."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_python_snippets_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    snippets = blocks("python")
    assert len(snippets) >= 2
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec", dont_inherit=True), namespace)


def test_two_commands_and_ci_runs_the_test_command() -> None:
    commands = [b.strip() for b in blocks("bash")[:2]]
    demo, tests = commands
    assert demo.endswith("evflow run clickstream") and "pip install ." in demo
    assert tests.endswith("python -m pytest") and "'.[test]'" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == tests


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_docs_python_examples_run(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    # A module of its own, as a user's script is: events defined in it travel
    # pickled between the processes of a cluster.
    module = types.ModuleType(f"docs_{page[:-3].replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for snippet in blocks("python", text):
        exec(compile(snippet, f"docs/{page}", "exec", dont_inherit=True), module.__dict__)
