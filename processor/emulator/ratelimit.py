"""Per-OAuth-client rate limiting, the way Genesys throttles an integration.

Two limits, both enforced, per client: a token bucket (sustained `per_minute`, `burst`
back to back) and a fixed one-minute window of `per_minute` calls, which starts with the
first call after the previous window ended. The `inin-ratelimit-*` headers describe the
window, as Genesys reports them: calls counted in it, calls allowed, seconds until it
resets. A call is refused (429) when the bucket is empty or the window is spent, so an
admitted call is never counted beyond `allowed` and a client that follows the headers
never waits for nothing; `Retry-After` is the whole seconds until the call would be
admitted (a token refilled and the window not spent), never 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from processor.clock import Clock

_WINDOW_MS = 60_000


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a call is admitted, and the headers that say so."""

    allowed: bool
    count: int
    limit: int
    reset_s: int
    retry_after_s: int

    def headers(self) -> dict[str, str]:
        """`inin-ratelimit-*` headers (and `Retry-After` when refused)."""
        headers = {
            "inin-ratelimit-count": str(self.count),
            "inin-ratelimit-allowed": str(self.limit),
            "inin-ratelimit-reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


@dataclass(slots=True)
class _Bucket:
    tokens: float
    refilled_at_ms: int
    window_start_ms: int
    window_count: int


class RateLimiter:
    """Token buckets keyed by OAuth client id; `per_minute == 0` admits everything."""

    def __init__(self, per_minute: int, burst: int, clock: Clock) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._per_minute = per_minute
        self._burst = burst

    @property
    def enabled(self) -> bool:
        """False when the limit is switched off."""
        return self._per_minute > 0

    def configure(self, per_minute: int, burst: int) -> None:
        """New limits; buckets restart full so a change never punishes past calls."""
        if (per_minute, burst) != (self._per_minute, self._burst):
            self._per_minute = per_minute
            self._burst = burst
            self._buckets.clear()

    def reset(self) -> None:
        """Forget every client's usage."""
        self._buckets.clear()

    def check(self, client_id: str) -> RateDecision | None:
        """Admit or refuse one call of `client_id`; `None` when limiting is off."""
        if self._per_minute <= 0:
            return None
        now = self._clock.now_ms()
        per_ms = self._per_minute / _WINDOW_MS
        bucket = self._buckets.get(client_id)
        if bucket is None:
            bucket = _Bucket(float(self._burst), now, now, 0)
            self._buckets[client_id] = bucket
        elapsed = max(0, now - bucket.refilled_at_ms)
        bucket.tokens = min(float(self._burst), bucket.tokens + elapsed * per_ms)
        bucket.refilled_at_ms = now
        if now - bucket.window_start_ms >= _WINDOW_MS:
            bucket.window_start_ms = now
            bucket.window_count = 0
        window_left_ms = bucket.window_start_ms + _WINDOW_MS - now
        reset_s = math.ceil(window_left_ms / 1000)
        window_spent = bucket.window_count >= self._per_minute
        if bucket.tokens >= 1.0 and not window_spent:
            bucket.tokens -= 1.0
            bucket.window_count += 1
            return RateDecision(True, bucket.window_count, self._per_minute, reset_s, 0)
        # Retry-After: whole seconds until a token has refilled and (if it is spent) the
        # window has reset, never 0
        token_wait_ms = max(0.0, (1.0 - bucket.tokens) / per_ms)
        wait_ms = max(token_wait_ms, window_left_ms if window_spent else 0)
        retry_after = max(1, math.ceil(wait_ms / 1000))
        return RateDecision(False, bucket.window_count, self._per_minute, reset_s, retry_after)
