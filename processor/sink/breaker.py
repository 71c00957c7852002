"""Circuit breaker: stop calling an API that keeps failing, probe it now and then."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave for one call from `CircuitBreaker.allow`; `probe` is the half-open breaker's
    probe number, None for a call the closed breaker let through."""

    probe: int | None = None


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; half-opens after `reset_timeout_s`.

    A failure counts only when its request went out after the last failure counted: the
    requests already in flight then fail of the same cause (a dropped HTTP/2 connection
    fails every stream on it at once), which is no more evidence that the API keeps failing.

    While half-open exactly one call (the probe) goes through: its success closes the
    breaker, its failure opens it again for another `reset_timeout_s`. A caller that got
    a permit and then did not call at all gives it back with `abandon(permit)`.
    """

    def __init__(
        self,
        failure_threshold: int,
        reset_timeout_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_s < 0:
            raise ValueError("breaker needs failure_threshold >= 1 and reset_timeout_s >= 0")
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout_s
        self._now = monotonic
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._counted_at = float("-inf")
        self._opened_at = 0.0
        self._probe_out = False
        self._probes = 0  # probes issued so far; the latest is the one out, if any

    @property
    def state(self) -> BreakerState:
        """Current state; an open breaker whose timeout passed reads as half-open."""
        if self._state is BreakerState.OPEN and self.retry_in() <= 0:
            return BreakerState.HALF_OPEN
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when calls may go now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._reset_timeout - self._now())

    def allow(self) -> Permit | None:
        """A permit when a call may go now, else None. A permit given while half-open
        makes the caller the probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit()
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._state = BreakerState.HALF_OPEN
            self._probe_out = True
            self._probes += 1
            return Permit(self._probes)
        return None

    def record_success(self) -> None:
        """The API answered (any non-5xx response): close."""
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probe_out = False

    def record_failure(self, sent_at: float | None = None) -> None:
        """The API failed (5xx, timeout, connection error) a request that went out at
        `sent_at` (this breaker's clock; None: counts whenever it went)."""
        if sent_at is not None and sent_at < self._counted_at:
            return  # in flight when a failure was counted: the same cause, even half-open
        self._counted_at = self._now()
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open()

    def abandon(self, permit: Permit) -> None:
        """The call `permit` allowed was not made (gave up waiting, cancelled): when it was
        the probe still out, free the slot. Any other caller's permit frees nothing, or a
        second probe would go while the first is out."""
        if permit.probe is not None and permit.probe == self._probes:
            self._probe_out = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._now()
        self._probe_out = False
