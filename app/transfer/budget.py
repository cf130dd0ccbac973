"""One bandwidth budget per link (source cluster -> target cluster), shared by every apply
process through Redis.

A token bucket in one Redis hash, ``olap:bw:<src cluster>:<dst cluster>``, refilled and taken by
one Lua script (atomic; the clock is Redis' ``TIME``, so hosts need not agree on time). A take is
a reservation: the script always deducts, the balance may go negative, and the caller sleeps
until its debt is repaid by the refill. So one round trip per chunk, and callers are served in
the order they ask. ``take`` asks for at most ``MAX_TAKE`` (1 MiB) at a time, so many processes
interleave fairly.

Redis only carries the budget: if it is lost (restarted empty), the bucket starts again full.
If Redis is unreachable, ``take`` raises StorageUnavailable (the transfer is retryable).
MB = 2^20 bytes (``app.units``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from app.errors import InvalidRequest, StorageUnavailable
from app.transfer import names
from app.units import MB

MAX_TAKE = 1 * MB
KEY_PREFIX = "olap:bw"

# KEYS[1] bucket; ARGV: rate (bytes/s), burst (bytes), n (bytes). Returns the seconds to wait,
# as a string (Lua numbers returned to Redis are truncated to integers).
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
else
  now = ts
end
tokens = tokens - n
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
local idle = math.ceil((burst - tokens) / rate) + 60
redis.call('EXPIRE', KEYS[1], idle)
if tokens >= 0 then
  return '0'
end
return tostring(-tokens / rate)
"""


def link_key(source_cluster: str, target_cluster: str) -> str:
    return f"{KEY_PREFIX}:{names.cluster_name(source_cluster)}:{names.cluster_name(target_cluster)}"


class Budget:
    """``take(n)`` blocks until ``n`` bytes of the link's budget are granted.

    ``link`` is ``(source cluster, target cluster)``. ``mb_per_sec`` <= 0: unlimited (no Redis
    calls). Every process of a link should use the same rate; the bucket refills at the rate
    of whoever asks. ``burst`` (bytes) is what an idle link may send at once (default: a tenth
    of a second's worth, at least 1 MiB)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        link: tuple[str, str],
        mb_per_sec: float,
        *,
        burst: int | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if mb_per_sec < 0:
            raise InvalidRequest(f"bandwidth {mb_per_sec} MB/s must be >= 0 (0: unlimited)")
        self.redis = redis_client
        self.key = link_key(*link)
        self.rate = mb_per_sec * MB
        self.burst = burst if burst is not None else max(int(self.rate / 10), MAX_TAKE)
        self.sleep = sleep
        self._script = redis_client.register_script(_TAKE)
        self.waited = 0.0  # seconds slept, for metrics

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def take(self, n_bytes: int) -> None:
        """Block until ``n_bytes`` may be sent (in pieces of at most MAX_TAKE)."""
        if self.unlimited:
            return
        while n_bytes > 0:
            part = min(n_bytes, MAX_TAKE)
            wait = self._take_once(part)
            if wait > 0:
                self.waited += wait
                self.sleep(wait)
            n_bytes -= part

    def _take_once(self, n: int) -> float:
        try:
            reply = self._script(keys=[self.key], args=[repr(self.rate), self.burst, n])
        except redis.RedisError as exc:
            raise StorageUnavailable(
                f"bandwidth budget {self.key}: Redis is unreachable ({type(exc).__name__})"
            ) from None
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        return float(text)
