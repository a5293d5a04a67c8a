"""The builder: immutable values, deterministic names, misuse caught when a step is added."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines import KeyedStream, Pipeline, PipelineError, sinks, sources
from tests.helpers import Purchase, View


def src() -> sources.MemorySource:  # type: ignore[name-defined]
    return sources.memory([View(user="a"), Purchase(user="b", amount=3)])


def truthy(e: object) -> bool:
    return bool(e)


def is_view(e: object) -> bool:
    return isinstance(e, View)


def test_methods_return_new_values_and_never_change_self() -> None:
    p = Pipeline("p")
    s = p.read(src())
    before = list(s.pipeline.steps)
    f = s.filter(is_view)
    m = f.map(lambda e: e)
    assert s.pipeline.steps == before == ["read_memory"]
    assert f.pipeline.steps == ["read_memory", "filter_is_view"]
    assert m.pipeline.steps == ["read_memory", "filter_is_view", "map"]
    assert p.steps == []
    with pytest.raises(AttributeError, match=r"Pipeline is immutable; cannot set 'x'"):
        p.x = 1  # type: ignore[attr-defined]


def test_default_names_are_deterministic_and_scoped_by_route() -> None:
    def build() -> list[str]:
        routes = Pipeline("p").read(src()).map(str).map(str).forward(a=bool, otherwise="b")
        return (
            routes.a.map(len).write(sinks.memory("x")) | routes.b.map(len).write(sinks.memory("y"))
        ).steps

    assert (
        build()
        == build()
        == [
            "read_memory",
            "map_str",
            "map_str_2",
            "forward_a",
            "a_map_len",
            "a_memory_x",
            "b_map_len",
            "b_memory_y",
        ]
    )


def test_explicit_duplicate_name_fails_with_hint() -> None:
    s = Pipeline("p").read(src()).map(str, name="clean")
    with pytest.raises(
        ValueError,
        match=r"step name 'clean' \(filter\) is already used by a "
        r"map step.*pass another name=, e.g. name='clean_2'",
    ):
        s.filter(truthy, name="clean")


def test_bad_step_name_fails() -> None:
    with pytest.raises(ValueError, match=r"step name must be a plain identifier.*got 'by user'"):
        Pipeline("p").read(src()).map(str, name="by user")
    with pytest.raises(ValueError, match=r"pipeline name must be a plain identifier"):
        Pipeline("my-pipe")


def test_union_of_clashing_steps_fails() -> None:
    s = Pipeline("p").read(src())
    a = s.map(str, name="m").write(sinks.memory("a"))
    b = s.filter(truthy, name="m").write(sinks.memory("b"))
    with pytest.raises(ValueError, match=r"two different steps are named 'm' \(map and filter\)"):
        a | b
    with pytest.raises(ValueError, match=r"cannot combine pipeline 'p' with pipeline 'q'"):
        a | Pipeline("q").read(src()).write(sinks.memory("c"))


def test_non_callables_are_refused_where_added() -> None:
    s = Pipeline("p").read(src())
    with pytest.raises(
        TypeError,
        match=r"step 'filter' \(filter\): predicate must be callable; "
        r"got int 3\. Hint:",
    ):
        s.filter(3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"step 'map' \(map\): function must be callable"):
        s.map("upper")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"step 'flat_map' \(flat_map\): function must be"):
        s.flat_map(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"step 'inspect' \(inspect\): function must be"):
        s.inspect(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"step 'key_by' \(key_by\): key function must be"):
        s.key_by("user")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"step 'forward' \(forward\): route 'big' must be"):
        s.forward(big=1)  # type: ignore[arg-type]


def test_class_filter_narrows_and_checks_the_schema() -> None:
    typed = Pipeline("p").read(sources.memory([], schema=View | Purchase))
    assert typed.event_classes == (View, Purchase)
    assert typed.filter(Purchase).event_classes == (Purchase,)
    with pytest.raises(TypeError, match=r"class filter needs an Event subclass; got int"):
        typed.filter(int)  # type: ignore[arg-type]
    only_views = Pipeline("p").read(sources.memory([], schema=View))
    with pytest.raises(TypeError, match=r"carries View, never Purchase\. Hint: filter by one"):
        only_views.filter(Purchase)


def test_forward_route_checks() -> None:
    s = Pipeline("p").read(src())
    with pytest.raises(ValueError, match=r"step 'forward' \(forward\): no routes given"):
        s.forward()
    with pytest.raises(ValueError, match=r"route name 'write' is not a usable identifier"):
        s.forward(write=bool)
    with pytest.raises(ValueError, match=r"route name '_x' is not a usable identifier"):
        s.forward(_x=bool)
    with pytest.raises(ValueError, match=r"route name 'no route' is not a usable identifier"):
        s.forward(a=bool, otherwise="no route")
    with pytest.raises(ValueError, match=r"otherwise='a' is also a route"):
        s.forward(a=bool, otherwise="a")
    with pytest.raises(ValueError, match=r"mode must be 'first' or 'all'; got 'any'"):
        s.forward(a=bool, mode="any")  # type: ignore[arg-type]
    routes = s.forward(a=bool, otherwise="b")
    assert routes.names == ["a", "b"] and routes["a"].step == "forward_a.a"
    with pytest.raises(AttributeError, match=r"no route 'c'; the routes are \['a', 'b'\]"):
        routes.c  # noqa: B018
    with pytest.raises(KeyError, match=r"no route 'c'"):
        routes["c"]
    with pytest.raises(ValueError, match=r"Routes.write needs at least one route=sink"):
        routes.write()


def test_read_write_merge_argument_checks() -> None:
    with pytest.raises(TypeError, match=r"pipeline 'p': read\(\) needs a source; got list"):
        Pipeline("p").read([1, 2])  # type: ignore[arg-type]
    s = Pipeline("p").read(src())
    with pytest.raises(TypeError, match=r"step 'write' \(write\): write\(\) needs a sink; got str"):
        s.write("out.jsonl")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"step 'merge' \(merge\): can only merge streams; got int"):
        s.merge(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"belongs to pipeline 'q', not 'p'"):
        s.merge(Pipeline("q").read(src()))
    with pytest.raises(ValueError, match=r"step 'merge' \(merge\): nothing to merge"):
        s.merge()
    with pytest.raises(TypeError, match=r"dead_letters\(\) needs a sink; got str"):
        s.write(sinks.memory("o")).dead_letters("x")  # type: ignore[arg-type]


def test_key_by_returns_a_keyed_stream() -> None:
    keyed = Pipeline("p").read(src()).key_by(lambda e: e.user)
    assert isinstance(keyed, KeyedStream)


def test_branches_that_reach_no_sink_fail_when_compiling() -> None:
    routes = Pipeline("p").read(src()).forward(a=bool, otherwise="b")
    half = routes.a.write(sinks.memory("a"))
    with pytest.raises(
        PipelineError,
        match=r"branch 'b' of step 'forward_a' \(forward\) never "
        r"reaches a sink\. Hint: routes\.b\.write",
    ):
        half.run()
    s = Pipeline("p").read(src())
    dangling = s.map(str, name="lost")
    written = s.write(sinks.memory("o")) | dangling.map(len).pipeline
    with pytest.raises(PipelineError, match=r"the output of step 'map_len' \(map\) never reaches"):
        written.check()
    with pytest.raises(PipelineError, match=r"pipeline 'p' reads nothing"):
        Pipeline("p").run()


def test_a_branch_whose_written_pipeline_was_thrown_away_is_refused() -> None:
    # Written as in a framework where a write registers its sink: the first branch's
    # pipeline is dropped, so it never ran, and the run of the second reconciled.
    s = Pipeline("shop").read(sources.memory([1, 5, 10]))
    s.filter(lambda x: x > 4, name="big").write(sinks.memory("big"))
    line = test_a_branch_whose_written_pipeline_was_thrown_away_is_refused.__code__.co_firstlineno
    rest = s.filter(lambda x: x <= 4, name="small").write(sinks.memory("small"))
    with pytest.raises(
        PipelineError,
        match=rf"pipeline 'shop': step 'memory_big' \(write, at test_builder\.py:{line + 4}\) "
        r"is not part of it: the pipeline that \.write\(\.\.\.\) returned was thrown away, "
        r"so that branch would never run\. Hint: keep both branches and combine them",
    ):
        rest.run()
    # Both kept and combined: both run.
    big = s.filter(lambda x: x > 4, name="big").write(sinks.memory("big"))
    result = (big | rest).run()
    assert (sorted(result["big"]), result["small"]) == ([5, 10], [1])


def test_a_combination_thrown_away_is_refused_for_either_of_its_parts() -> None:
    """``big | small`` as a statement, as if | joined the branches in place.

    The combination was dropped; ``big.run()`` ran without the small branch and
    reconciled.
    """
    s = Pipeline("split").read(sources.memory([1, 5, 10]))
    big = s.filter(lambda x: x > 4, name="big").write(sinks.memory("big"), name="write_big")
    small = s.filter(lambda x: x <= 4, name="small").write(
        sinks.memory("small"), name="write_small"
    )
    big | small
    line = test_a_combination_thrown_away_is_refused_for_either_of_its_parts.__code__
    at = line.co_firstlineno + 11
    with pytest.raises(
        PipelineError,
        match=rf"pipeline 'split': step 'write_small' \(write, at test_builder\.py:{at}\) is not "
        r"part of it: the pipeline that \| combined it into was thrown away \(the pipelines "
        r"combined are left as they were\), so that branch would never run\. Hint: keep and run "
        r"the combination: flow = first \| second; flow\.run\(\)\.",
    ):
        big.run()
    with pytest.raises(PipelineError, match=r"step 'write_big' \(write, at test_builder\.py:"):
        small.check()
    # Kept, run, or combined by evflow itself (a catalog's build): nothing is refused.
    flow = big | small
    result = flow.run()
    assert (sorted(result["big"]), result["small"]) == ([5, 10], [1])
    assert (big | small).run().reconciles and big.run()["big"] == [5, 10]


def test_a_step_whose_stream_was_thrown_away_is_refused() -> None:
    # As if filter changed the stream in place: the bot was written.
    s = Pipeline("clicks").read(sources.memory(["ada", "bot", "cy"]))
    s.filter(lambda u: u != "bot", name="humans")
    s.key_by(lambda u: u).map(str.upper, name="shout")
    line = test_a_step_whose_stream_was_thrown_away_is_refused.__code__.co_firstlineno
    with pytest.raises(
        PipelineError,
        match=rf"pipeline 'clicks': step 'humans' \(filter, at test_builder\.py:{line + 3}\) is "
        r"not part of it: the stream that \.filter\(\.\.\.\) returned was thrown away, so "
        r"the steps after it read the stream before it\. Hint: methods return a new stream "
        r"and leave the old one as it was: stream = stream\.filter\(\.\.\.\); or leave "
        r"that line out if the step is not wanted\.",
    ):
        s.write(sinks.memory("o")).run()
    with pytest.raises(PipelineError, match=r"step 'shout' \(map, at test_builder\.py:"):
        s.write(sinks.memory("o")).check()
    s = s.filter(lambda u: u != "bot", name="humans")
    assert s.write(sinks.memory("o")).run()["o"] == ["ada", "cy"]


@pytest.mark.parametrize("how", ["testing.run", "preview", "explore"])
def test_the_test_seams_refuse_a_step_whose_stream_was_thrown_away(how: str) -> None:
    # They run a copy of the pipeline with other sources: the copy's steps are new.
    from pipelines import testing

    s = Pipeline("clicks").read(sources.memory(["ada", "bot"]))
    s.filter(lambda u: u != "bot", name="humans")
    flow = s.write(sinks.memory("o"))
    runs = {
        "testing.run": lambda: testing.run(flow, ["bot"]),
        "preview": lambda: flow.preview(["bot"]),
        "explore": lambda: testing.explore(flow, ["bot"], runs=2),
    }
    with pytest.raises(PipelineError, match=r"step 'humans' \(filter, at test_builder\.py:"):
        runs[how]()


def test_running_the_empty_pipeline_names_the_write_that_was_thrown_away() -> None:
    p = Pipeline("empty_run")
    p.read(sources.memory([1])).write(sinks.memory("o"))
    line = test_running_the_empty_pipeline_names_the_write_that_was_thrown_away.__code__
    with pytest.raises(
        PipelineError,
        match=rf"pipeline 'empty_run' reads nothing: it is the empty pipeline, and its steps "
        rf"are in the pipeline that \.write\(\.\.\.\) returned at test_builder\.py:"
        rf"{line.co_firstlineno + 2}, which was thrown away\. Hint: keep what",
    ):
        p.run()
    with pytest.raises(PipelineError, match=r"pipeline 'never' reads nothing\. Hint: Pipeline"):
        Pipeline("never").run()


def test_pipelines_used_or_written_again_are_not_thrown_away() -> None:
    s = Pipeline("nb").read(sources.memory([1, 2, 3]))
    s.map(lambda x: x + 1).write(sinks.memory("shown")).check()  # used, then dropped
    for _ in range(2):  # a notebook cell run twice: the first pipeline is dropped unused
        kept = s.filter(lambda x: x > 1).write(sinks.memory("kept"))
    assert s.map(lambda x: x * 2).write(sinks.memory("other")).run()["other"] == [2, 4, 6]
    assert kept.run()["kept"] == [2, 3]
    # A branch bound to a name and left unused is kept aside, not thrown away.
    aside = s.filter(lambda x: x > 2, name="aside").write(sinks.memory("aside"))
    unused_keyed = s.key_by(str, name="unused_key")
    assert s.write(sinks.memory("plain")).run()["plain"] == [1, 2, 3]
    assert aside.steps[-1] == "memory_aside" and unused_keyed.step == "unused_key"
    # A stream shown (its repr, a notebook's display) is used.
    repr(s.filter(lambda x: x > 2, name="shown_filter"))
    assert s.write(sinks.memory("all")).run()["all"] == [1, 2, 3]
    # Another pipeline, built apart, is not refused for this one's dropped branch.
    other = Pipeline("nb").read(sources.memory([7]))
    s.map(str).write(sinks.memory("dropped"))
    assert other.write(sinks.memory("o")).run()["o"] == [7]


def test_dead_letter_sinks_must_agree_when_combining() -> None:
    s = Pipeline("p").read(src())
    a = s.write(sinks.memory("a")).dead_letters(sinks.memory("d1"))
    b = s.map(str).write(sinks.memory("b")).dead_letters(sinks.memory("d2"))
    with pytest.raises(ValueError, match=r"write dead letters to different sinks"):
        a | b


async def fetch(record: Any) -> Any:
    return record


async def fetch_all(record: Any) -> Any:
    yield record


class AsyncCall:
    async def __call__(self, record: Any) -> Any:
        return record


def one_value_steps(views: Any, two: Any, three: Any) -> dict[str, Any]:
    """The steps that call a function for one value: what their refusal names, and the step.

    ``two`` is given to ``stateful`` and ``three`` to ``process`` in place of the
    function tried (their functions take more arguments).
    """
    from operators import windows
    from pipelines import stateful

    keyed = views.key_by(lambda v: v.user)
    return {
        r"step 'map' \(map\)": lambda f: views.map(f),
        r"step 'filter' \(filter\)": lambda f: views.filter(f),
        r"step 'inspect' \(inspect\)": lambda f: views.inspect(f),
        r"step 'key_by' \(key_by\)": lambda f: views.key_by(f),
        r"\(forward\): route 'big'": lambda f: views.forward(big=f),
        r"callback sink": lambda f: sinks.callback(f),
        r"event_time": lambda f: windows.event_time(f),
        r"stateful: fn": lambda f: stateful(two, initial=int),
        r"on_event": lambda f: keyed.process(three, initial=int),
    }


def test_an_async_function_where_a_step_does_not_await_is_refused_when_added() -> None:
    # map(async_fn) wrote coroutine objects that never ran, filter(async_fn) kept every
    # record (a coroutine is true), a callback sink "wrote" records nowhere.
    views = Pipeline("p").read(sources.memory([], schema=View))
    refused = one_value_steps(views, _async_two, _async_three)
    refused[r"step 'flat_map' \(flat_map\)"] = lambda f: views.flat_map(f)
    for fn in (fetch, fetch_all, AsyncCall()):
        for where, add in refused.items():
            with pytest.raises(TypeError, match=where + r".* is an async function \(async def\), "
                               r"which this step calls without awaiting.*Hint: make it a plain "
                               r"def, or hand it to dispatch"):  # fmt: skip
                add(fn)
    # dispatch awaits its handlers: async ones are taken.
    views.dispatch({View: fetch}).dispatch({object: fetch_all}, name="all")


def _each(record: Any) -> Any:
    yield record


def _each_two(state: Any, event: Any) -> Any:
    yield state, event


def _each_three(state: Any, event: Any, ctx: Any) -> Any:
    yield state


class EachCall:
    def __call__(self, record: Any) -> Any:
        yield record


def test_a_generator_function_where_a_step_takes_one_value_is_refused_when_added() -> None:
    # map(fn_that_yields) wrote generator objects (a jsonl file got "<generator object
    # ...>"), filter kept every record (a generator is true), inspect and a callback
    # sink ran nothing, while the run reconciled.
    views = Pipeline("p").read(sources.memory([View(user="a")], schema=View))
    refused = one_value_steps(views, _each_two, _each_three)
    for fn in (_each, EachCall()):
        for where, add in refused.items():
            with pytest.raises(TypeError, match=where + r".* is a generator function \(it "
                               r"yields\), which this step calls for one value.*Hint: return "
                               r"the value instead of yielding it, or use flat_map"):  # fmt: skip
                add(fn)
        # flat_map and dispatch take what it yields
        got = views.flat_map(fn).write(sinks.memory("o")).run()["o"]
        assert [v.user for v in got] == ["a"]
        handled = views.dispatch({View: fn}).write(sinks.memory("o")).run()["o"]
        assert [v.user for v in handled] == ["a"]


async def _async_two(state: Any, event: Any) -> Any:
    return state, event


async def _async_three(state: Any, event: Any, ctx: Any) -> Any:
    return state


def test_a_function_that_cannot_take_what_its_step_passes_is_refused_when_added() -> None:
    # A map function of two parameters, a process function of two, a select of
    # one... each failed on every record at run time (every record a dead
    # letter); now the step is refused when it is added, saying what it passes.
    import functools
    import operator

    from operators import windows
    from pipelines import EventBus, stateful

    class TwoHandle:
        def handle(self, event: View, extra: int) -> None:
            pass

    views = Pipeline("p").read(sources.memory([], schema=View))
    keyed = views.key_by(lambda v: v.user)
    two = lambda a, b: a  # noqa: E731
    one = lambda a: a  # noqa: E731
    refused = {
        r"step 'map' \(map\): function .* takes \(a, b\), but is called with one argument "
        r"\(the record\)": lambda: views.map(two),
        r"step 'filter' \(filter\): predicate": lambda: views.filter(lambda: True),
        r"step 'key_by' \(key_by\): key function": lambda: views.key_by(two),
        r"step 'flat_map' \(flat_map\)": lambda: views.flat_map(two),
        r"step 'inspect' \(inspect\)": lambda: views.inspect(two),
        r"\(forward\): route 'big'": lambda: views.forward(big=two),
        r"on_event .* called with three arguments \(the key's state, the event and the "
        r"context\)": lambda: keyed.process(two, initial=int),
        r"on_timer .* called with three arguments \(the key's state, the timer": lambda: (
            keyed.process(lambda s, e, c: s, initial=int, on_timer=one)
        ),
        r"initial .* takes \(a\), but is called with no argument": lambda: keyed.process(
            lambda s, e, c: s, initial=one
        ),
        r"select .* called with two arguments \(the left record and the right one\)": lambda: (
            keyed.join(keyed.as_table(), select=one)
        ),
        r"as_table on .*: deleted .* called with one argument \(a row\)": lambda: keyed.as_table(
            deleted=two
        ),
        r"stateful: fn .* called with two arguments": lambda: stateful(one, initial=int),
        r"event_time: function .* called with one argument \(the event\)": lambda: (
            windows.event_time(two)
        ),
        r"generate: factory .* called with two arguments": lambda: sources.generate(one, count=1),
        r"callback sink: fn .* called with one argument": lambda: sinks.callback(two),
        r"\(dispatch\): the handler for View .* called with one argument \(the event\)": lambda: (
            views.dispatch({View: two})
        ),
        r"register: handler .*handle line .* called with one argument": lambda: EventBus().register(
            View, TwoHandle()
        ),
    }
    for message, add in refused.items():
        with pytest.raises(TypeError, match=message):
            add()
    # What can take the arguments is taken: defaults, *args, builtins, partials,
    # methods and callables whose signature cannot be read.
    views.map(lambda e, factor=2: e).map(len).map(print).inspect()
    views.map(functools.partial(two, 1)).key_by(operator.attrgetter("user"))
    keyed.process(lambda *args: None, initial=dict, on_timer=lambda s, t, c, extra=0: s)
    views.filter(str.isupper).map("{}".format)


def test_a_stream_previews_its_records_before_a_sink_is_chosen() -> None:
    s = Pipeline("look").read(sources.memory([{"user": "ada"}, "not json"], schema=View))
    result = s.filter(lambda v: v.user != "bob").preview()
    assert [v.user for v in result["preview"]] == ["ada"]
    assert result.dead == 1 and result.reconciles
    assert s.map(lambda v: v.user).preview([{"user": "cy"}])["preview"] == ["cy"]


@pytest.mark.parametrize("method", ["run", "check", "dead_letters"])
def test_a_stream_says_it_must_be_written_before_it_runs(method: str) -> None:
    s = Pipeline("look").read(sources.memory([1]))
    with pytest.raises(
        AttributeError,
        match=rf"stream 'read_memory' is not written anywhere yet, so it has no {method}\(\): "
        r"a pipeline does \(what \.write\(\.\.\.\) returns\)\. Hint: "
        rf"\.write\(sinks\.memory\('out'\)\)\.{method}\(\.\.\.\), or \.preview\(\)",
    ):
        getattr(s, method)()


@pytest.mark.parametrize(
    ("method", "hint"),
    [
        ("write", r"write the stream to each sink and combine: stream\.write\(a\) \| "),
        ("filter", r"add \.filter\(\.\.\.\) to the stream before \.write\(\.\.\.\)"),
        ("key_by", r"add \.key_by\(\.\.\.\) to the stream before \.write\(\.\.\.\)"),
    ],
)
def test_a_pipeline_asked_for_a_streams_method_says_where_steps_go(method: str, hint: str) -> None:
    # It was a bare "'Pipeline' object has no attribute 'write'".
    flow = Pipeline("flow").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(
        AttributeError,
        match=rf"pipeline 'flow' has no {method}\(\): a pipeline is what \.write\(\.\.\.\) "
        rf"returns, and steps are added to streams\. Hint: {hint}",
    ):
        getattr(flow, method)
    with pytest.raises(AttributeError, match=r"'Pipeline' object has no attribute 'nosuch'$"):
        flow.nosuch  # type: ignore[attr-defined]  # noqa: B018
