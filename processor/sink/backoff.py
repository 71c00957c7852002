"""Exponential backoff with full jitter."""

from __future__ import annotations

import math
import random


class Backoff:
    """Delays for retry `n` drawn uniformly from `[0, min(cap, base * 2**n))`.

    Full jitter spreads the retries of many sessions that failed together, so that a
    recovering API is not hit by a synchronised wave (the thundering herd).
    """

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self._base = base_s
        self._cap = cap_s
        self._rng = rng or random.Random()

    def ceiling(self, retry: int) -> float:
        """Upper bound of the delay before retry number `retry` (0 for the first retry)."""
        # base * 2**retry; the exponent is bounded because the cap is reached long before.
        return min(self._cap, math.ldexp(self._base, min(retry, 62)))

    def delay(self, retry: int) -> float:
        """A jittered delay before retry number `retry`."""
        return float(self._rng.uniform(0.0, self.ceiling(retry)))
