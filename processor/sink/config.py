"""Everything the sink is tuned by, built from the validated settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from processor.settings import GenesysSettings, TypingSettings


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """Tuning of one `GenesysSink` (one OAuth client).

    The credentials are kept out of `repr` (the secret is a `SecretStr` besides), so a
    config can be logged or put into an exception message safely.
    """

    api_url: str
    login_url: str
    client_id: str = field(repr=False)
    client_secret: SecretStr = field(repr=False)
    scope: str | None = None
    # Client-side budget shared by every call of this client; `rate_burst` calls may go at once.
    rate_per_minute: int = 300
    rate_burst: int | None = None
    # How long one `apply` may wait for budget or a 429 pause before it gives up.
    max_rate_wait_s: float = 30.0
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    write_timeout_s: float = 5.0
    pool_timeout_s: float = 5.0
    # PATCH attempts per apply when the ETag is stale (412): first try plus re-read retries.
    max_conflict_attempts: int = 3
    # Attempts per call when the API answers 5xx or does not answer in time.
    max_transient_attempts: int = 3
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 2.0
    breaker_failure_threshold: int = 5
    breaker_reset_timeout_s: float = 10.0
    # A few connections carry the whole budget (300 calls/min is 5/s); httpcore scans every
    # pooled connection on each request, so a large pool costs CPU for nothing.
    max_connections: int = 16
    max_keepalive_connections: int = 16
    keepalive_expiry_s: float = 30.0
    etag_cache_size: int = 100_000
    token_refresh_margin_s: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "rate_per_minute",
            "max_conflict_attempts",
            "max_transient_attempts",
            "breaker_failure_threshold",
            "max_connections",
            "etag_cache_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"SinkConfig.{name} must be at least 1")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError("SinkConfig.rate_burst must be at least 1")

    @property
    def token_url(self) -> str:
        """Where client credentials are exchanged for a bearer token."""
        return f"{self.login_url.rstrip('/')}/oauth/token"

    def session_url(self, session_id: str) -> str:
        """URL of one web-messaging session; `session_id` must be validated first."""
        return f"{self.api_url.rstrip('/')}/api/v2/webchat/sessions/{session_id}"

    @property
    def effective_burst(self) -> int:
        """Calls allowed back to back: `rate_burst`, else five seconds' worth of budget."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, self.rate_per_minute // 12)

    @classmethod
    def from_settings(
        cls, genesys: GenesysSettings, typing: TypingSettings, **overrides: Any
    ) -> SinkConfig:
        """Config for the OAuth client in `genesys`, at `TYPING_API_RATE_PER_MINUTE`."""
        values: dict[str, Any] = {
            "api_url": genesys.resolved_api_url,
            "login_url": genesys.resolved_login_url,
            "client_id": genesys.oauthclient_id,
            "client_secret": genesys.oauthclient_secret,
            "scope": genesys.oauth_scopes,
            "rate_per_minute": typing.api_rate_per_minute,
        }
        values.update(overrides)
        return cls(**values)
