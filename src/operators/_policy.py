"""Error policies: what a step does when a record fails."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ErrorPolicy", "PipelineHalted", "Policy", "as_policy", "retry"]

PolicyName = Literal["dead_letter", "skip", "halt"]


@dataclass(frozen=True)
class ErrorPolicy:
    """How a step treats a failing record.

    - ``dead_letter`` (default): the record becomes a `DeadLetter`;
    - ``skip``: the record is dropped and counted as skipped;
    - ``retry``: the call is tried again ``attempts`` times in all, sleeping
      ``backoff * 2**n`` seconds between tries, then dead-lettered;
    - ``halt``: the run stops, with the step and the root cause first.
    """

    mode: Literal["dead_letter", "skip", "retry", "halt"] = "dead_letter"
    attempts: int = 1
    backoff: float = 0.0

    def __post_init__(self) -> None:
        """Check the numbers."""
        attempts, backoff = self.attempts, self.backoff
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            msg = f"retry attempts must be a whole number of at least 1; got {attempts!r}."
            raise ValueError(msg)
        real = isinstance(backoff, int | float) and not isinstance(backoff, bool)
        if not real or not 0 <= backoff < math.inf:
            msg = f"retry backoff must be zero or positive seconds; got {backoff!r}."
            raise ValueError(msg)


Policy = ErrorPolicy | PolicyName


def retry(attempts: int = 3, backoff: float = 0.05) -> ErrorPolicy:
    """Retry a failing call, then dead-letter it.

    >>> retry(3, backoff=0.1)
    ErrorPolicy(mode='retry', attempts=3, backoff=0.1)
    """
    return ErrorPolicy("retry", attempts, backoff)


def as_policy(policy: Policy) -> ErrorPolicy:
    """Turn a policy name or value into an `ErrorPolicy`.

    >>> as_policy("skip").mode
    'skip'
    """
    if isinstance(policy, ErrorPolicy):
        return policy
    if policy in ("dead_letter", "skip", "halt"):
        return ErrorPolicy(policy)
    msg = (
        f"unknown error policy {policy!r}. Hint: use 'dead_letter', 'skip', 'halt' "
        f"or retry(attempts=3, backoff=0.05)."
    )
    raise ValueError(msg)


class PipelineHalted(RuntimeError):
    """Raised when a step with the ``halt`` policy meets a failing record.

    Its ``__cause__`` is the user's own exception.
    """

    def __init__(self, pipeline: str, step: str, function: str, payload: str) -> None:
        """Describe where the run stopped."""
        self.pipeline = pipeline
        self.step = step
        self.function = function
        self.payload = payload
        super().__init__(
            f"pipeline {pipeline!r} halted at step {step!r} ({function}) on {payload[:200]!r}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's arguments (halts cross processes)."""
        return (type(self), (self.pipeline, self.step, self.function, self.payload))
