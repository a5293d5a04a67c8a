"""Public names: sorted __all__ lists that match what each package exports."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest


def isort_key(name: str) -> tuple[int, str]:
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize(
    "module",
    [
        "operators",
        "pipelines",
        "pipelines.render",
        "pipelines.sources",
        "pipelines.sinks",
        "pipelines.testing",
    ],
)
def test_all_is_sorted_and_importable(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    assert names == sorted(names, key=isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(mod, name), name


def test_pipelines_exports_the_decided_names() -> None:
    import pipelines

    decided = {
        "Pipeline",
        "Stream",
        "KeyedStream",
        "Event",
        "DeadLetter",
        "RunResult",
        "sources",
        "sinks",
        "testing",
    }
    assert decided <= set(pipelines.__all__)


def test_operators_never_import_pipelines() -> None:
    import operators

    for info in pkgutil.iter_modules(operators.__path__):
        source = importlib.util.find_spec(f"operators.{info.name}")
        assert source is not None and source.origin is not None
        text = Path(source.origin).read_text(encoding="utf-8")
        assert "import pipelines" not in text and "from pipelines" not in text, info.name


def test_packages_are_typed() -> None:
    import operators
    import pipelines

    for pkg in (operators, pipelines):
        assert (importlib.resources.files(pkg) / "py.typed").is_file()


def test_exported_errors_are_named_by_the_package_that_exports_them() -> None:
    # The command line showed "pipelines._running.compile.PipelineError: ..." and
    # doctests "operators._stage.ResumeError": a private module users cannot import.
    import pickle

    for package in ("operators", "pipelines"):
        mod = importlib.import_module(package)
        errors = [
            getattr(mod, name)
            for name in mod.__all__
            if isinstance(getattr(mod, name), type)
            and issubclass(getattr(mod, name), BaseException)
        ]
        assert errors
        for error in errors:
            owner = importlib.import_module(error.__module__)
            assert not error.__module__.split(".")[-1].startswith("_"), error
            assert getattr(owner, error.__name__) is error
            if error.__name__ != "PipelineHalted":  # (made with a step, function and payload)
                copy = pickle.loads(pickle.dumps(error("why")))
                assert type(copy) is error and str(copy) == "why"
