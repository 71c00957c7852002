"""Pydantic models of every payload on the wire (DESIGN §3).

Topics carry snake_case JSON encoded with orjson. `schemas/` is generated from these
models (`typing-processor schemas`), and a test fails when the two drift.
"""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Annotated, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
)

from processor.domain import (
    SESSION_ID_PATTERN,
    UUID_PATTERN,
    ChangeReason,
    Decision,
    Role,
    Status,
)

MAX_VALUE_BYTES = 64 * 1024
"""Input values larger than this are dead letters (`oversize`)."""
MIN_TIMEOUT_MS = 500
MAX_TIMEOUT_MS = 60_000
MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the latest `occurred_at` accepted: far below 2**63, so a time
plus any timeout still packs into a signed 64-bit integer."""
MAX_EVENT_ID_CHARS = 128
MAX_TEXT_CHARS = 256
"""Limit of the free-text input fields: participant id, channel, `from_id`, `nickname`."""

MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
MAX_TOPIC_CHARS = 249
"""Kafka's limit on a topic name."""

DLQ_KEY_KEEP_BYTES = 1024
"""A dead letter keeps at most this many bytes of the input key (also its own Kafka key)."""
DLQ_VALUE_KEEP_BYTES = 256 * 1024
"""A dead letter keeps at most this many bytes of the input value."""
MAX_DETAIL_CHARS = 1000
DLQ_HEADERS_KEEP_BYTES = 16 * 1024
"""A dead letter keeps the input record's headers, in order, while their JSON takes at most
this many bytes."""
MAX_DLQ_RECORD_BYTES = 384 * 1024
"""Bound on a dead letter's encoded value plus its Kafka key (headers apart): far below the
1 MiB request limit of a Kafka producer, whatever the size of the input record."""

SessionId = Annotated[StrictStr, Field(pattern=SESSION_ID_PATTERN)]
EpochMs = Annotated[StrictInt, Field(ge=0, le=MAX_EPOCH_MS)]
NonNegativeInt64 = Annotated[StrictInt, Field(ge=0, le=MAX_INT64)]
PartitionNumber = Annotated[StrictInt, Field(ge=0, le=MAX_INT32)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
GenesysId = Annotated[StrictStr, StringConstraints(pattern=UUID_PATTERN, to_lower=True)]
Sha256Hex = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]


def b64_chars(size: int) -> int:
    """Characters of the base64 of `size` bytes."""
    return 4 * -(-size // 3)


class _Payload(BaseModel):
    """Base of all payloads: frozen, snake_case, orjson on the wire."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_bytes(self) -> bytes:
        """Compact JSON bytes, `None` fields kept as `null` for a stable shape."""
        return orjson.dumps(self.model_dump(mode="json"))


class Participant(_Payload):
    """Who is typing."""

    id: Text
    role: Role = Role.CUSTOMER


class AgentTypingTarget(_Payload):
    """Agent or bot typing shown to the customer of a messaging conversation."""

    kind: Literal["agent_typing"]
    conversation_id: GenesysId
    communication_id: GenesysId


class FromIdType(StrEnum):
    """How an Open Messaging integration identifies the customer (`idType`)."""

    OPAQUE = "Opaque"
    EMAIL = "Email"
    PHONE = "Phone"


class OpenMessagingTarget(_Payload):
    """Customer typing from an Open Messaging integration, shown to the agent."""

    kind: Literal["open_messaging"]
    integration_id: GenesysId
    from_id: Text
    from_id_type: FromIdType = FromIdType.OPAQUE
    nickname: Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)] | None = None


Target = Annotated[AgentTypingTarget | OpenMessagingTarget, Field(discriminator="kind")]
"""Where an indicator is shown when it is not the webchat session of the event."""

TARGET_ID_FIELDS = frozenset({"conversation_id", "communication_id", "integration_id"})
"""Target fields that go into a URL path: UUIDs only."""


class TypingEvent(_Payload):
    """Input record on `genesys.typing.events`, keyed by `session_id`."""

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=MAX_EVENT_ID_CHARS)]
    session_id: SessionId
    status: Status
    occurred_at: EpochMs
    timeout_ms: Annotated[StrictInt, Field(ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS)] | None = None
    participant: Participant | None = None
    channel: Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)] | None = None
    target: Target | None = None

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
    version: NonNegativeInt64
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
    latency_ms: Annotated[float, Field(ge=0.0)] = 0.0
    error: StrictStr = ""
    event_id: StrictStr | None = None
    http_status: Annotated[StrictInt, Field(ge=100, le=599)] | None = None
    attempts: Annotated[StrictInt, Field(ge=0, le=MAX_INT32)] = 0
    trace_id: StrictStr | None = None
    partition: PartitionNumber | None = None
    offset: NonNegativeInt64 | None = None


class DlqReason(StrEnum):
    """Why a record went to the dead-letter topic."""

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
    OCCURRED_AT_OUT_OF_RANGE = "occurred_at_out_of_range"
    INVALID_TARGET = "invalid_target"
    INVALID_TARGET_ID = "invalid_target_id"
    PROCESSING_ERROR = "processing_error"
    UNDECODABLE_RECORD = "undecodable_record"
    """The Kafka client could not read the record: a header key not in UTF-8, or a batch
    that fails its CRC (bytes kept as the broker holds them), or records that cannot be
    parsed at all (no bytes; `topic`/`partition`/`offset` say where they are)."""
    CRM_REFUSED = "crm_refused"
    """The CRM endpoint refused a CRM-sync record for good (400, 413 or 422); `detail`
    says which. Replay it from here once the record or the endpoint is put right."""


class TimestampType(StrEnum):
    """Who set a Kafka record's timestamp."""

    CREATE_TIME = "create_time"
    """The producer (Kafka's CreateTime)."""
    LOG_APPEND_TIME = "log_append_time"
    """The broker, as it appended the record (Kafka's LogAppendTime)."""


class DeadLetterHeader(_Payload):
    """One header of a dead letter's input record: its key as the client reads it, its
    value's bytes in base64 (None: a header without a value)."""

    key: Annotated[StrictStr, Field(max_length=DLQ_HEADERS_KEEP_BYTES)]
    value_b64: Annotated[StrictStr, Field(max_length=DLQ_HEADERS_KEEP_BYTES)] | None


class DeadLetter(_Payload):
    """A rejected input record on `genesys.typing.dlq`; keeps the original bytes.

    A key over `DLQ_KEY_KEEP_BYTES` or a value over `DLQ_VALUE_KEEP_BYTES` is kept as a
    prefix, with `truncated` true; `key_size`/`value_size` and the SHA-256 digests always
    describe the original, and `topic`/`partition`/`offset` locate it. `timestamp` is when
    the letter was written; `record_timestamp` and `record_timestamp_type` are the input
    record's own (None: it has none, or it could not be read). Its headers are kept in
    order while they fit `DLQ_HEADERS_KEEP_BYTES`; the rest are left out, with
    `headers_truncated` true and `header_count` the number the record has.
    """

    reason: DlqReason
    detail: Annotated[StrictStr, Field(max_length=MAX_DETAIL_CHARS)]
    topic: Annotated[StrictStr, Field(max_length=MAX_TOPIC_CHARS)]
    partition: PartitionNumber
    offset: NonNegativeInt64
    key_b64: Annotated[StrictStr, Field(max_length=b64_chars(DLQ_KEY_KEEP_BYTES))] | None
    value_b64: Annotated[StrictStr, Field(max_length=b64_chars(DLQ_VALUE_KEEP_BYTES))] | None
    timestamp: StrictStr
    key_size: NonNegativeInt64 | None = None
    key_sha256: Sha256Hex | None = None
    value_size: NonNegativeInt64 | None = None
    value_sha256: Sha256Hex | None = None
    truncated: StrictBool = False
    record_timestamp: Annotated[StrictInt, Field(ge=-MAX_INT64 - 1, le=MAX_INT64)] | None = None
    record_timestamp_type: TimestampType | None = None
    headers: tuple[DeadLetterHeader, ...] = ()
    header_count: Annotated[StrictInt, Field(ge=0, le=MAX_INT32)] = 0
    headers_truncated: StrictBool = False

    def record_key(self) -> bytes | None:
        """The Kafka key of this dead letter: the input key as kept (whole, or its prefix)."""
        return None if self.key_b64 is None else base64.b64decode(self.key_b64)


PAYLOAD_MODELS: dict[str, type[_Payload]] = {
    "typing-event": TypingEvent,
    "crm-sync-record": CrmSyncRecord,
    "audit-record": AuditRecord,
    "dead-letter": DeadLetter,
}
