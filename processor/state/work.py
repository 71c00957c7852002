"""What the engine hands to the edges: work for the sink, audit decisions, applied changes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from processor.domain import ChangeReason, Decision, Indicator, MessagingTarget, Status
from processor.models import CrmStatus

# Fixed namespace: CRM event ids must be the same in every process and release.
CRM_EVENT_NAMESPACE = uuid.UUID("5b0f3c7e-8d1f-4b8a-9a53-2f6d0c1e7a41")


class WorkKind(StrEnum):
    """What a piece of work does to the remote indicator."""

    SET = "set"
    REFRESH = "refresh"
    CLEAR = "clear"
    RESOLVE = "resolve"
    """Read the session back to learn whether an unresolved call landed (no change)."""


class NextCall(StrEnum):
    """Where a session's next call goes (`PartitionStore.next_call`), which is what it costs."""

    READ_BACK = "read-back"
    """A read of the webchat session for an unresolved intent: one GET."""
    WEBCHAT = "webchat"
    """A change of the webchat session: a PATCH, after a GET when no ETag is cached."""
    MESSAGING = "messaging"
    """A typing call to the session's messaging target: one POST."""


@dataclass(frozen=True, slots=True)
class Work:
    """Reconcile `session_id` to `desired` (`None` = clear) — one call's worth of intent.

    `version` is the version this change gets once applied (last acknowledged + 1); it is
    inside `desired` for sets and carried here too because clears consume one as well.
    `event_id`/`offset`/`cause_status` name the event that caused it, when one did.
    `target` is where the call goes (`None`: the webchat session); messaging calls carry
    `duration_ms`, and `issued_at` is when the work was taken (its "shown until" is
    `issued_at + duration_ms`, unless the result says a request sent later shows it
    longer); their `desired.expires_at` is that "shown until", or the deadline when the
    shortest duration reaches past it. `deadline_ms` is the wanted indicator's deadline
    when the work was taken: each request carries what is left until it when it goes
    out, clamped to [`MESSAGING_MIN_DURATION_MS`, `duration_ms`] (DESIGN §2b: a call
    that waited for its token still shows typing the longest duration while the
    deadline is further off), and none goes out after it (I1). Not persisted, nor
    compared: a restored messaging intent is never sent again. While the call is out,
    or until its outcome is known, the work is the session's persisted intent (DESIGN
    I6).
    """

    session_id: str
    desired: Indicator | None
    reason: ChangeReason
    kind: WorkKind
    version: int
    event_id: str | None = None
    offset: int | None = None
    cause_status: Status | None = None
    target: MessagingTarget | None = None
    duration_ms: int = 0
    issued_at: int = 0
    deadline_ms: int = field(default=0, compare=False)


@dataclass(slots=True)
class AuditDecision:
    """One audit record's worth of decision (an `AuditRecord` minus timestamp and trace id).

    Treat as immutable. Not `frozen` only because one is built per input event on the hot
    path, and frozen dataclasses initialise through `object.__setattr__`, three times
    slower.
    """

    session_id: str
    indicator_status: str
    result: Decision
    partition: int
    event_id: str | None = None
    offset: int | None = None
    latency_ms: float = 0.0
    error: str = ""
    http_status: int | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """A change now in effect in Genesys (what a `CrmSyncRecord` needs).

    `event_id` is deterministic (see `crm_event_id`), so a redelivered record is recognisable.
    """

    session_id: str
    status: CrmStatus
    version: int
    reason: ChangeReason
    expires_at: int | None
    applied_at: int
    event_id: str


@dataclass(slots=True)
class Emitted:
    """Everything produced since the previous `drain`, each list in production order.

    `changelog` holds one record per session changed since the last drain (latest state
    wins, as on the compacted topic): `(key, value)`, value `None` = tombstone.
    """

    audits: list[AuditDecision] = field(default_factory=list)
    changes: list[AppliedChange] = field(default_factory=list)
    changelog: list[tuple[bytes, bytes | None]] = field(default_factory=list)


def crm_event_id(session_id: str, epoch: int, version: int, status: CrmStatus) -> str:
    """Deterministic id of a CRM record: same session, version and status, same id.

    `epoch` (when the engine started tracking the session) keeps ids distinct when a
    session forgotten for longer than `EngineConfig.version_memory_ms` starts again at 1.
    """
    name = f"{session_id}/{epoch}/{version}/{status.value}"
    return str(uuid.uuid5(CRM_EVENT_NAMESPACE, name))
