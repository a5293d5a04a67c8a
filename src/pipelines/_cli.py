"""The ``evflow`` command: run, list and draw pipelines."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from operators._sinks import stdout_console
from pipelines._building.builder import Pipeline, Stream
from pipelines._running.options import OptionError
from pipelines._showing.result import RunResult

__all__ = ["load_target", "main"]


class TargetError(Exception):
    """A TARGET that names nothing runnable."""


def _resolve(obj: Any, target: str) -> Pipeline:
    if isinstance(obj, Pipeline):
        return obj
    what = f"{target} is"
    if _builds(obj):
        obj = obj()
        if isinstance(obj, Pipeline):
            return obj
        what = f"{target} returned"
    if isinstance(obj, Stream):
        msg = (
            f"{what} a stream ({type(obj).__name__} at step {obj.step!r}), not a pipeline: "
            f"it is not written anywhere. Hint: point at what .write(...) returns, e.g. "
            f"flow = stream.write(sinks.jsonl('out.jsonl'))."
        )
        raise TargetError(msg)
    if isinstance(obj, type):
        kind = "a class"
    elif callable(obj):
        kind = "a function that needs arguments"
    else:
        name = type(obj).__name__
        kind = f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
    msg = (
        f"{what} {kind}, not a Pipeline. Hint: point at a Pipeline value or a function "
        f"with no arguments that returns one."
    )
    raise TargetError(msg)


def _builds(obj: Any) -> bool:
    """Whether ``obj`` is a function that can be called with no arguments (not a class)."""
    if isinstance(obj, type) or not callable(obj):
        return False  # a class would make an instance (an event class: a validation error)
    try:
        inspect.signature(obj).bind()
    except (TypeError, ValueError):  # arguments needed, or no signature to tell
        return False
    return True


def _pipelines_in(module: Any) -> list[str]:
    """Name the module's attributes that are pipelines, or build one."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (isinstance(value, Pipeline) or (_builds(value) and name.startswith("build")))
    )


def load_target(target: str) -> Pipeline:
    """Load a pipeline from a catalog name, ``module:attr`` or ``file.py:attr``.

    Without ``:attr``, a file (or module) gives its attribute ``pipeline``.
    """
    from pipelines import catalog

    if target in catalog.NAMES:
        return catalog.load(target)
    if ":" not in target and not target.endswith(".py"):
        msg = (
            f"unknown pipeline {target!r}. Hint: a catalog name ({', '.join(catalog.NAMES)}), "
            f"module:attribute, or path/to/file.py[:attribute]."
        )
        raise TargetError(msg)
    where, attr = target.rsplit(":", 1) if ":" in target else (target, "pipeline")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            msg = f"no such file: {where}"
            raise TargetError(msg)
        name = _module_name(path)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent.resolve()))
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, ".")
        module = importlib.import_module(where)
    if not hasattr(module, attr):
        found = _pipelines_in(module)
        values = [n for n in found if isinstance(getattr(module, n), Pipeline)]
        if ":" not in target and len(values) == 1:
            return _resolve(getattr(module, values[0]), target)
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        msg = f"{where} has no attribute {attr!r}; it has {names}."
        if found:
            msg += f" Hint: its pipelines: {', '.join(f'{where}:{n}' for n in found)}."
        raise TargetError(msg)
    return _resolve(getattr(module, attr), target)


def _module_name(path: Path) -> str:
    """Name the module a pipeline file is imported as: its own name, unless taken.

    A file named like a module already imported (``pipelines.py``, ``operators.py``,
    ``json.py``) must not stand in for it: evflow's own imports would find the
    file. It gets a name of its own then, the same on every run (snapshots name
    its classes by their module).
    """
    if path.stem not in sys.modules:
        return path.stem
    taken = getattr(sys.modules[path.stem], "__file__", None)
    if taken is not None and Path(taken).resolve() == path.resolve():
        return path.stem  # loaded before (a test, a notebook)
    return f"evflow_file_{path.stem}"


def _user_traceback(exc: BaseException) -> str:
    """Format a traceback keeping the user's frames, not the engine's or ours."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "/bytewax/" not in f.filename
        and "/pipelines/_" not in f.filename
        and "/operators/_" not in f.filename
        and "importlib" not in f.filename
        and "/contextlib.py" not in f.filename
    ]
    lines = traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    if sys.version_info < (3, 11):  # 3.11 shows an exception's notes after it; 3.10 does not
        lines += [f"{note}\n" for note in getattr(exc, "__notes__", ())]
    return "".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evflow", description="Run evflow pipelines.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline and print its summary")
    run.add_argument("target", help="catalog name, module:attribute or file.py:attribute")
    run.add_argument("-w", "--workers", type=int, default=1, help="worker threads per process")
    run.add_argument("-p", "--processes", type=int, default=1, help="processes on this host")
    run.add_argument(
        "--addresses", help="join a cluster: host:port of every process, comma-separated"
    )
    run.add_argument("--process-id", type=int, help="this process's place in it (default 0)")
    run.add_argument("--recovery", help="directory for snapshots; a rerun resumes from them")
    run.add_argument(
        "--snapshot-interval", type=float, help="seconds between snapshots (default 5)"
    )
    run.add_argument(
        "--restart",
        type=int,
        metavar="N",
        help="with --recovery: when a process dies, restart the cluster from the last "
        "snapshot, up to N times",
    )
    run.add_argument(
        "--formation-timeout",
        type=float,
        default=30.0,
        help="seconds a cluster of processes may take to form (default 30)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port while running (process i: port + i)",
    )
    run.add_argument("--metrics-host", help="interface for metrics (default loopback)")
    run.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow cluster addresses and a metrics host other than loopback (the traffic "
        "is unauthenticated: keep it on a private network)",
    )
    shown = run.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only the summary")
    run.add_argument(
        "--max-dead-ratio",
        type=_ratio,
        metavar="R",
        help="exit with status 3 when more than this share (0 to 1) of the records read "
        "became dead letters",
    )
    shown.add_argument("--json", action="store_true", help="print the summary as JSON")
    shown.add_argument(
        "--live", action="store_true", help="draw the live view even when not on a terminal"
    )
    sub.add_parser("list", help="list the catalog")
    graph = sub.add_parser("graph", help="draw a pipeline: tree, Mermaid, DOT or SVG")
    graph.add_argument("target")
    graph.add_argument(
        "--format",
        choices=("tree", "mermaid", "dot", "svg"),
        default="tree",
        help="tree (default), Mermaid text, Graphviz DOT, or SVG (Graphviz when installed)",
    )
    graph.add_argument("-o", "--output", help="write to this file instead of stdout")
    return parser


def _ratio(text: str) -> float:
    """Parse a share from 0 to 1 (for --max-dead-ratio)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        msg = f"a share from 0 to 1, such as 0.05; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


#: The exit status of a command whose reader closed its stdout (128 + SIGPIPE, as a shell says).
CLOSED_STDOUT = 141


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of stdout stopped reading (`evflow run ... | head`): the run
        # stops, as other commands do, with a word on stderr instead of a traceback.
        with contextlib.suppress(OSError, ValueError):  # (no descriptor: an embedding program's)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.stderr.write(
            "evflow: stdout was closed by its reader (broken pipe): stopped; what was "
            "not written to it is lost\n"
        )
        return CLOSED_STDOUT


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    console = stdout_console()
    if not console.is_terminal:
        console = stdout_console(width=120)

    def fail(text: str) -> None:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")

    if args.command == "list":
        from pipelines import catalog

        for name in catalog.NAMES:
            console.print(f"[bold]{name}[/bold]  {catalog.describe(name)}")
        return 0
    try:
        pipeline = load_target(args.target)
        if args.command == "graph":
            return _graph(pipeline, args, console)
        for what in ("workers", "processes"):
            if getattr(args, what) < 1:
                fail(f"error: --{what} must be at least 1; got {getattr(args, what)}")
                return 2
        idle = _idle_option(args)
        if idle is not None:
            fail(f"error: {idle}")
            return 2
        return _run(pipeline, args, console)
    except (TargetError, OptionError) as exc:
        fail(f"error: {exc}")
        return 2
    except BrokenPipeError:
        raise
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - shown, root cause first
        fail(f"error in pipeline {args.target}:")
        cause = exc.__cause__
        if cause is not None:
            fail(_user_traceback(cause))
            fail("The above caused:")
        fail(_user_traceback(exc))
        return 1


#: Options that do nothing without another: (option, what it needs, why).
_NEEDS = (
    ("process_id", "addresses", "it is this process's place in the cluster --addresses lists"),
    ("snapshot_interval", "recovery", "snapshots are taken only into a recovery store"),
    ("metrics_host", "metrics_port", "metrics are served only on a port"),
    ("restart", "recovery", "a restarted cluster resumes from the last snapshot"),
)


def _idle_option(args: argparse.Namespace) -> str | None:
    """Say what is wrong with an option given where it would do nothing; set the defaults.

    A member started by hand given ``--process-id`` without ``--addresses``
    ran the whole pipeline alone, as if it had no cluster.
    """
    for option, needed, why in _NEEDS:
        if getattr(args, option) is not None and getattr(args, needed) is None:
            flag, other = (f"--{name.replace('_', '-')}" for name in (option, needed))
            return f"{flag} does nothing without {other}: {why}. Hint: add {other}, or drop {flag}."
    if args.addresses and args.processes > 1:
        return (
            f"--processes {args.processes} with --addresses: a member started by hand is one "
            f"process of the cluster --addresses lists. Hint: start one member per address, "
            f"each with its --process-id, or use --processes alone for a cluster on this host."
        )
    args.process_id = 0 if args.process_id is None else args.process_id
    args.snapshot_interval = 5.0 if args.snapshot_interval is None else args.snapshot_interval
    args.metrics_host = "127.0.0.1" if args.metrics_host is None else args.metrics_host
    args.restart = 0 if args.restart is None else args.restart
    return None


def _graph(pipeline: Pipeline, args: argparse.Namespace, console: Console) -> int:
    """Write the pipeline's picture in the format asked for."""
    from pipelines import render

    if args.format == "tree":
        if args.output:
            with open(args.output, "w") as f:
                Console(file=f, width=120).print(render.to_tree(pipeline))
        else:
            console.print(render.to_tree(pipeline))
        return 0
    make = {"mermaid": render.to_mermaid, "dot": render.to_dot, "svg": render.to_svg}
    text = make[args.format](pipeline)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


#: Seconds a run stopped by Ctrl-C or SIGTERM has to end by itself.
STOP_GRACE = 10.0


class _Stopper:
    """Ctrl-C and SIGTERM: stop the run, and end the process if it does not stop.

    The first signal stops the run as Ctrl-C does (the summary so far, exit
    130). A step that does not give control back (a user function that
    hangs) could keep the engine from stopping, so evflow ends the process
    after ``STOP_GRACE`` seconds (``EVFLOW_STOP_GRACE``), printing the counts
    so far; a second signal ends it at once. Either way a run with recovery
    keeps its last complete snapshot, as after a crash.
    """

    def __init__(self, last_words: Callable[[], None]) -> None:
        self.last_words = last_words
        self.timer: threading.Timer | None = None
        #: Whether Ctrl-C or SIGTERM asked the run to stop.
        self.requested = False

    def install(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)

    def stop(self, signum: int, frame: Any) -> None:
        self.requested = True
        grace = float(os.environ.get("EVFLOW_STOP_GRACE", STOP_GRACE))
        self.timer = threading.Timer(grace, self.force, args=(grace,))
        self.timer.daemon = True
        self.timer.start()
        # A second signal ends the process at once, whatever it is doing.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt

    def force(self, grace: float) -> None:
        from pipelines._running.panics import unfiltered_stderr

        unfiltered_stderr()  # what follows must reach the terminal before the exit
        sys.stderr.write(
            f"evflow: the run did not stop within {grace:g} s of the stop request (a step "
            f"is still busy); ending it now. A run with recovery resumes from its last "
            f"complete snapshot.\n"
        )
        with contextlib.suppress(Exception):
            self.last_words()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(130)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def _run(pipeline: Pipeline, args: argparse.Namespace, console: Console) -> int:
    """Run with the live view (unless told otherwise) and print the summary."""
    from pipelines._showing.live import LiveView

    live = (args.live or console.is_terminal) and not (args.quiet or args.json)
    if args.live:
        console = stdout_console(force_terminal=True, width=120)
    view = LiveView(console)
    started = time.perf_counter()

    def so_far(stop: BaseException | None = None) -> None:
        sys.stderr.write("interrupted: the counts so far\n")
        partial = _counts_so_far(stop, view, pipeline, args, started)
        if partial is not None:
            _summary(partial, args, console)

    stopping = _Stopper(so_far)
    stopping.install()
    quiet_stdout = _stdout_to_stderr() if args.json else contextlib.nullcontext()
    try:
        with quiet_stdout:
            result = _start(pipeline, args, view, live)
    except KeyboardInterrupt as stop:
        if not stopping.requested:
            raise  # raised by a user function, not by Ctrl-C: an error like any other
        so_far(stop)
        return 130
    finally:
        stopping.cancel()
    _summary(result, args, console)
    for warning in result.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    if result.letters_unwritten:
        # Held by nothing else once this process ends: on stderr, one JSON line each.
        for letter in result.dead_letters:
            sys.stderr.write(f"{letter.model_dump_json()}\n")
        return 1
    limit = args.max_dead_ratio
    if limit is not None and result.dead_ratio > limit:
        sys.stderr.write(
            f"error: {result.dead:,} of the {result.read:,} records read became dead letters "
            f"({result.dead_ratio:.1%}), more than --max-dead-ratio {limit:g} allows\n"
        )
        return 3
    return 0 if result.reconciles or result.partial else 1


def _counts_so_far(
    stop: BaseException | None,
    view: Any,
    pipeline: Pipeline,
    args: argparse.Namespace,
    started: float,
) -> RunResult | None:
    """Return a stopped run's counts: from its members, or from this process's counters."""
    sent = getattr(stop, "result", None)
    if isinstance(sent, RunResult):
        return sent
    compiled = view.compiled
    if compiled is None:
        return None
    from pipelines._running.run import counts_of

    counts = counts_of(compiled.counters.totals(), compiled.kinds)
    return RunResult(pipeline.name, {}, [], counts, args.workers, time.perf_counter() - started)


def _start(pipeline: Pipeline, args: argparse.Namespace, view: Any, live: bool) -> RunResult:
    """Run as the options say: a cluster member, with the live view, or plainly."""
    from pipelines._running.metrics import Metrics

    metrics = None
    if args.metrics_port is not None:
        metrics = Metrics(args.metrics_port, args.metrics_host).check(
            allow_remote=args.allow_remote
        )
    if args.addresses:
        from pipelines._running.cluster import run_member
        from pipelines._running.run import Recovery, check_replayable

        recovery = None
        if args.recovery:
            check_replayable(pipeline)
            recovery = Recovery.prepare(args.recovery, args.snapshot_interval)
        return run_member(
            pipeline,
            args.workers,
            args.addresses.split(","),
            args.process_id,
            allow_remote=args.allow_remote,
            recovery=recovery,
            metrics=metrics,
            formation_timeout=args.formation_timeout,
        )
    options: dict[str, Any] = {
        "workers": args.workers,
        "processes": args.processes,
        "formation_timeout": args.formation_timeout,
        "recovery": args.recovery,
        "snapshot_interval": args.snapshot_interval,
        "restart": args.restart,
        "metrics": metrics,
    }
    from pipelines._running.launch import run

    if args.processes > 1 or args.restart:
        return run(pipeline, **options)
    with view if live else contextlib.nullcontext():
        return run(pipeline, monitor=view, **options)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what the engine prints to stderr, so stdout holds only the JSON summary."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _summary(result: RunResult, args: argparse.Namespace, console: Console) -> None:
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    console.print(result.summary())
    for (step, kind), n in sorted(result.dead_letter_counts.items()):
        console.print(f"  dead letters at {step}: {kind}: {n}")
