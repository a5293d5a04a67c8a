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

from operators import DeadLetter, ErrorPolicy, Event, Origin, PipelineHalted, retry
from pipelines import sinks, sources, testing
from pipelines._builder import KeyedStream, Pipeline, Routes, Stream
from pipelines._compile import PipelineError
from pipelines._result import RunResult, StepCounts

__all__ = [
    "DeadLetter",
    "ErrorPolicy",
    "Event",
    "KeyedStream",
    "Origin",
    "Pipeline",
    "PipelineError",
    "PipelineHalted",
    "Routes",
    "RunResult",
    "StepCounts",
    "Stream",
    "retry",
    "sinks",
    "sources",
    "testing",
]
