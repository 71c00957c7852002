"""Messaging typing as Genesys Cloud serves it (DESIGN §2b): the request bodies, the known
conversations and Open Messaging integrations, and every typing call accepted.

Agent typing: `POST /api/v2/conversations/messages/{conversationId}/communications/
{communicationId}/typing` with `{"typing": {"type": "On", "duration": ms}}` → 202. Open
Messaging: `POST /api/v2/conversations/messages/{integrationId}/inbound/open/event` with an
`OpenInboundNormalizedEvent` whose events are of type `Typing` → 202 and the normalized
message. An indicator is shown from the call until `at_ms + duration` ("shown until").
A conversation that has ended answers typing with 409, as Genesys answers a message into
a read-only (disconnected) conversation.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from processor.domain import UUID_PATTERN

_UUID_RE = re.compile(UUID_PATTERN)
GenesysId = Annotated[StrictStr, Field(pattern=UUID_PATTERN)]
DEFAULT_DURATION_MS = 5000
"""How long the emulator shows a typing event that names no duration, and reports as its
`duration`. An assumption: the API documents `typing.duration` (milliseconds) as optional
with no default (`ConversationEventTyping` in the official SDK); the processor always
sends one."""


def is_genesys_id(value: str) -> bool:
    """True for a UUID, the only id form Genesys puts in these paths."""
    return _UUID_RE.fullmatch(value) is not None


class TypingSpec(BaseModel):
    """The `typing` object of a typing event."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["On"]
    duration: Annotated[StrictInt, Field(ge=0, le=3_600_000)] | None = None


class TypingBody(BaseModel):
    """Body of `POST .../communications/{communicationId}/typing` (`MessageTypingEventRequest`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    typing: TypingSpec


class OpenFrom(BaseModel):
    """`channel.from` of an Open Messaging event: who the event is from."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    id_type: Literal["Opaque", "Email", "Phone"] = Field(alias="idType")
    nickname: Annotated[StrictStr, Field(max_length=256)] | None = None


class OpenChannel(BaseModel):
    """`channel` of an Open Messaging inbound event."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    sender: OpenFrom = Field(alias="from")
    time: datetime


class OpenEvent(BaseModel):
    """One event of an inbound Open Messaging event message (only `Typing` is served)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    event_type: Literal["Typing"] = Field(alias="eventType")
    typing: TypingSpec


class OpenEventBody(BaseModel):
    """Body of `POST .../{integrationId}/inbound/open/event` (`OpenInboundNormalizedEvent`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    channel: OpenChannel
    events: Annotated[list[OpenEvent], Field(min_length=1, max_length=10)]


class ConversationBody(BaseModel):
    """Body of `POST /emulator/conversations`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    conversation_id: Annotated[StrictStr, Field(pattern=UUID_PATTERN)]
    communication_ids: Annotated[
        list[Annotated[StrictStr, Field(pattern=UUID_PATTERN)]], Field(min_length=1)
    ]


class ConversationPatchBody(BaseModel):
    """Body of `PATCH /emulator/conversations/{conversationId}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: Literal["connected", "disconnected"]


class IntegrationBody(BaseModel):
    """Body of `POST /emulator/integrations`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    integration_id: GenesysId


class MessagingStore:
    """Conversations and integrations the emulator knows, and the typing calls it accepted."""

    def __init__(self, kept: int) -> None:
        self._conversations: dict[str, set[str]] = {}
        self._ended: set[str] = set()
        self._integrations: set[str] = set()
        self.calls: deque[dict[str, Any]] = deque(maxlen=kept)
        # The same calls by target, oldest first, so that a query reads its target's calls
        # only (the demo asks for every target's, again and again, while calls go on).
        self._by_target: dict[tuple[str | None, ...], deque[dict[str, Any]]] = {}

    def clear(self) -> None:
        """Forget every conversation, integration and call."""
        self._conversations.clear()
        self._ended.clear()
        self._integrations.clear()
        self.calls.clear()
        self._by_target.clear()

    @staticmethod
    def _targets(call: dict[str, Any]) -> list[tuple[str | None, ...]]:
        """The index keys of a call: its conversation, or its integration and its sender."""
        if call.get("conversation_id") is not None:
            return [("conversation", call["conversation_id"])]
        if call.get("integration_id") is not None:
            integration = call["integration_id"]
            return [("integration", integration), ("from", integration, call.get("from_id"))]
        return []

    def add_conversation(self, conversation_id: str, communication_ids: list[str]) -> None:
        """Know a conversation and its communications (again: more communications)."""
        known = self._conversations.setdefault(conversation_id.lower(), set())
        known.update(c.lower() for c in communication_ids)

    def set_ended(self, conversation_id: str, ended: bool) -> bool:
        """End a known conversation (typing into it is refused) or connect it again;
        False when the conversation is unknown."""
        key = conversation_id.lower()
        if key not in self._conversations:
            return False
        if ended:
            self._ended.add(key)
        else:
            self._ended.discard(key)
        return True

    def has_ended(self, conversation_id: str) -> bool:
        """True when the conversation has ended."""
        return conversation_id.lower() in self._ended

    def add_integration(self, integration_id: str) -> None:
        """Know an Open Messaging integration."""
        self._integrations.add(integration_id.lower())

    def has_communication(self, conversation_id: str, communication_id: str) -> bool:
        """True when the communication belongs to a known conversation."""
        return communication_id.lower() in self._conversations.get(conversation_id.lower(), ())

    def has_integration(self, integration_id: str) -> bool:
        """True for a known integration."""
        return integration_id.lower() in self._integrations

    def record(self, at_ms: int, duration: int | None, **fields: Any) -> dict[str, Any]:
        """Keep one accepted typing call; its indicator is shown until `at_ms + duration`."""
        shown_for = DEFAULT_DURATION_MS if duration is None else duration
        call = {"at_ms": at_ms, "duration": shown_for, "shown_until": at_ms + shown_for, **fields}
        if self.calls.maxlen == 0:
            return call
        if len(self.calls) == self.calls.maxlen:
            oldest = self.calls[0]  # about to be dropped: the oldest of its targets' too
            for key in self._targets(oldest):
                kept = self._by_target[key]
                kept.popleft()
                if not kept:
                    del self._by_target[key]
        self.calls.append(call)
        for key in self._targets(call):
            self._by_target.setdefault(key, deque()).append(call)
        return call

    def query(
        self,
        conversation_id: str | None = None,
        integration_id: str | None = None,
        from_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Accepted calls, oldest first, of one conversation or one integration (and sender)."""
        if conversation_id is not None:
            candidates: Iterable[dict[str, Any]] = self._by_target.get(
                ("conversation", conversation_id), ()
            )
        elif integration_id is not None and from_id is not None:
            candidates = self._by_target.get(("from", integration_id, from_id), ())
        elif integration_id is not None:
            candidates = self._by_target.get(("integration", integration_id), ())
        else:
            candidates = self.calls
        out = []
        for call in candidates:
            if conversation_id is not None and call.get("conversation_id") != conversation_id:
                continue
            if integration_id is not None and call.get("integration_id") != integration_id:
                continue
            if from_id is not None and call.get("from_id") != from_id:
                continue
            out.append(call)
        return out


def normalized_message(integration_id: str, body: OpenEventBody) -> dict[str, Any]:
    """The `OpenEventNormalizedMessage` the service answers an inbound event with."""
    sender = body.channel.sender
    return {
        "id": str(uuid.uuid4()),
        "channel": {
            "id": integration_id,
            "platform": "Open",
            "type": "Private",
            "from": {
                "id": sender.id,
                "idType": sender.id_type,
                **({} if sender.nickname is None else {"nickname": sender.nickname}),
            },
            "time": body.channel.time.isoformat().replace("+00:00", "Z"),
        },
        "type": "Event",
        "events": [
            {
                "eventType": "Typing",
                "typing": {
                    "type": event.typing.type,
                    **(
                        {} if event.typing.duration is None else {"duration": event.typing.duration}
                    ),
                },
            }
            for event in body.events
        ],
    }
