"""forward: first match, every match, otherwise and unrouted."""

from __future__ import annotations

from pipelines import Pipeline, sinks, sources


def nums() -> sources.MemorySource:  # type: ignore[name-defined]
    return sources.memory(range(20))


def test_first_match_with_otherwise() -> None:
    routes = (
        Pipeline("f")
        .read(nums())
        .forward(small=lambda x: x < 5, even=lambda x: x % 2 == 0, otherwise="rest")
    )
    result = routes.write(
        small=sinks.memory("small"), even=sinks.memory("even"), rest=sinks.memory("rest")
    ).run()
    assert sorted(result["small"]) == [0, 1, 2, 3, 4]
    assert sorted(result["even"]) == [6, 8, 10, 12, 14, 16, 18]
    assert sorted(result["rest"]) == [5, 7, 9, 11, 13, 15, 17, 19]
    assert result.unrouted == 0 and result.reconciles


def test_every_match_copies_and_unmatched_are_counted_unrouted() -> None:
    routes = (
        Pipeline("f")
        .read(nums())
        .forward(small=lambda x: x < 5, even=lambda x: x % 2 == 0, mode="all")
    )
    result = routes.write(small=sinks.memory("small"), even=sinks.memory("even")).run()
    assert sorted(result["small"]) == [0, 1, 2, 3, 4]
    assert sorted(result["even"]) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    fw = result.counts["forward_small_even"]
    assert fw.created == 3  # 0, 2 and 4 went to both routes
    assert fw.unrouted == 8 and result.unrouted == 8  # odd numbers of 5 and more
    assert result.read + result.created == result.written + result.unrouted
    assert result.reconciles


def test_branches_continue_with_their_own_steps() -> None:
    routes = Pipeline("f").read(nums()).forward(odd=lambda x: x % 2 == 1, otherwise="even")
    p = routes.odd.map(lambda x: -x).write(sinks.memory("neg")) | routes.even.filter(
        lambda x: x > 10
    ).write(sinks.memory("big_even"))
    result = p.run()
    assert sorted(result["neg"]) == sorted(-x for x in range(1, 20, 2))
    assert sorted(result["big_even"]) == [12, 14, 16, 18]
    assert "odd_map" in result.counts and "even_filter" in result.counts


def test_a_failing_predicate_dead_letters_the_record() -> None:
    routes = Pipeline("f").read(nums()).forward(inv=lambda x: 10 / x > 1, otherwise="rest")
    result = routes.write(inv=sinks.memory("inv"), rest=sinks.memory("rest")).run()
    [dead] = result.dead_letters
    assert dead.payload == "0" and dead.error_type == "ZeroDivisionError"
    assert dead.step == "forward_inv" and len(result["inv"]) == 9 and result.reconciles


def test_routes_may_be_a_dict_and_a_class_as_a_route_says_what_to_write() -> None:
    # forward({...}) (as dispatch takes its handlers) was Python's own "takes 1
    # positional argument but 2 were given".
    import pytest

    from operators import Event

    routes = (
        Pipeline("d")
        .read(nums())
        .forward({"small": lambda x: x < 5, "even": lambda x: x % 2 == 0}, otherwise="rest")
    )
    result = routes.write(
        small=sinks.memory("small"), even=sinks.memory("even"), rest=sinks.memory("rest")
    ).run()
    assert sorted(result["small"]) == [0, 1, 2, 3, 4]
    assert sorted(result["even"]) == [6, 8, 10, 12, 14, 16, 18]
    assert len(result["rest"]) == 8 and result.reconciles

    class Order(Event):
        amount: float = 0.0

    stream = Pipeline("e").read(nums())
    with pytest.raises(TypeError, match=r"got the class Order .*Hint: forward\(order=lambda e: "
                       r"isinstance\(e, Order\)\), or dispatch\(\{Order: handler\}\)"):  # fmt: skip
        stream.forward({Order: lambda e: True})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"route 'big' given both in the dict and as a keyword"):
        stream.forward({"big": lambda x: x > 5}, big=lambda x: x > 9)
    with pytest.raises(TypeError, match=r"routes are named predicates; got list"):
        stream.forward([lambda x: x > 5])  # type: ignore[arg-type]
