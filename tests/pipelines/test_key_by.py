"""key_by: keys are checked strings; keyed streams."""

from __future__ import annotations

from pipelines import Pipeline, sinks, sources


def test_key_by_checks_keys_are_strings() -> None:
    s = Pipeline("k").read(sources.memory([{"u": "a"}, {"u": 7}, {}]))
    result = s.key_by(lambda d: d["u"]).write(sinks.memory("out")).run()
    assert result["out"] == [{"u": "a"}]
    kinds = sorted((d.error_type, d.message.split(":")[0]) for d in result.dead_letters)
    assert kinds == [("KeyError", "'u'"), ("TypeError", "step 'key_by' (key_by)")]
    bad = next(d for d in result.dead_letters if d.error_type == "TypeError")
    assert "must return str; got int 7. Hint: convert it" in bad.message
    assert all(d.kind == "key_error" for d in result.dead_letters)
    assert result.reconciles
