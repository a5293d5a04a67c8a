"""Run options that cannot work: their error, and the check of durations."""

from __future__ import annotations

from datetime import timedelta

__all__ = ["OptionError", "seconds_option"]


class OptionError(ValueError):
    """A run option that cannot work: a value out of range, a store that cannot be made.

    ``evflow run`` shows it as an error of its command line (exit status 2),
    not of the pipeline.
    """


def seconds_option(name: str, value: float) -> float:
    """Return ``value`` if it is a positive number of seconds a duration can hold.

    >>> seconds_option("snapshot_interval", 5.0)
    5.0
    >>> try:
    ...     seconds_option("formation_timeout", float("inf"))
    ... except OptionError as exc:
    ...     print(exc)
    formation_timeout must be a positive, finite number of seconds; got inf.
    """
    try:
        usable = value > 0 and timedelta(seconds=value) > timedelta(0)
    except (TypeError, ValueError, OverflowError):
        usable = False
    if not usable:
        msg = f"{name} must be a positive, finite number of seconds; got {value!r}."
        if isinstance(value, int | float) and 0 < value < 1e-6:
            msg += " Durations are counted in whole microseconds: 0.000001 at least."
        raise OptionError(msg)
    return value
