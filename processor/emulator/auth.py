"""OAuth client credentials as the emulator grants them: clients, tokens and scopes.

Tokens are opaque random strings kept in memory with their client, scopes and expiry.
Secrets and tokens never appear in a repr, a log line or an error body.
"""

from __future__ import annotations

import hmac
import math
import secrets
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from processor.clock import Clock

SCOPE_WEBCHAT_READ = "webchat:read"
SCOPE_WEBCHAT_WRITE = "webchat:write"
SCOPE_WEBCHAT_WRITE_SESSION = "webchat:write:session"
SCOPE_CONVERSATIONS = "conversations"
SCOPE_MESSAGING = "messaging"

DEFAULT_SCOPES: tuple[str, ...] = (
    SCOPE_WEBCHAT_READ,
    SCOPE_WEBCHAT_WRITE,
    SCOPE_WEBCHAT_WRITE_SESSION,
    SCOPE_CONVERSATIONS,
    SCOPE_MESSAGING,
)

# Either scope of a set is enough. A write scope also covers reads, as Genesys'
# non-readonly scopes do.
READ_SESSION_SCOPES = frozenset({SCOPE_WEBCHAT_READ, SCOPE_WEBCHAT_WRITE})
WRITE_SESSION_SCOPES = frozenset({SCOPE_WEBCHAT_WRITE, SCOPE_WEBCHAT_WRITE_SESSION})
TYPING_SCOPES = frozenset({SCOPE_CONVERSATIONS})
MESSAGING_SCOPES = frozenset({SCOPE_MESSAGING})

# Expired tokens are dropped lazily; sweep the table when it grows past this size.
_SWEEP_THRESHOLD = 10_000


class ClientConfig(BaseModel):
    """One OAuth client the emulator knows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: Annotated[str, Field(min_length=1, max_length=256)]
    client_secret: SecretStr
    scopes: tuple[str, ...] = DEFAULT_SCOPES


class AuthError(Exception):
    """A token request that fails; `status` and `code` go into the Genesys error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid bearer token allows."""

    client_id: str
    scopes: frozenset[str]
    expires_at_ms: int

    def allows(self, any_of: frozenset[str]) -> bool:
        """True when the grant holds at least one of `any_of`."""
        return not self.scopes.isdisjoint(any_of)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token response; `access_token` is secret and kept out of the repr."""

    access_token: str = field(repr=False)
    expires_in: int
    scopes: tuple[str, ...]


class Authenticator:
    """Checks client credentials, issues tokens and resolves bearer tokens to grants."""

    def __init__(self, clients: tuple[ClientConfig, ...], clock: Clock) -> None:
        self._clients = {client.client_id: client for client in clients}
        self._clock = clock
        self._tokens: dict[str, Grant] = {}
        self._sweep_at = _SWEEP_THRESHOLD

    def __repr__(self) -> str:
        return f"Authenticator(clients={sorted(self._clients)!r}, tokens={len(self._tokens)})"

    def issue(
        self,
        client_id: str,
        client_secret: str,
        requested_scope: str | None,
        lifetime_s: float,
    ) -> IssuedToken:
        """A token for a client, or `AuthError` (401 bad credentials, 400 bad scope)."""
        client = self._clients.get(client_id)
        expected = client.client_secret.get_secret_value().encode() if client else b""
        # compare in constant time even for unknown clients, so timing reveals nothing
        secret_ok = hmac.compare_digest(expected, client_secret.encode())
        if client is None or not secret_ok:
            raise AuthError(401, "bad.credentials", "Invalid client credentials")
        scopes = self._grantable(client, requested_scope)
        now = self._clock.now_ms()
        self._sweep(now)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = Grant(
            client_id=client.client_id,
            scopes=frozenset(scopes),
            expires_at_ms=now + math.ceil(lifetime_s * 1000),
        )
        return IssuedToken(access_token=token, expires_in=math.floor(lifetime_s), scopes=scopes)

    @staticmethod
    def _grantable(client: ClientConfig, requested_scope: str | None) -> tuple[str, ...]:
        requested = tuple(dict.fromkeys((requested_scope or "").split()))
        if not requested:
            return client.scopes
        missing = [scope for scope in requested if scope not in client.scopes]
        if missing:
            raise AuthError(
                400, "invalid_scope", f"Scope not granted to this client: {' '.join(missing)}"
            )
        return requested

    def grant_for(self, authorization: str | None) -> Grant | None:
        """The grant of an `Authorization: Bearer ...` header; `None` if unknown or expired."""
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        grant = self._tokens.get(token.strip())
        if grant is None:
            return None
        if self._clock.now_ms() >= grant.expires_at_ms:
            del self._tokens[token.strip()]
            return None
        return grant

    def _sweep(self, now_ms: int) -> None:
        if len(self._tokens) < self._sweep_at:
            return
        self._tokens = {t: g for t, g in self._tokens.items() if g.expires_at_ms > now_ms}
        # many live tokens: sweep again only once the table has doubled (amortised O(1))
        self._sweep_at = max(_SWEEP_THRESHOLD, 2 * len(self._tokens))

    def forget_tokens(self) -> None:
        """Invalidate every token issued so far."""
        self._tokens.clear()
