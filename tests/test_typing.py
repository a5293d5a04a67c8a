"""Types flow through the chain: mypy accepts a correct pipeline and rejects a wrong one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOOD = """
from typing import Literal
from pipelines import Event, Pipeline, Stream, KeyedStream, sinks, sources

class Buy(Event):
    type: Literal["buy"] = "buy"
    user: str
    amount: float

start: Stream[Buy] = Pipeline("t").read(sources.memory([Buy(user="a", amount=1.0)]))
amounts: Stream[float] = start.map(lambda e: e.amount)
doubled: Stream[float] = amounts.map(lambda a: a * 2)
words: Stream[str] = start.flat_map(lambda e: [e.user, e.type])
keyed: KeyedStream[Buy] = start.key_by(lambda e: e.user)
only: Stream[Buy] = Pipeline("t").read(sources.memory([])).filter(Buy)
routes = start.forward(big=lambda e: e.amount > 10, otherwise="rest")
big: Stream[Buy] = routes.big
"""

BAD = """
from pipelines import Pipeline, Stream, sources

start: Stream[int] = Pipeline("t").read(sources.memory([1]))
names: Stream[int] = start.map(lambda n: str(n))
"""


def mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "example.py"
    path.write_text(code)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_types_flow_through_the_chain(tmp_path: Path) -> None:
    good = mypy(tmp_path, GOOD)
    assert good.returncode == 0, good.stdout
    bad = mypy(tmp_path, BAD)
    assert bad.returncode == 1
    assert 'Incompatible return value type (got "str", expected "int")' in bad.stdout
