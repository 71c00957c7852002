"""The official Genesys Cloud Python SDK, a client nobody here wrote, against the emulator.

The SDK derives its login URL from the API host by replacing `//api.` with `//login.`
(`ApiClient.get_conf_url`). A loopback URL such as `http://127.0.0.1:PORT` has no `api.`
label, so the SDK asks the same server for `/oauth/token`, which the emulator serves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from processor.emulator.testing import EmulatorHandle

sdk: Any = pytest.importorskip("PureCloudPlatformClientV2")

TYPING_TEMPLATE = (
    "/api/v2/conversations/messages/{conversationId}/communications/{communicationId}/typing"
)


def _api_client(emulator: EmulatorHandle) -> Any:
    api_client = sdk.ApiClient(host=emulator.base_url)
    assert api_client.get_conf_url("login", emulator.base_url) == emulator.base_url
    return api_client


CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
COMM = "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
INTEGRATION = "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21"


def test_sdk_gets_a_token_and_posts_agent_typing(emulator: EmulatorHandle) -> None:
    emulator.create_conversation(CONV, [COMM])
    api_client = _api_client(emulator).get_client_credentials_token(
        emulator.client_id, emulator.client_secret
    )
    assert api_client.access_token

    conversations = sdk.ConversationsApi(api_client)
    typing = sdk.ConversationEventTyping()
    typing.type = "On"
    typing.duration = 5000
    body = sdk.MessageTypingEventRequest()
    body.typing = typing
    result = conversations.post_conversations_message_communication_typing(CONV, COMM, body)
    assert result is None  # 202 without a body

    assert emulator.count("POST", "/oauth/token", 200) == 1
    assert emulator.count("POST", TYPING_TEMPLATE, 202) == 1
    [event] = emulator.typing(conversation_id=CONV)
    assert event["communication_id"] == COMM
    assert event["type"] == "On"
    assert (event["duration"], event["shown_until"]) == (5000, event["at_ms"] + 5000)
    assert event["client_id"] == emulator.client_id


def test_sdk_posts_an_open_messaging_typing_event(emulator: EmulatorHandle) -> None:
    emulator.create_integration(INTEGRATION)
    api_client = _api_client(emulator).get_client_credentials_token(
        emulator.client_id, emulator.client_secret
    )
    conversations = sdk.ConversationsApi(api_client)
    sender = sdk.OpenMessagingFromRecipient()
    sender.id = "customer-42@example.com"
    sender.id_type = "Email"
    sender.nickname = "Ann"
    channel = sdk.OpenInboundMessagingChannel()
    channel.pcFrom = sender
    channel.time = datetime.now(UTC)
    typing = sdk.ConversationEventTyping()
    typing.type = "On"
    typing.duration = 4000
    event = sdk.OpenMessageEvent()
    event.event_type = "Typing"
    event.typing = typing
    body = sdk.OpenInboundNormalizedEvent()
    body.channel = channel
    body.events = [event]
    message = conversations.post_conversations_message_inbound_open_event(INTEGRATION, body)

    assert message.type == "Event"
    assert message.channel.pcFrom.id == "customer-42@example.com"
    [call] = emulator.typing(integration_id=INTEGRATION, from_id="customer-42@example.com")
    assert (call["from_id_type"], call["nickname"], call["duration"]) == ("Email", "Ann", 4000)


def test_sdk_with_a_wrong_secret_gets_no_token(emulator: EmulatorHandle) -> None:
    api_client = _api_client(emulator)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK raises whatever it likes
        api_client.get_client_credentials_token(emulator.client_id, "not-the-secret")
    assert not api_client.access_token
    assert emulator.count("POST", "/oauth/token", 401) == 1


def test_sdk_call_with_an_unknown_token_is_refused(emulator: EmulatorHandle) -> None:
    api_client = _api_client(emulator)
    api_client.access_token = "forged-token"
    conversations = sdk.ConversationsApi(api_client)
    typing = sdk.ConversationEventTyping()
    typing.type = "On"
    body = sdk.MessageTypingEventRequest()
    body.typing = typing
    with pytest.raises(sdk.rest.ApiException) as refused:
        conversations.post_conversations_message_communication_typing(CONV, COMM, body)
    assert refused.value.status == 401
    assert emulator.count("POST", TYPING_TEMPLATE, 401) == 1
