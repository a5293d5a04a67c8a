"""Building a pipeline: the logical graph, the fluent chain, keyed streams, dispatch, the bus.

Only this wing knows `Pipeline` and `Stream`; it calls down into running
(`pipelines._running`) and showing (`pipelines._showing`), never the reverse.
"""
