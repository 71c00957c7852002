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
    # The OAuth client's budget (DESIGN §4b); each replica spends its partitions' share.
    rate_per_minute: int = 300
    # How long one call may keep retrying 5xx answers and timeouts (with backoff).
    max_retry_s: float = 10.0
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
    # One connection per call that may be in flight (`TYPING_MAX_IN_FLIGHT`): calls never
    # queue inside the pool, where httpcore scans every waiter and our clears-first order
    # would be lost. With HTTP/2 (where the service offers it) one connection carries many.
    max_connections: int = 32
    max_keepalive_connections: int = 32
    http2: bool = True
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

    @property
    def request_deadline_s(self) -> float:
        """The most one request may take, from its wait for a connection to its answer's
        last byte: each of its waits' timeouts once."""
        return (
            self.pool_timeout_s
            + self.connect_timeout_s
            + self.write_timeout_s
            + self.read_timeout_s
        )

    @property
    def token_url(self) -> str:
        """Where client credentials are exchanged for a bearer token."""
        return f"{self.login_url.rstrip('/')}/oauth/token"

    def session_url(self, session_id: str) -> str:
        """URL of one web-messaging session; `session_id` must be validated first."""
        return f"{self.api_url.rstrip('/')}/api/v2/webchat/sessions/{session_id}"

    def agent_typing_url(self, conversation_id: str, communication_id: str) -> str:
        """URL of the agent typing event of a messaging conversation (ids validated first)."""
        return (
            f"{self.api_url.rstrip('/')}/api/v2/conversations/messages/{conversation_id}"
            f"/communications/{communication_id}/typing"
        )

    def open_event_url(self, integration_id: str) -> str:
        """URL of an Open Messaging integration's inbound events (id validated first)."""
        return (
            f"{self.api_url.rstrip('/')}/api/v2/conversations/messages/{integration_id}"
            "/inbound/open/event"
        )

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
            "max_connections": typing.max_in_flight,
            "max_keepalive_connections": typing.max_in_flight,
        }
        values.update(overrides)
        return cls(**values)
