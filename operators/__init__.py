"""evflow operators: events, dead letters, error policies, stages, connectors.

Each piece works on a plain bytewax ``Dataflow`` too; the ``pipelines``
package compiles its fluent graphs onto them.
"""

from operators import agg, windows
from operators._deadletter import PAYLOAD_LIMIT, DeadLetter, ErrorKind, Origin, payload_text
from operators._event import Event, Schema, event_classes, schema_adapter, type_name
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
from operators._policy import ErrorPolicy, PipelineHalted, Policy, as_policy, retry
from operators._sinks import (
    CallbackSink,
    ExactJsonl,
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
    StageOp,
    describe_function,
    run_stage,
    stage,
)

__all__ = [
    "COUNTER_FIELDS",
    "DEFAULT_BATCH",
    "PAYLOAD_LIMIT",
    "CallbackSink",
    "Chunk",
    "ChunkSource",
    "Counters",
    "CsvSource",
    "DeadLetter",
    "ErrorKind",
    "ErrorPolicy",
    "Event",
    "ExactJsonl",
    "Exit",
    "FilterOp",
    "FlatMapOp",
    "ForwardOp",
    "GenerateSource",
    "InspectOp",
    "IsInstance",
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
    "RunContext",
    "Schema",
    "Sink",
    "Source",
    "StageOp",
    "StdinSource",
    "StdoutSink",
    "Writer",
    "agg",
    "as_policy",
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
