"""The retry policy and the retryable/permanent split of errors."""

from __future__ import annotations

import random

import sqlalchemy as sa

from app.errors import (
    ChecksumMismatch,
    CorruptSource,
    SchemaMismatch,
    SourceDataGone,
    StorageUnavailable,
)
from app.retry import RetryPolicy, is_retryable


def test_backoff_grows_exponentially_within_jittered_bounds_and_is_capped() -> None:
    policy = RetryPolicy(initial_interval_sec=1, backoff_coefficient=2, maximum_interval_sec=10)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert len({round(d, 6) for d in delays}) > 100  # jitter: not all the same


def test_the_policy_gives_up_at_the_attempt_cap() -> None:
    policy = RetryPolicy(maximum_attempts=3)
    assert [policy.gives_up(a) for a in (1, 2, 3, 4)] == [False, False, True, True]


def test_transient_errors_are_retried_and_permanent_ones_are_not() -> None:
    assert is_retryable(StorageUnavailable("disk gone"))
    assert is_retryable(ChecksumMismatch("bad bytes in flight"))
    assert is_retryable(ConnectionResetError())
    assert is_retryable(sa.exc.OperationalError("SELECT 1", {}, Exception("server closed")))
    assert not is_retryable(SourceDataGone("files deleted"))
    assert not is_retryable(CorruptSource("every replica is bad"))
    assert not is_retryable(SchemaMismatch("schema changed"))
    assert not is_retryable(ValueError("a bug"))
