"""The official Genesys Cloud Python SDK, a client nobody here wrote, against the emulator.

The SDK derives its login URL from the API host by replacing `//api.` with `//login.`
(`ApiClient.get_conf_url`). A loopback URL such as `http://127.0.0.1:PORT` has no `api.`
label, so the SDK asks the same server for `/oauth/token`, which the emulator serves.
"""

from __future__ import annotations

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


def test_sdk_gets_a_token_and_posts_typing(emulator: EmulatorHandle) -> None:
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
    result = conversations.post_conversations_message_communication_typing(
        "conversation-1", "communication-1", body
    )
    assert result is None  # 202 without a body

    assert emulator.count("POST", "/oauth/token", 200) == 1
    assert emulator.count("POST", TYPING_TEMPLATE, 202) == 1
    [event] = emulator.typing_events()
    assert event["conversation_id"] == "conversation-1"
    assert event["communication_id"] == "communication-1"
    assert event["type"] == "On"
    assert event["duration"] == 5000
    assert event["client_id"] == emulator.client_id


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
        conversations.post_conversations_message_communication_typing("c", "m", body)
    assert refused.value.status == 401
    assert emulator.count("POST", TYPING_TEMPLATE, 401) == 1
