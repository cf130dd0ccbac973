"""Retry policy for task attempts: exponential backoff with jitter, capped attempts.

Which errors are worth another attempt is the error's branch (``app.errors.retryable``); this
module only says when and how often.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from app.errors import InvalidRequest, retryable

is_retryable = retryable  # the name the task code and its tests use


@dataclass(frozen=True)
class RetryPolicy:
    """Attempt ``n`` failed: wait ``delay(n)`` seconds, unless ``gives_up(n)``.

    The ceiling grows as ``initial * coefficient ** (n - 1)`` up to ``maximum_interval_sec``; the
    wait is half that ceiling plus up to another half of jitter, so it is never zero (a failing
    source is not hammered) and retries of many tasks spread out.
    """

    initial_interval_sec: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval_sec: float = 60.0
    maximum_attempts: int = 5

    def __post_init__(self) -> None:
        if self.initial_interval_sec <= 0:
            raise InvalidRequest("retry initial_interval_sec must be above 0")
        if self.backoff_coefficient < 1:
            raise InvalidRequest("retry backoff_coefficient must be at least 1")
        if self.maximum_interval_sec < self.initial_interval_sec:
            raise InvalidRequest("retry maximum_interval_sec must be at least the initial one")
        if self.maximum_attempts < 1:
            raise InvalidRequest("retry maximum_attempts must be at least 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(
            self.maximum_interval_sec,
            self.initial_interval_sec * self.backoff_coefficient ** max(attempt - 1, 0),
        )
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def gives_up(self, attempt: int) -> bool:
        return attempt >= self.maximum_attempts
