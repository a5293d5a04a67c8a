"""The documentation: the site builds strictly, the README stays short and current."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_stays_within_its_budget_and_holds_no_run_logs() -> None:
    assert len(README.splitlines()) <= 200
    # Current figures only: no history of earlier runs, sessions or rounds.
    for pattern in (r"\bsession \d", r"\bearlier runs?\b", r"\bround \d", r"\blater runs?\b"):
        assert not re.search(pattern, README, flags=re.I), pattern


def test_every_docs_page_is_in_the_site_and_every_link_resolves() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    listed = set(re.findall(r":\s*([\w/-]+\.md)\s*$", config, flags=re.M))
    assert pages == listed
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).exists(), link


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "event-time" / "index.html").exists()
    assert "ScheduleDependence" in (tmp_path / "reference" / "pipelines" / "index.html").read_text()
