"""Fault injection: what makes the emulator behave like Genesys Cloud on a bad day.

`Faults` is the configuration (CLI flags at start-up, `PUT /emulator/faults` at run time);
`FaultInjector` turns it into decisions with one seeded RNG, so a run with the same seed
and the same sequence of requests takes the same decisions.
"""

from __future__ import annotations

import random
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
# A second at least: a login answers `expires_in` in whole seconds (rounded down, so that a
# token is never used past its end), and a shorter token would be answered as 0, which no
# client can use.
TokenLifetime = Annotated[float, Field(ge=1.0, le=31_536_000.0)]

DEFAULT_TOKEN_LIFETIME_S = 86_400.0
DEFAULT_RATE_LIMIT_PER_MINUTE = 300
DEFAULT_RATE_LIMIT_BURST = 20

# The 5xx statuses a flaky Genesys front door really answers with.
_ERROR_STATUSES = (500, 502, 503, 504)


class Faults(BaseModel):
    """Every fault knob, as seen by `GET/PUT /emulator/faults`.

    Latency and errors apply to the API (`/api/v2/...`) only, never to `/oauth/token`
    or the admin API, so that a test can make the API flaky and still authenticate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: Annotated[float, Field(ge=0.0, le=60_000.0)] = 0.0
    """Fixed delay added before every API response."""
    jitter_ms: Annotated[float, Field(ge=0.0, le=60_000.0)] = 0.0
    """Uniform random extra delay in `[0, jitter_ms]` on top of `latency_ms`."""
    error_rate: Rate = 0.0
    """Probability that an API call fails with a 5xx before doing anything."""
    conflict_rate: Rate = 0.0
    """Probability that a PATCH with a current `If-Match` meets another writer (412)."""
    token_lifetime_s: TokenLifetime = DEFAULT_TOKEN_LIFETIME_S
    """Lifetime of tokens issued from now on."""
    rate_limit_per_minute: Annotated[int, Field(ge=0, le=10_000_000)] = (
        DEFAULT_RATE_LIMIT_PER_MINUTE
    )
    """Sustained API calls per minute per OAuth client; 0 switches the limit off."""
    rate_limit_burst: Annotated[int, Field(ge=1, le=1_000_000)] = DEFAULT_RATE_LIMIT_BURST
    """Calls a client may make back to back before the sustained rate applies."""
    seed: int | None = None
    """Seed of the fault RNG; `None` seeds from the OS (not reproducible)."""


class FaultsUpdate(BaseModel):
    """Body of `PUT /emulator/faults`: the fields to change; others keep their value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: Annotated[float, Field(ge=0.0, le=60_000.0)] | None = None
    jitter_ms: Annotated[float, Field(ge=0.0, le=60_000.0)] | None = None
    error_rate: Rate | None = None
    conflict_rate: Rate | None = None
    token_lifetime_s: TokenLifetime | None = None
    rate_limit_per_minute: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    rate_limit_burst: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    seed: int | None = None

    def apply_to(self, faults: Faults) -> Faults:
        """`faults` with the fields named in this update replaced."""
        # exclude_unset keeps an explicit `"seed": null` (unseeded) apart from "not given"
        changes = self.model_dump(exclude_unset=True)
        return faults.model_copy(update=changes)


class FaultInjector:
    """Takes fault decisions from the current `Faults` and one seeded RNG."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._rng = random.Random(faults.seed)

    @property
    def faults(self) -> Faults:
        """The faults in force."""
        return self._faults

    def update(self, faults: Faults, *, reseed: bool = False) -> None:
        """Put new faults in force; `reseed` restarts the RNG from `faults.seed`.

        Reseeding whenever a seed is given (even the same one) lets a test replay a
        sequence of decisions exactly.
        """
        self._faults = faults
        if reseed:
            self._rng = random.Random(faults.seed)

    def delay_s(self) -> float:
        """Seconds to hold the next API response (0 when no latency is configured)."""
        faults = self._faults
        if faults.jitter_ms > 0:
            return (faults.latency_ms + self._rng.uniform(0.0, faults.jitter_ms)) / 1000.0
        return faults.latency_ms / 1000.0

    def error_status(self) -> int | None:
        """A 5xx status for the next API call, or `None` when it should go through."""
        rate = self._faults.error_rate
        if rate > 0 and self._rng.random() < rate:
            return self._rng.choice(_ERROR_STATUSES)
        return None

    def conflict(self) -> bool:
        """True when another writer should win the race against the next PATCH."""
        rate = self._faults.conflict_rate
        return rate > 0 and self._rng.random() < rate
