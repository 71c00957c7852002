"""Web-chat sessions as the emulator keeps them: state, ETags and indicator history.

Pure logic, no I/O: time comes from an injected `Clock`, so the ETag and history rules
are tested without a server. The HTTP layer maps the exceptions below to statuses.

Each session keeps the history of its typing indicator's changes for tests and the demo,
but a long-running emulator must not grow without limit: a session keeps its latest
`history_kept` changes (`DEFAULT_HISTORY_KEPT` unless configured), drops the oldest
first, and counts what it dropped (`Session.history_dropped`), so that a reader can tell
a whole history from a cut one.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from processor.clock import Clock
from processor.domain import SessionState

TYPING_INDICATOR = "typingIndicator"
DEFAULT_HISTORY_KEPT = 1_000
"""Changes of the typing indicator each session keeps by default: every change a test
makes, while a session patched at the whole rate (300 a minute) for hours stays at about
half a MiB."""


class SessionNotFound(LookupError):
    """No session with that id (404)."""


class SessionExists(ValueError):
    """A session with that id already exists (409 on create)."""


class PreconditionRequired(ValueError):
    """A write without `If-Match` (428)."""


class PreconditionFailed(ValueError):
    """`If-Match` does not name the current ETag (412)."""


class SessionNotConnected(ValueError):
    """Typing indicators apply only to connected sessions (409)."""

    def __init__(self, state: SessionState) -> None:
        super().__init__(f"session is {state.value}, not connected")
        self.state = state


@dataclass(frozen=True, slots=True)
class IndicatorChange:
    """One change of `customAttributes.typingIndicator`, at server time `at_ms`."""

    at_ms: int
    typing_indicator: dict[str, Any] | None
    etag: str
    source: str

    def to_json(self) -> dict[str, Any]:
        """The admin API's snake_case view."""
        return {
            "at_ms": self.at_ms,
            "typing_indicator": self.typing_indicator,
            "etag": self.etag,
            "source": self.source,
        }


@dataclass(slots=True)
class Session:
    """One web-chat session; mutated only through `SessionStore`."""

    id: str
    state: SessionState
    etag: str
    custom_attributes: dict[str, Any] = field(default_factory=dict)
    # the latest changes, oldest first (bounded by the store's `history_kept`)
    history: deque[IndicatorChange] = field(default_factory=deque)
    # older changes no longer in `history`
    history_dropped: int = 0

    def to_genesys(self) -> dict[str, Any]:
        """The body of `GET /api/v2/webchat/sessions/{id}` (camelCase, as Genesys)."""
        return {
            "id": self.id,
            "state": self.state.value,
            "etag": self.etag,
            "customAttributes": dict(self.custom_attributes),
        }


def normalise_etag(value: str) -> str:
    """An entity tag without weak prefix and quotes, so `W/"x"`, `"x"` and `x` compare equal."""
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


class SessionStore:
    """All sessions of one emulator, with the ETag discipline of DESIGN §2.

    ETags are `<store prefix>-<sequence>`: the random prefix keeps an ETag cached before
    a reset from ever matching a session created after it. Each session keeps its latest
    `history_kept` changes of the typing indicator.
    """

    def __init__(self, clock: Clock, history_kept: int = DEFAULT_HISTORY_KEPT) -> None:
        if history_kept < 0:
            raise ValueError("history_kept must not be negative")
        self.history_kept = history_kept
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._prefix = secrets.token_hex(4)
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def _next_etag(self) -> str:
        self._sequence += 1
        return f"{self._prefix}-{self._sequence}"

    def get(self, session_id: str) -> Session:
        """The session, or `SessionNotFound`."""
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(session_id) from None

    def create(
        self,
        session_id: str,
        state: SessionState = SessionState.CONNECTED,
        custom_attributes: dict[str, Any] | None = None,
    ) -> Session:
        """A new session with a fresh ETag; `SessionExists` if the id is taken."""
        if session_id in self._sessions:
            raise SessionExists(session_id)
        session = Session(
            id=session_id,
            state=state,
            etag=self._next_etag(),
            history=deque(maxlen=self.history_kept),
        )
        self._sessions[session_id] = session
        if custom_attributes and self._merge(session, custom_attributes):
            self._record(session, "admin")
        return session

    def set_state(self, session_id: str, state: SessionState) -> Session:
        """Move a session to `state`; a real change gets a new ETag."""
        session = self.get(session_id)
        if session.state is not state:
            session.state = state
            session.etag = self._next_etag()
        return session

    def admin_merge(self, session_id: str, custom_attributes: dict[str, Any]) -> Session:
        """Another writer's merge: no precondition, no state check, new ETag."""
        session = self.get(session_id)
        changed = self._merge(session, custom_attributes)
        session.etag = self._next_etag()
        if changed:
            self._record(session, "admin")
        return session

    def bump(self, session_id: str) -> Session:
        """Another writer touched the session: only its ETag changes."""
        session = self.get(session_id)
        session.etag = self._next_etag()
        return session

    def check_write(self, session_id: str, if_match: str | None) -> Session:
        """The preconditions of a PATCH, in the order the API reports them.

        404 unknown, 428 no `If-Match`, 412 stale `If-Match`, 409 not connected.
        """
        session = self.get(session_id)
        if if_match is None or not if_match.strip():
            raise PreconditionRequired(session_id)
        if normalise_etag(if_match) != session.etag:
            raise PreconditionFailed(session_id)
        if session.state is not SessionState.CONNECTED:
            raise SessionNotConnected(session.state)
        return session

    def patch(
        self, session_id: str, if_match: str | None, custom_attributes: dict[str, Any]
    ) -> Session:
        """A conditional merge of `customAttributes` (`None` values delete keys)."""
        session = self.check_write(session_id, if_match)
        changed = self._merge(session, custom_attributes)
        # Every accepted write is a new version, even one that changes nothing.
        session.etag = self._next_etag()
        if changed:
            self._record(session, "api")
        return session

    @staticmethod
    def _merge(session: Session, changes: dict[str, Any]) -> bool:
        """Merge `changes` into the attributes; True when the typing indicator changed."""
        attributes = session.custom_attributes
        before = attributes.get(TYPING_INDICATOR)
        for key, value in changes.items():
            if value is None:
                attributes.pop(key, None)
            else:
                attributes[key] = value
        return attributes.get(TYPING_INDICATOR) != before

    def _record(self, session: Session, source: str) -> None:
        indicator = session.custom_attributes.get(TYPING_INDICATOR)
        if len(session.history) == session.history.maxlen:
            session.history_dropped += 1  # the oldest goes to make room
        session.history.append(
            IndicatorChange(
                at_ms=self._clock.now_ms(),
                typing_indicator=dict(indicator) if isinstance(indicator, dict) else None,
                etag=session.etag,
                source=source,
            )
        )
