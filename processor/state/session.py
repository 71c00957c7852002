"""The per-session record: what is wanted, what Genesys acknowledged, and bookkeeping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from processor.domain import ChangeReason, MessagingTarget, Role, Status

if TYPE_CHECKING:
    from processor.state.work import Work

Cause = tuple[str, int, Status]
"""The event that asked for a session's pending change: (event_id, offset, its status)."""

PersistedSession = tuple[
    str,
    Status | None,
    int,
    int,
    int,
    int,
    int,
    ChangeReason,
    Status | None,
    int,
    int,
    int,
    int,
    "MessagingTarget | None",
    "MessagingTarget | None",
    "Cause | None",
    "Work | None",
]
"""`Session.persisted()`: every field the changelog carries, in slot order."""


class Session:
    """State of one session in a partition store.

    A plain `__slots__` class rather than a dataclass: a store tracks up to millions of
    these, and the hot path mutates them in place.

    Desired state (from events):
        status: the indicator wanted now; `None` = no indicator (never `stopped`).
        originated: `originatedAt` of the wanted indicator (occurred_at clamped to now).
        deadline: when the wanted indicator lapses (0 when none).
        timeout: lifetime of the latest event of the wanted status; sets the refresh lead.
        latest: newest `occurred_at` accepted (clamped to now); older events are out of order.
        window_at: processing time the wanted status was last asked for (suppression).
        reason: why the wanted state is what it is (event, stopped, expired).
        target: where the latest event wants it shown (`None` = the webchat session).
        cause: the event whose change is pending and not yet carried by a call.
    What Genesys acknowledged:
        remote: status shown (`None` = cleared), remote_expires: its `expiresAt` (for a
        messaging target: its "shown until"), remote_target: where it is shown,
        version: last acknowledged version (0 = never changed).
        intent: the call out now, or one whose outcome is unknown (a crash, a timeout):
        resolved by its result or by reading the session back before anything else.
    Bookkeeping:
        epoch: creation time; keeps CRM event ids unique across evictions.
        touched: last activity (eviction clock).
        wake: bucket time of this session's live timer entry (0 = none); not persisted.
        unconfirmed: the messaging indicator recorded as shown came from a call whose
        outcome is unknown (a timeout, a 5xx): it may not be shown, so it is sent again
        while still wanted. Not persisted: after a restore the indicator is refreshed
        on its usual schedule.
    What its typing is like (learned, not persisted; see `bursts`):
        role: the role of the participant who typed last (`None` = not known yet).
        typical: how long this session's typing usually lasts, ms (0 = not known yet).
    """

    __slots__ = (
        "cause",
        "deadline",
        "epoch",
        "intent",
        "latest",
        "originated",
        "reason",
        "remote",
        "remote_expires",
        "remote_target",
        "role",
        "sid",
        "status",
        "target",
        "timeout",
        "touched",
        "typical",
        "unconfirmed",
        "version",
        "wake",
        "window_at",
    )

    def __init__(self, sid: str, now: int) -> None:
        self.sid = sid
        self.status: Status | None = None
        self.originated = 0
        self.deadline = 0
        self.timeout = 0
        self.latest = -1
        self.window_at = 0
        self.reason = ChangeReason.EVENT
        self.remote: Status | None = None
        self.remote_expires = 0
        self.version = 0
        self.epoch = now
        self.touched = now
        self.target: MessagingTarget | None = None
        self.remote_target: MessagingTarget | None = None
        self.cause: Cause | None = None
        self.intent: Work | None = None
        self.wake = 0
        self.unconfirmed = False
        self.role: Role | None = None
        self.typical = 0

    def persisted(self) -> PersistedSession:
        """The fields the changelog carries (everything but the timer handle)."""
        return (
            self.sid,
            self.status,
            self.originated,
            self.deadline,
            self.timeout,
            self.latest,
            self.window_at,
            self.reason,
            self.remote,
            self.remote_expires,
            self.version,
            self.epoch,
            self.touched,
            self.target,
            self.remote_target,
            self.cause,
            self.intent,
        )

    def __repr__(self) -> str:
        return f"Session{self.persisted()!r}"
