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
    with pytest.raises(
        TypeError,
        match=r"got the class Order .*Hint: forward\(order=Order\), or "
        r"dispatch\(\{Order: handler\}\)",
    ):
        stream.forward({Order: lambda e: True})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"route 'big' given both in the dict and as a keyword"):
        stream.forward({"big": lambda x: x > 5}, big=lambda x: x > 9)
    with pytest.raises(TypeError, match=r"routes are named predicates; got list"):
        stream.forward([lambda x: x > 5])  # type: ignore[arg-type]


def test_a_class_routes_its_instances_as_filter_keeps_them() -> None:
    """forward(views=View): a class as a route, its branch typed by it.

    A class was taken as a function of one record, and refused with its
    constructor's signature.
    """
    import pytest

    from operators import Event

    class View(Event):
        page: str = "/"

    class Buy(Event):
        amount: float = 0.0

    class BigBuy(Buy):
        pass

    class Refund(Event):
        amount: float = 0.0

    records = [View(), Buy(amount=3), BigBuy(amount=300), View(page="/a"), Buy(amount=1)]
    stream = Pipeline("c").read(sources.memory(records, schema=View | Buy | BigBuy))
    routes = stream.forward(buys=Buy, views=View, mode="all")
    assert routes.buys.event_classes == (Buy, BigBuy)
    assert routes.views.event_classes == (View,)
    # steps after a class route know its fields: a Buy field on the views branch is refused
    with pytest.raises(ValueError, match=r"reads field 'amount', which View does not have"):
        from operators import agg

        routes.views.key_by(lambda v: v.page).aggregate(total=agg.sum("amount"))
    result = routes.write(buys=sinks.memory("buys"), views=sinks.memory("views")).run(workers=2)
    assert sorted((type(b).__name__, b.amount) for b in result["buys"]) == [
        ("BigBuy", 300.0),
        ("Buy", 1.0),
        ("Buy", 3.0),
    ]
    assert sorted(v.page for v in result["views"]) == ["/", "/a"]
    assert result.reconciles
    # mixed with predicates, first match wins; the rest go to otherwise
    first = stream.forward(big=lambda e: getattr(e, "amount", 0) > 100, buys=Buy, otherwise="rest")
    result = first.write(
        big=sinks.memory("big"), buys=sinks.memory("buys"), rest=sinks.memory("rest")
    ).run()
    assert [b.amount for b in result["big"]] == [300.0]
    assert sorted(b.amount for b in result["buys"]) == [1.0, 3.0]
    assert len(result["rest"]) == 2
    with pytest.raises(
        TypeError,
        match=r"step 'forward' \(forward\): route 'refunds' takes Refund, but stream 'read_memory' "
        r"carries View, Buy, BigBuy, never Refund\. Hint: route by one of View, Buy, BigBuy, or "
        r"add Refund to the source schema",
    ):
        stream.forward(refunds=Refund, otherwise="rest")
