"""The per-session record: what is wanted, what Genesys acknowledged, and bookkeeping."""

from __future__ import annotations

from processor.domain import ChangeReason, Status

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
    bool,
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
        latest: newest raw `occurred_at` accepted; older events are out of order.
        window_at: processing time the wanted status was last asked for (suppression).
        reason: why the wanted state is what it is (event, stopped, expired).
    What Genesys acknowledged:
        remote: status shown (`None` = cleared), remote_expires: its `expiresAt`,
        version: last acknowledged version (0 = never changed).
        unsure: a call was in flight or failed ambiguously, so the remote state is unknown
        and the next reconcile must be sent even if it looks redundant.
    Bookkeeping:
        epoch: creation time; keeps CRM event ids unique across evictions.
        touched: last activity (eviction clock).
        wake: bucket time of this session's live timer entry (0 = none); not persisted.
    """

    __slots__ = (
        "deadline",
        "epoch",
        "latest",
        "originated",
        "reason",
        "remote",
        "remote_expires",
        "sid",
        "status",
        "timeout",
        "touched",
        "unsure",
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
        self.unsure = False
        self.wake = 0

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
            self.unsure,
        )

    def __repr__(self) -> str:
        return f"Session{self.persisted()!r}"
