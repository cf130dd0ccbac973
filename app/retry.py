"""Retry policy for task attempts: exponential backoff with full jitter, capped attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass

import sqlalchemy as sa

from app.errors import ReplicatorError


@dataclass(frozen=True)
class RetryPolicy:
    initial_interval_sec: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval_sec: float = 60.0
    maximum_attempts: int = 5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(
            self.maximum_interval_sec,
            self.initial_interval_sec * self.backoff_coefficient ** max(attempt - 1, 0),
        )
        # Half fixed, half jitter: never zero, so a failing source is not hammered.
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def gives_up(self, attempt: int) -> bool:
        return attempt >= self.maximum_attempts


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ReplicatorError):
        return exc.retryable
    # Connection trouble with Postgres or storage is transient by nature.
    return isinstance(exc, OSError | sa.exc.OperationalError | sa.exc.InterfaceError)
