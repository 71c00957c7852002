"""Exponential backoff with full jitter."""

from __future__ import annotations

import math
import random


class Backoff:
    """Delays for retry `n` drawn uniformly from `[0, min(cap, base * 2**n))`.

    Full jitter spreads the retries of many sessions that failed together, so that a
    recovering API is not hit by a synchronised wave (the thundering herd).

    `base_s` must be positive. `cap_s` may be anything from 0 up: a cap below the base
    bounds every delay by the cap, and a cap of 0 retries at once (every delay is 0.0).
    """

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s <= 0:
            raise ValueError(f"backoff needs base_s > 0, got {base_s}")
        if cap_s < 0:
            raise ValueError(f"backoff needs cap_s >= 0, got {cap_s}")
        self._base = base_s
        self._cap = cap_s
        self._rng = rng or random.Random()

    def ceiling(self, retry: int) -> float:
        """Upper bound of the delay before retry number `retry` (0 for the first retry)."""
        # base * 2**retry; the exponent is bounded (2**1024 would overflow a float) and
        # the cap is reached long before it.
        return min(self._cap, math.ldexp(self._base, min(retry, 62)))

    def delay(self, retry: int) -> float:
        """A jittered delay before retry number `retry`."""
        return float(self._rng.uniform(0.0, self.ceiling(retry)))
