"""Running a pipeline: compiling the graph for the engine, here or on a cluster, with recovery.

Takes a pipeline's graph, name and sinks (the building wing's types only for
annotations) and gives back plain results for the showing wing.
"""
