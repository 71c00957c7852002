"""Pydantic models of every payload on the wire (DESIGN §3).

Topics carry snake_case JSON encoded with orjson. `schemas/` is generated from these
models (`typing-processor schemas`), and a test fails when the two drift.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from processor.domain import SESSION_ID_PATTERN, ChangeReason, Decision, Role, Status

MAX_VALUE_BYTES = 64 * 1024
MIN_TIMEOUT_MS = 500
MAX_TIMEOUT_MS = 60_000

SessionId = Annotated[StrictStr, Field(pattern=SESSION_ID_PATTERN)]
EpochMs = Annotated[StrictInt, Field(ge=0)]


class _Payload(BaseModel):
    """Base of all payloads: frozen, snake_case, orjson on the wire."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_bytes(self) -> bytes:
        """Compact JSON bytes, `None` fields kept as `null` for a stable shape."""
        return orjson.dumps(self.model_dump(mode="json"))


class Participant(_Payload):
    """Who is typing."""

    id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    role: Role = Role.CUSTOMER


class TypingEvent(_Payload):
    """Input record on `genesys.typing.events`, keyed by `session_id`."""

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    session_id: SessionId
    status: Status
    occurred_at: EpochMs
    timeout_ms: Annotated[StrictInt, Field(ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS)] | None = None
    participant: Participant | None = None
    channel: Annotated[StrictStr, Field(max_length=256)] | None = None

    @property
    def role(self) -> Role:
        """The participant's role; customer when the producer did not say."""
        return self.participant.role if self.participant is not None else Role.CUSTOMER


class CrmStatus(StrEnum):
    """Status reported to the CRM: the indicator's status, or `cleared`."""

    TYPING = "typing"
    PAUSED = "paused"
    CLEARED = "cleared"


class CrmSyncRecord(_Payload):
    """One record per change applied in Genesys, on `genesys.typing.crm-sync`.

    The tutorial's webhook body field for field, plus `event_id`, `version`, `reason`
    and `expires_at`.
    """

    event: Literal["typing_indicator_update"] = "typing_indicator_update"
    timestamp: EpochMs
    session_id: SessionId
    status: CrmStatus
    source: StrictStr = "genesys_typing_processor"
    event_id: StrictStr
    version: Annotated[StrictInt, Field(ge=0)]
    reason: ChangeReason
    expires_at: EpochMs | None = None


class AuditRecord(_Payload):
    """One record per decision, on `genesys.typing.audit`.

    The tutorial's audit line field for field, plus `event_id`, `http_status`,
    `attempts`, `trace_id`, `partition` and `offset`.
    """

    timestamp: StrictStr
    session_id: StrictStr
    indicator_status: StrictStr
    result: Decision
    latency_ms: float = 0.0
    error: StrictStr = ""
    event_id: StrictStr | None = None
    http_status: StrictInt | None = None
    attempts: Annotated[StrictInt, Field(ge=0)] = 0
    trace_id: StrictStr | None = None
    partition: StrictInt | None = None
    offset: StrictInt | None = None


class DlqReason(StrEnum):
    """Why an input record went to the dead-letter topic."""

    OVERSIZE = "oversize"
    MISSING_VALUE = "missing_value"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    INVALID_SESSION_ID = "invalid_session_id"
    INVALID_STATUS = "invalid_status"
    TIMEOUT_OUT_OF_RANGE = "timeout_out_of_range"
    INVALID_FIELD = "invalid_field"
    KEY_MISMATCH = "key_mismatch"


class DeadLetter(_Payload):
    """A rejected input record on `genesys.typing.dlq`; keeps the original bytes."""

    reason: DlqReason
    detail: StrictStr
    topic: StrictStr
    partition: StrictInt
    offset: StrictInt
    key_b64: StrictStr | None
    value_b64: StrictStr | None
    timestamp: StrictStr


PAYLOAD_MODELS: dict[str, type[_Payload]] = {
    "typing-event": TypingEvent,
    "crm-sync-record": CrmSyncRecord,
    "audit-record": AuditRecord,
    "dead-letter": DeadLetter,
}
