"""The classic EventBus API, and the same bus as an evflow dataflow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from operators import Event
from pipelines import EventBus, Handler, sinks, sources

CLASSIC = textwrap.dedent("""
    from pipelines import Event, EventBus, Handler

    class ClickEvent(Event):
        def get_type(self): return "click"
    class ClickHandler(Handler):
        def handle(self, event): print("handled click")
    bus = EventBus(); bus.register("click", ClickHandler()); bus.publish(ClickEvent())
""")

CLASSIC_TWO = textwrap.dedent('''
    from pipelines import Event, EventBus, Handler

    class ClickEvent(Event):
        def get_type(self): return "click"

    class UpdateEvent:
        """A plain class with get_type(): no pydantic fields at all."""
        def get_type(self): return "update"

    class ClickHandler(Handler):
        def handle(self, event): print("handled click")

    class UpdateHandler(Handler):
        def handle(self, event): print("handled update")

    bus = EventBus()
    bus.register("click", ClickHandler())
    bus.register("update", UpdateHandler())
    bus.publish(ClickEvent())
    bus.publish(UpdateEvent())
''')


def run_script(tmp_path: Path, code: str) -> str:
    script = tmp_path / "bus_example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def test_the_classic_example_runs_verbatim(tmp_path: Path) -> None:
    assert run_script(tmp_path, CLASSIC) == "handled click\n"
    assert run_script(tmp_path, CLASSIC_TWO) == "handled click\nhandled update\n"


class Click(Event):
    def get_type(self) -> str:
        return "click"


class Note(Handler):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def handle(self, event: Any) -> str:
        self.seen.append(event.get_type())
        return f"noted {event.get_type()}"


def test_register_publish_unregister_and_unhandled() -> None:
    bus = EventBus()
    note = Note()
    calls: list[str] = []
    bus.register("click", note)
    bus.register(Click, lambda e: calls.append("by class"))
    bus.publish(Click())
    assert calls == ["by class"] and note.seen == ["click"]
    bus.unregister("click", note)
    bus.publish(Click())
    assert calls == ["by class", "by class"] and note.seen == ["click"]
    assert bus.handlers() == {Click: bus.handlers()[Click]}
    bus.publish(object())
    assert len(bus.unhandled) == 1
    with pytest.raises(ValueError, match=r"unregister: .* is not registered for 'click'"):
        bus.unregister("click", note)
    with pytest.raises(
        TypeError,
        match=r"register: handler must be a function or an object "
        r"with handle\(event\); got int 5",
    ):
        bus.register("click", 5)
    with pytest.raises(TypeError, match=r"register: event_type must be a type name or a class"):
        bus.register(3, note)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Can't instantiate abstract class"):
        Handler()  # type: ignore[abstract]


class Hover(Event):
    target: str = "x"


def test_the_same_bus_as_a_dataflow() -> None:
    bus = EventBus()
    bus.register("click", lambda e: ("click", e.id))
    bus.register(Hover, lambda e: ("hover", e.target))
    events = [Click(id=f"c{i}") for i in range(5)] + [Hover(target="menu")] + [object()]
    result = bus.pipeline(sources.memory(events, partitions=2)).run(workers=2)
    assert sorted(result["results"]) == sorted(
        [("click", f"c{i}") for i in range(5)] + [("hover", "menu")]
    )
    [dead] = result.dead_letters
    assert dead.kind == "unhandled" and result.reconciles
    keyed = bus.pipeline(
        sources.memory(events[:-1]), key=lambda e: e.type, sink=sinks.memory("out"), name="bus2"
    ).run(processes=2)
    assert len(keyed["out"]) == 6 and keyed.reconciles
    with pytest.raises(ValueError, match=r"EventBus.pipeline: no handler is registered"):
        EventBus().pipeline(sources.memory([]))


class Special(Hover):
    pass


class Shape:
    """A plain class whose type name depends on the instance."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def get_type(self) -> str:
        return self.kind


def test_the_dataflow_hands_each_event_to_every_handler_publish_does() -> None:
    bus = EventBus()
    bus.register(Hover, lambda e: f"hover {e.target}")
    bus.register(Special, lambda e: f"special {e.target}")
    bus.register(Event, lambda e: f"event {e.type}")
    bus.register("special", lambda e: "by name special")
    bus.register("square", lambda e: "by name square")
    events: list[Any] = [Special(target="a"), Hover(target="b"), Click(), Shape("square")]
    events += [Shape("circle"), Special(target="c")]
    published = [value for event in events for value in bus.publish(event)]
    assert published[:4] == ["special a", "hover a", "event special", "by name special"]
    result = bus.pipeline(sources.memory(events)).run()
    assert result["results"] == published
    [dead] = result.dead_letters
    assert dead.kind == "unhandled" and "circle" in dead.message and result.reconciles
    keyed = bus.pipeline(
        sources.memory(events[:4] * 5, partitions=2), key=lambda e: e.get_type(), name="keyed"
    ).run(workers=2)
    assert sorted(keyed["results"]) == sorted(published[:-4] * 5)
    assert keyed.reconciles and not keyed.dead_letters


def test_publish_runs_async_handlers_and_returns_every_result() -> None:
    import asyncio

    bus = EventBus()

    async def slow(event: str) -> str:
        await asyncio.sleep(0)
        return f"async {event}"

    bus.register(str, slow)
    bus.register(str, str.upper)
    assert bus.publish("hi") == ["async hi", "HI"]  # never "coroutine was never awaited"
    assert asyncio.run(bus.publish_async("yo")) == ["async yo", "YO"]

    async def inside_a_loop() -> None:
        with pytest.raises(RuntimeError, match=r"await bus.publish_async\(event\)"):
            bus.publish("hi")

    asyncio.run(inside_a_loop())


def test_bus_pipeline_takes_concurrency_and_warns_of_state_split_among_workers() -> None:
    import asyncio

    class Tally:
        def __init__(self) -> None:
            self.seen = 0

        def handle(self, event: int) -> int:
            self.seen += 1
            return event

    async def double(event: int) -> int:
        await asyncio.sleep(0.001)
        return event * 2

    bus = EventBus()
    bus.register(int, double)
    flow = bus.pipeline(sources.memory(range(20)), concurrency=8)
    [step] = [n for n in flow.graph if n.kind == "dispatch"]
    assert step.params["concurrency"] == 8
    assert sorted(flow.run(workers=2)["results"]) == [i * 2 for i in range(20)]
    bus.register(int, Tally())
    with pytest.warns(RuntimeWarning, match=r"Tally \(attributes: seen\).*split among them"):
        bus.pipeline(sources.memory(range(4))).run(workers=2)
    assert len(bus.pipeline(sources.memory(range(4))).run()["results"]) == 8  # 1 worker: quiet


def test_publish_runs_generator_handlers_to_their_end() -> None:
    import asyncio

    ran: list[str] = []

    def twice(event: Any) -> Any:
        ran.append("sync")
        yield event
        yield event

    async def thrice(event: Any) -> Any:
        ran.append("async")
        for _ in range(3):
            yield event

    bus = EventBus()
    bus.register(str, twice)
    bus.register(str, thrice)
    assert bus.publish("x") == [["x", "x"], ["x", "x", "x"]] and ran == ["sync", "async"]
    assert asyncio.run(bus.publish_async("y")) == [["y", "y"], ["y", "y", "y"]]
    assert ran == ["sync", "async"] * 2
    assert bus.pipeline(sources.memory(["z"])).run()["results"] == ["z"] * 5
