"""Plain domain types shared by the state engine, the sink and the runtime.

Pydantic models live at the boundaries (`models.py`); inside, these small frozen
dataclasses travel between the pure logic and the I/O edges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
_SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)
UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
"""A Genesys id: canonical UUID text (either case on input, lower case once validated)."""
_UUID_RE = re.compile(UUID_PATTERN)


def is_valid_session_id(session_id: str) -> bool:
    """True when `session_id` is safe to put into a URL path (DESIGN §2)."""
    return _SESSION_ID_RE.fullmatch(session_id) is not None


def is_uuid(value: str) -> bool:
    """True when `value` is a Genesys id (a UUID), safe to put into a URL path (§2b)."""
    return _UUID_RE.fullmatch(value) is not None


MESSAGING_MIN_DURATION_MS = 1000
"""The shortest `duration` a messaging typing call sends (DESIGN §2b)."""


class Status(StrEnum):
    """Status of an input typing event."""

    TYPING = "typing"
    PAUSED = "paused"
    STOPPED = "stopped"


class Role(StrEnum):
    """Role of the participant who types."""

    CUSTOMER = "customer"
    AGENT = "agent"
    BOT = "bot"


class SessionState(StrEnum):
    """State of a Genesys web-messaging session."""

    QUEUED = "queued"
    CONNECTED = "connected"
    CLOSED = "closed"


class ChangeReason(StrEnum):
    """Why a change was applied in Genesys (CRM-sync `reason`)."""

    EVENT = "event"
    STOPPED = "stopped"
    EXPIRED = "expired"
    SESSION_CLOSED = "session_closed"


class Decision(StrEnum):
    """Audit `result`: what the processor decided or what happened to a decision."""

    APPLIED = "applied"
    SUPPRESSED = "suppressed"
    STALE = "stale"
    EXPIRED = "expired"
    CLEARED = "cleared"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    REJECTED = "rejected"
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_NOT_CONNECTED = "session_not_connected"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    COALESCED = "coalesced"
    AUTH_CONFIG_ERROR = "auth_config_error"
    LAPSED = "lapsed"
    """A messaging indicator ran out at its "shown until" (no call: there is no "Off")."""


class Outcome(StrEnum):
    """Result of one `apply` on the Genesys sink."""

    APPLIED = "applied"
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_NOT_CONNECTED = "session_not_connected"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    FAILED = "failed"
    REJECTED = "rejected"
    AUTH_CONFIG_ERROR = "auth_config_error"
    OVERTAKEN = "overtaken"
    """Nothing sent: the session shows a change of this version or later that the
    caller did not record (`remote_indicator` says which)."""


@dataclass(frozen=True, slots=True)
class Indicator:
    """A typing indicator as written to `customAttributes.typingIndicator`."""

    status: Status
    originated_at: int
    expires_at: int
    version: int

    def to_genesys(self) -> dict[str, Any]:
        """The camelCase body Genesys stores."""
        return {
            "status": self.status.value,
            "originatedAt": self.originated_at,
            "expiresAt": self.expires_at,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class AgentTypingTarget:
    """Agent or bot typing shown to the customer (DESIGN §2b); ids are UUIDs."""

    conversation_id: str
    communication_id: str


@dataclass(frozen=True, slots=True)
class OpenMessagingTarget:
    """Customer typing from an Open Messaging integration, shown to the agent (§2b).

    Equal for the same customer of the same integration whatever its `nickname` (the name
    the agent sees written, which a producer may send on some events only): a new one is
    not a move to another target."""

    integration_id: str
    from_id: str
    from_id_type: str = "Opaque"
    nickname: str | None = field(default=None, compare=False)


MessagingTarget = AgentTypingTarget | OpenMessagingTarget
"""Where a messaging indicator is shown; `None` in its place means the webchat session."""


@dataclass(frozen=True, slots=True)
class SinkResult:
    """What one call did: an outcome plus the cost of getting it.

    `ambiguous`: a change-making request went out and no definitive answer came back
    (timeout, lost connection, 5xx), so it may or may not have taken effect.
    `remote_indicator`: what a read-back (or an `overtaken` call) found (`None` = no
    indicator, or no read).
    `shown_until_ms`: for a messaging typing call, when the indicator its last request
    shows lapses (epoch ms: when the request went out plus the `duration` it carried;
    `None` for other calls). A request sent late sends at least
    `MESSAGING_MIN_DURATION_MS`, which may show it past what the call was asked for.
    """

    outcome: Outcome
    http_status: int | None = None
    attempts: int = 0
    latency_ms: float = 0.0
    call_latencies_ms: tuple[float, ...] = field(default=())
    error: str = ""
    remote_state: SessionState | None = None
    ambiguous: bool = False
    remote_indicator: Indicator | None = None
    shown_until_ms: int | None = None

    @property
    def ok(self) -> bool:
        """True when the desired state is now the remote state."""
        return self.outcome is Outcome.APPLIED
