"""evflow pipelines: the fluent DSL, its compiler and runner, sources and sinks.

>>> from pipelines import Pipeline, sources, sinks
>>> p = (
...     Pipeline("hello")
...     .read(sources.memory(["a", "bb", "ccc"]))
...     .filter(lambda s: len(s) > 1)
...     .map(str.upper)
...     .write(sinks.memory("out"))
... )
>>> sorted(p.run().outputs["out"])
['BB', 'CCC']
"""

from operators import (
    Context,
    DeadLetter,
    ErrorPolicy,
    Event,
    Joined,
    Origin,
    OutputChangedError,
    PipelineHalted,
    ResumeError,
    StateNotSavable,
    Timer,
    retry,
)
from operators._dispatch import stateful
from pipelines import render, sinks, sources, testing
from pipelines._building.builder import Pipeline, Routes, Stream
from pipelines._building.bus import EventBus, Handler
from pipelines._building.joins import JoinStream, ProcessStream, Table
from pipelines._building.keyed import (
    AggregateStream,
    AnyResult,
    KeyedStream,
    WindowedStream,
    WindowResult,
)
from pipelines._running.compile import PipelineError
from pipelines._showing.result import RunResult, StepCounts

__all__ = [
    "AggregateStream",
    "AnyResult",
    "Context",
    "DeadLetter",
    "ErrorPolicy",
    "Event",
    "EventBus",
    "Handler",
    "JoinStream",
    "Joined",
    "KeyedStream",
    "Origin",
    "OutputChangedError",
    "Pipeline",
    "PipelineError",
    "PipelineHalted",
    "ProcessStream",
    "ResumeError",
    "Routes",
    "RunResult",
    "StateNotSavable",
    "StepCounts",
    "Stream",
    "Table",
    "Timer",
    "WindowResult",
    "WindowedStream",
    "render",
    "retry",
    "sinks",
    "sources",
    "stateful",
    "testing",
]

# Shown (and pickled) as ``pipelines.PipelineError``, not under its private module.
PipelineError.__module__ = __name__
