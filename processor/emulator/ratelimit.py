"""Per-OAuth-client rate limiting, the way Genesys throttles an integration.

Admission is a token bucket (sustained `per_minute`, `burst` back to back). The
`inin-ratelimit-*` headers describe a fixed one-minute window per client, as Genesys
reports them: calls counted in the window, calls allowed, seconds until it resets.
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
        reset_s = math.ceil((bucket.window_start_ms + _WINDOW_MS - now) / 1000)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.window_count += 1
            return RateDecision(True, bucket.window_count, self._per_minute, reset_s, 0)
        # Retry-After: whole seconds until one token has refilled, never 0
        retry_after = max(1, math.ceil((1.0 - bucket.tokens) / per_ms / 1000))
        return RateDecision(False, bucket.window_count, self._per_minute, reset_s, retry_after)
