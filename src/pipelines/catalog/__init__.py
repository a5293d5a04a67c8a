"""Ready pipelines that run on generated data with no set-up (``evflow list``)."""

from __future__ import annotations

import importlib

from pipelines._building.builder import Pipeline

__all__ = ["NAMES", "describe", "load"]

#: Catalog names, each a module of this package with ``build()`` and ``pipeline``.
NAMES = ("clickstream", "enrichment", "orders", "sensors")


def load(name: str) -> Pipeline:
    """Return the catalog pipeline called ``name`` (built with its defaults)."""
    if name not in NAMES:
        msg = f"no catalog pipeline {name!r}; the catalog has {list(NAMES)}."
        raise KeyError(msg)
    module = importlib.import_module(f"pipelines.catalog.{name}")
    pipeline: Pipeline = module.build()
    return pipeline


def describe(name: str) -> str:
    """Return the first line of the catalog pipeline's docstring."""
    module = importlib.import_module(f"pipelines.catalog.{name}")
    return (module.__doc__ or "").strip().splitlines()[0]
