"""evflow operators: events, dead letters, error policies, stages, connectors.

Each piece works on a plain bytewax ``Dataflow`` too; the ``pipelines``
package compiles its fluent graphs onto them.
"""

from operators import agg, windows
from operators._deadletter import (
    PAYLOAD_LIMIT,
    DeadLetter,
    ErrorKind,
    Origin,
    count_dead,
    payload_text,
)
from operators._event import Event, Schema, event_classes, schema_adapter, type_name
from operators._joining import Joined
from operators._ops import (
    FilterOp,
    FlatMapOp,
    ForwardOp,
    InspectOp,
    IsInstance,
    KeyCheckOp,
    MapOp,
)
from operators._parse import ParseOp
from operators._pickles import StateNotSavable
from operators._policy import ErrorPolicy, PipelineHalted, Policy, as_policy, retry
from operators._process import Context, Timer, TimerInThePast
from operators._sinks import (
    DEAD_LETTERS_KEPT,
    CallbackSink,
    ExactOutput,
    ExactSink,
    ExactWriter,
    JsonlSink,
    MemorySink,
    OutputChangedError,
    PacketSink,
    RunContext,
    Sink,
    StdoutSink,
    Writer,
    to_json,
)
from operators._sources import (
    DEFAULT_BATCH,
    ChunkSource,
    CsvSource,
    GenerateSource,
    JsonlSource,
    MemorySource,
    Reader,
    Source,
    StdinSource,
)
from operators._stage import (
    COUNTER_FIELDS,
    Chunk,
    Counters,
    Exit,
    Node,
    Packet,
    ResumeError,
    StageOp,
    describe_function,
    run_stage,
    stage,
)

__all__ = [
    "COUNTER_FIELDS",
    "DEAD_LETTERS_KEPT",
    "DEFAULT_BATCH",
    "PAYLOAD_LIMIT",
    "CallbackSink",
    "Chunk",
    "ChunkSource",
    "Context",
    "Counters",
    "CsvSource",
    "DeadLetter",
    "ErrorKind",
    "ErrorPolicy",
    "Event",
    "ExactOutput",
    "ExactSink",
    "ExactWriter",
    "Exit",
    "FilterOp",
    "FlatMapOp",
    "ForwardOp",
    "GenerateSource",
    "InspectOp",
    "IsInstance",
    "Joined",
    "JsonlSink",
    "JsonlSource",
    "KeyCheckOp",
    "MapOp",
    "MemorySink",
    "MemorySource",
    "Node",
    "Origin",
    "OutputChangedError",
    "Packet",
    "PacketSink",
    "ParseOp",
    "PipelineHalted",
    "Policy",
    "Reader",
    "ResumeError",
    "RunContext",
    "Schema",
    "Sink",
    "Source",
    "StageOp",
    "StateNotSavable",
    "StdinSource",
    "StdoutSink",
    "Timer",
    "TimerInThePast",
    "Writer",
    "agg",
    "as_policy",
    "count_dead",
    "describe_function",
    "event_classes",
    "payload_text",
    "retry",
    "run_stage",
    "schema_adapter",
    "stage",
    "to_json",
    "type_name",
    "windows",
]

# Errors are shown (and pickled) under the package that exports them, not the
# private module that defines them: ``operators.ResumeError``.
for _error in (OutputChangedError, PipelineHalted, ResumeError, StateNotSavable, TimerInThePast):
    _error.__module__ = __name__
del _error
