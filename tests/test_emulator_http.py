"""The emulator over real HTTP (a `python -m processor emulator` child), status by status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pipeline import eventually

from processor.emulator.app import CLIENT_CLOSED, SESSION_PATH
from processor.emulator.testing import EmulatorHandle

SESSION = "/api/v2/webchat/sessions/{}"
TYPING = "/api/v2/conversations/messages/{}/communications/{}/typing"
INDICATOR = {"status": "typing", "originatedAt": 1_000, "expiresAt": 6_000, "version": 1}


@pytest.fixture
def http(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, timeout=10.0) as client:
        yield client


def _token(http: httpx.Client, emulator: EmulatorHandle, scope: str | None = None) -> str:
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    response = http.post(
        "/oauth/token", data=data, auth=(emulator.client_id, emulator.client_secret)
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def _patch(
    http: httpx.Client, token: str, session_id: str, body: Any, etag: str | None
) -> httpx.Response:
    headers = _bearer(token) if etag is None else _bearer(token, **{"If-Match": etag})
    return http.patch(SESSION.format(session_id), json=body, headers=headers)


def _etag(http: httpx.Client, token: str, session_id: str) -> str:
    response = http.get(SESSION.format(session_id), headers=_bearer(token))
    assert response.status_code == 200, response.text
    etag: str = response.json()["etag"]
    return etag


def _assert_genesys_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"]
    assert body["message"]
    assert body["contextId"] == response.headers["inin-correlation-id"]
    return body


# --- OAuth ---


def test_token_by_basic_auth_and_by_form_fields(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    basic = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(emulator.client_id, emulator.client_secret),
    )
    assert basic.status_code == 200
    body = basic.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86_400
    assert set(body["scope"].split()) >= {"webchat:read", "webchat:write:session"}
    assert "inin-correlation-id" in basic.headers

    form = http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
            "scope": "webchat:read webchat:write webchat:write:session",
        },
    )
    assert form.status_code == 200
    assert form.json()["scope"] == "webchat:read webchat:write webchat:write:session"
    assert form.json()["access_token"] != body["access_token"]


@pytest.mark.parametrize(
    ("auth", "data"),
    [
        (("test-client", "wrong-secret"), {}),
        (("someone-else", "test-secret"), {}),
        (None, {}),
        (None, {"client_id": "test-client", "client_secret": "nope"}),
    ],
)
def test_wrong_credentials_are_401_without_leaking_them(
    http: httpx.Client, auth: tuple[str, str] | None, data: dict[str, str]
) -> None:
    response = http.post(
        "/oauth/token", data={"grant_type": "client_credentials", **data}, auth=auth
    )
    _assert_genesys_error(response, 401)
    assert "secret" not in response.text.lower()
    assert "nope" not in response.text


def test_bad_grant_type_and_unknown_scope_are_400(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    credentials = (emulator.client_id, emulator.client_secret)
    wrong_grant = http.post("/oauth/token", data={"grant_type": "password"}, auth=credentials)
    _assert_genesys_error(wrong_grant, 400)
    wrong_scope = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "webchat:read users:admin"},
        auth=credentials,
    )
    assert _assert_genesys_error(wrong_scope, 400)["code"] == "invalid_scope"


def test_unknown_and_missing_bearer_are_401(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    _assert_genesys_error(http.get(SESSION.format("s1")), 401)
    _assert_genesys_error(http.get(SESSION.format("s1"), headers=_bearer("made-up")), 401)


def test_expired_token_is_401(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    emulator.set_faults(token_lifetime_s=1.0)
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(emulator.client_id, emulator.client_secret),
    )
    assert response.json()["expires_in"] == 1
    token = response.json()["access_token"]
    assert http.get(SESSION.format("s1"), headers=_bearer(token)).status_code == 200
    # Wait for the condition (the token's expiry), with a deadline.
    deadline = time.monotonic() + 10.0
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = http.get(SESSION.format("s1"), headers=_bearer(token)).status_code
    assert status == 401


def test_missing_scope_is_403(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    read_only = _token(http, emulator, scope="webchat:read")
    etag = _etag(http, read_only, "s1")
    denied = _patch(http, read_only, "s1", {"customAttributes": {}}, etag)
    assert "webchat:write" in _assert_genesys_error(denied, 403)["message"]
    write_only = _token(http, emulator, scope="webchat:write:session")
    _assert_genesys_error(http.get(SESSION.format("s1"), headers=_bearer(write_only)), 403)
    assert _patch(http, write_only, "s1", {"customAttributes": {}}, etag).status_code == 200
    typing = http.post(
        TYPING.format("c1", "m1"), json={"typing": {"type": "On"}}, headers=_bearer(write_only)
    )
    _assert_genesys_error(typing, 403)


# --- sessions ---


def test_get_returns_etag_in_body_and_header(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    response = http.get(SESSION.format("s1"), headers=_bearer(token))
    assert response.status_code == 200
    body = response.json()
    assert body == {"id": "s1", "state": "connected", "etag": body["etag"], "customAttributes": {}}
    assert response.headers["ETag"] == body["etag"]
    assert response.headers["inin-correlation-id"]
    _assert_genesys_error(http.get(SESSION.format("unknown"), headers=_bearer(token)), 404)


def test_correlation_id_is_echoed(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    headers = _bearer(token, **{"inin-correlation-id": "trace-123"})
    assert http.get(SESSION.format("s1"), headers=headers).headers["inin-correlation-id"] == (
        "trace-123"
    )


def test_patch_merges_clears_and_changes_etag(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    emulator.write_as_other("s1", {"crmId": "A-1"})
    token = _token(http, emulator)
    etag = _etag(http, token, "s1")

    set_response = _patch(
        http, token, "s1", {"customAttributes": {"typingIndicator": INDICATOR}}, etag
    )
    assert set_response.status_code == 200, set_response.text
    body = set_response.json()
    assert body["customAttributes"] == {"crmId": "A-1", "typingIndicator": INDICATOR}
    assert body["etag"] != etag
    assert set_response.headers["ETag"] == body["etag"]

    cleared = _patch(
        http, token, "s1", {"customAttributes": {"typingIndicator": None}}, body["etag"]
    )
    assert cleared.status_code == 200
    assert cleared.json()["customAttributes"] == {"crmId": "A-1"}
    assert cleared.json()["etag"] not in (etag, body["etag"])
    assert _etag(http, token, "s1") == cleared.json()["etag"]


def test_patch_preconditions(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    body = {"customAttributes": {"typingIndicator": INDICATOR}}
    _assert_genesys_error(_patch(http, token, "unknown", body, "x"), 404)
    _assert_genesys_error(_patch(http, token, "s1", body, None), 428)
    _assert_genesys_error(_patch(http, token, "s1", body, "stale-etag"), 412)
    etag = _etag(http, token, "s1")
    assert _patch(http, token, "s1", body, f'"{etag}"').status_code == 200  # quoted is fine
    _assert_genesys_error(_patch(http, token, "s1", body, etag), 412)  # now stale


@pytest.mark.parametrize("state", ["queued", "closed"])
def test_patch_on_session_not_connected_is_409(
    emulator: EmulatorHandle, http: httpx.Client, state: str
) -> None:
    emulator.create_session("s1", state=state)
    token = _token(http, emulator)
    etag = _etag(http, token, "s1")
    response = _patch(http, token, "s1", {"customAttributes": {"typingIndicator": None}}, etag)
    assert state in _assert_genesys_error(response, 409)["message"]


def test_state_change_bumps_etag(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1", state="queued")
    token = _token(http, emulator)
    etag = _etag(http, token, "s1")
    emulator.set_state("s1", "connected")
    assert _etag(http, token, "s1") != etag
    body = {"customAttributes": {"typingIndicator": INDICATOR}}
    _assert_genesys_error(_patch(http, token, "s1", body, etag), 412)
    assert _patch(http, token, "s1", body, _etag(http, token, "s1")).status_code == 200


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"customAttributes": "x"}',
        b'{"customAttributes": {"typingIndicator": {"status": "typing"}}}',
        b'{"customAttributes": {"typingIndicator": {"status": "dancing", "originatedAt": 1,'
        b' "expiresAt": 2, "version": 1}}}',
        b'{"customAttributes": {"typingIndicator": {"status": "typing", "originatedAt": "1",'
        b' "expiresAt": 2, "version": 1}}}',
        b'{"customAttributes": {}, "extra": 1}',
    ],
)
def test_bad_patch_body_is_400(
    emulator: EmulatorHandle, http: httpx.Client, content: bytes
) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    etag = _etag(http, token, "s1")
    response = http.patch(
        SESSION.format("s1"),
        content=content,
        headers=_bearer(token, **{"If-Match": etag, "Content-Type": "application/json"}),
    )
    _assert_genesys_error(response, 400)
    assert _etag(http, token, "s1") == etag  # nothing was written


# --- rate limit and faults ---


def test_rate_limit_429_with_headers(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    emulator.set_faults(rate_limit_per_minute=60, rate_limit_burst=3)
    token = _token(http, emulator)
    responses = [http.get(SESSION.format("s1"), headers=_bearer(token)) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["inin-ratelimit-count"] for r in responses] == ["1", "2", "3", "3"]
    assert all(r.headers["inin-ratelimit-allowed"] == "60" for r in responses)
    assert all(1 <= int(r.headers["inin-ratelimit-reset"]) <= 60 for r in responses)
    limited = responses[-1]
    _assert_genesys_error(limited, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    # switching it off admits everything again, without rate headers
    emulator.set_faults(rate_limit_per_minute=0)
    response = http.get(SESSION.format("s1"), headers=_bearer(token))
    assert response.status_code == 200
    assert "inin-ratelimit-count" not in response.headers


def test_error_rate_gives_5xx_and_writes_nothing(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    etag = _etag(http, token, "s1")
    emulator.set_faults(error_rate=1.0)
    response = _patch(http, token, "s1", {"customAttributes": {"typingIndicator": INDICATOR}}, etag)
    assert _assert_genesys_error(response, response.status_code)["status"] >= 500
    assert emulator.session("s1")["etag"] == etag
    assert emulator.history("s1") == []


def test_forced_conflict_bumps_etag(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    etag = _etag(http, token, "s1")
    emulator.set_faults(conflict_rate=1.0)
    body = {"customAttributes": {"typingIndicator": INDICATOR}}
    _assert_genesys_error(_patch(http, token, "s1", body, etag), 412)
    new_etag = _etag(http, token, "s1")
    assert new_etag != etag
    emulator.set_faults(conflict_rate=0.0)
    assert _patch(http, token, "s1", body, new_etag).status_code == 200


def test_faults_are_reproducible_with_a_seed(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)

    def statuses() -> list[int]:
        emulator.set_faults(error_rate=0.5, seed=42)
        return [
            http.get(SESSION.format("s1"), headers=_bearer(token)).status_code for _ in range(30)
        ]

    first = statuses()
    assert first == statuses()
    assert 200 in first
    assert any(status >= 500 for status in first)


def test_latency_is_added(emulator: EmulatorHandle, http: httpx.Client) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    emulator.set_faults(latency_ms=150, jitter_ms=50)
    started = time.perf_counter()
    assert http.get(SESSION.format("s1"), headers=_bearer(token)).status_code == 200
    assert time.perf_counter() - started >= 0.150


def test_bad_faults_are_400(emulator: EmulatorHandle, http: httpx.Client) -> None:
    _assert_genesys_error(http.put("/emulator/faults", json={"error_rate": 2}), 400)
    _assert_genesys_error(http.put("/emulator/faults", json={"no_such_fault": 1}), 400)
    # a token under a second would be answered `expires_in: 0`, which no client can use
    lifetime = http.get("/emulator/faults").json()["token_lifetime_s"]
    _assert_genesys_error(http.put("/emulator/faults", json={"token_lifetime_s": 0.5}), 400)
    assert http.get("/emulator/faults").json()["token_lifetime_s"] == lifetime


# --- typing endpoint ---


CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
COMM = "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
INTEGRATION = "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21"
OPEN_EVENT = "/api/v2/conversations/messages/{}/inbound/open/event"


def open_event(from_id: str = "cust-1", duration: int | None = 4000) -> dict[str, Any]:
    typing: dict[str, Any] = {"type": "On"}
    if duration is not None:
        typing["duration"] = duration
    return {
        "channel": {
            "from": {"id": from_id, "idType": "Email", "nickname": "Ann"},
            "time": "2026-11-25T10:00:00.000Z",
        },
        "events": [{"eventType": "Typing", "typing": typing}],
    }


def test_agent_typing_202_recorded_with_shown_until(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.create_conversation(CONV, [COMM])
    token = _token(http, emulator)
    accepted = http.post(
        TYPING.format(CONV, COMM),
        json={"typing": {"type": "On", "duration": 5000}},
        headers=_bearer(token),
    )
    assert accepted.status_code == 202, accepted.text
    [call] = emulator.typing(conversation_id=CONV)
    assert (call["communication_id"], call["duration"]) == (COMM, 5000)
    assert call["shown_until"] == call["at_ms"] + 5000
    template = (
        "/api/v2/conversations/messages/{conversationId}/communications/{communicationId}/typing"
    )
    assert emulator.count("POST", template, 202) == 1


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (TYPING.format(CONV, COMM), {"typing": {"type": "Off"}}, 400),  # there is no Off
        (TYPING.format(CONV, COMM), {"typing": {"type": "On", "duration": "5s"}}, 400),
        (TYPING.format("conv-1", COMM), {"typing": {"type": "On"}}, 400),  # not a UUID
        (TYPING.format(CONV, INTEGRATION), {"typing": {"type": "On"}}, 404),  # unknown
        (TYPING.format(INTEGRATION, COMM), {"typing": {"type": "On"}}, 404),
        (OPEN_EVENT.format("integration-1"), open_event(), 400),
        (OPEN_EVENT.format(CONV), open_event(), 404),
        (OPEN_EVENT.format(INTEGRATION), {"channel": {}, "events": []}, 400),
        (
            OPEN_EVENT.format(INTEGRATION),
            {**open_event(), "events": [{"eventType": "Receipt"}]},
            400,
        ),
    ],
)
def test_messaging_typing_refusals(
    emulator: EmulatorHandle, http: httpx.Client, path: str, body: dict[str, Any], status: int
) -> None:
    emulator.create_conversation(CONV, [COMM])
    emulator.create_integration(INTEGRATION)
    token = _token(http, emulator)
    _assert_genesys_error(http.post(path, json=body, headers=_bearer(token)), status)
    assert emulator.typing_events() == []


def test_typing_into_an_ended_conversation_is_409_until_it_is_connected_again(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.create_conversation(CONV, [COMM])
    token = _token(http, emulator)
    ended = http.patch(f"/emulator/conversations/{CONV}", json={"state": "disconnected"})
    assert ended.status_code == 200, ended.text
    typing = {"typing": {"type": "On", "duration": 3000}}
    _assert_genesys_error(
        http.post(TYPING.format(CONV, COMM), json=typing, headers=_bearer(token)), 409
    )
    assert emulator.typing(conversation_id=CONV) == []
    again = http.patch(f"/emulator/conversations/{CONV}", json={"state": "connected"})
    assert again.status_code == 200, again.text
    accepted = http.post(TYPING.format(CONV, COMM), json=typing, headers=_bearer(token))
    assert accepted.status_code == 202, accepted.text
    unknown = http.patch(f"/emulator/conversations/{INTEGRATION}", json={"state": "disconnected"})
    _assert_genesys_error(unknown, 404)
    _assert_genesys_error(http.patch(f"/emulator/conversations/{CONV}", json={"state": "x"}), 400)


def test_open_messaging_event_202_with_the_normalized_message(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.create_integration(INTEGRATION)
    token = _token(http, emulator, scope="messaging")
    accepted = http.post(OPEN_EVENT.format(INTEGRATION), json=open_event(), headers=_bearer(token))
    assert accepted.status_code == 202, accepted.text
    message = accepted.json()
    assert message["channel"]["from"] == {"id": "cust-1", "idType": "Email", "nickname": "Ann"}
    assert message["events"] == [
        {"eventType": "Typing", "typing": {"type": "On", "duration": 4000}}
    ]
    [call] = emulator.typing(integration_id=INTEGRATION, from_id="cust-1")
    assert (call["from_id_type"], call["duration"]) == ("Email", 4000)
    assert emulator.typing(integration_id=INTEGRATION, from_id="someone-else") == []
    # without the `messaging` scope, or with only it for agent typing: 403
    webchat_only = _token(http, emulator, scope="webchat:write")
    refused = http.post(
        OPEN_EVENT.format(INTEGRATION), json=open_event(), headers=_bearer(webchat_only)
    )
    _assert_genesys_error(refused, 403)
    emulator.create_conversation(CONV, [COMM])
    _assert_genesys_error(
        http.post(
            TYPING.format(CONV, COMM), json={"typing": {"type": "On"}}, headers=_bearer(token)
        ),
        403,
    )


def test_messaging_typing_is_rate_limited_like_the_rest(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.create_conversation(CONV, [COMM])
    emulator.set_faults(rate_limit_per_minute=60, rate_limit_burst=1)
    token = _token(http, emulator)  # the token call is free
    first = http.post(
        TYPING.format(CONV, COMM), json={"typing": {"type": "On"}}, headers=_bearer(token)
    )
    assert first.status_code == 202
    assert first.headers["inin-ratelimit-allowed"] == "60"
    second = http.post(
        TYPING.format(CONV, COMM), json={"typing": {"type": "On"}}, headers=_bearer(token)
    )
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) >= 1


# --- admin API ---


def test_admin_create_rules(emulator: EmulatorHandle, http: httpx.Client) -> None:
    created = http.post("/emulator/sessions", json={"session_id": "s1", "state": "queued"})
    assert created.status_code == 201
    assert created.json()["state"] == "queued"
    assert http.post("/emulator/sessions", json={"session_id": "s1"}).status_code == 409
    assert http.post("/emulator/sessions", json={"session_id": "../etc"}).status_code == 400
    assert (
        http.post("/emulator/sessions", json={"session_id": "s2", "state": "x"}).status_code == 400
    )
    assert http.patch("/emulator/sessions/nope", json={"state": "closed"}).status_code == 404
    assert http.get("/emulator/sessions/nope/history").status_code == 404


def test_history_is_ground_truth_with_server_times(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    before_ms = time.time_ns() // 1_000_000
    first = _patch(
        http,
        token,
        "s1",
        {"customAttributes": {"typingIndicator": INDICATOR}},
        _etag(http, token, "s1"),
    )
    same = _patch(
        http,
        token,
        "s1",
        {"customAttributes": {"typingIndicator": INDICATOR}},
        first.json()["etag"],
    )
    cleared = _patch(
        http, token, "s1", {"customAttributes": {"typingIndicator": None}}, same.json()["etag"]
    )
    after_ms = time.time_ns() // 1_000_000
    history = emulator.history("s1")
    # an identical write is not a change of the indicator
    assert [h["typing_indicator"] for h in history] == [INDICATOR, None]
    assert [h["etag"] for h in history] == [first.json()["etag"], cleared.json()["etag"]]
    assert before_ms <= history[0]["at_ms"] <= history[1]["at_ms"] <= after_ms


def test_stats_count_by_method_template_and_status(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    etag = _etag(http, token, "s1")
    _patch(http, token, "s1", {"customAttributes": {}}, etag)
    _patch(http, token, "s1", {"customAttributes": {}}, etag)
    _patch(http, token, "s2", {"customAttributes": {}}, etag)
    stats = emulator.stats()
    assert stats["by_route"] == {
        "POST /oauth/token": {"200": 1},
        "GET /api/v2/webchat/sessions/{sessionId}": {"200": 1},
        "PATCH /api/v2/webchat/sessions/{sessionId}": {"200": 1, "404": 1, "412": 1},
    }
    assert stats["total"] == 5
    assert {
        "method": "PATCH",
        "path": "/api/v2/webchat/sessions/{sessionId}",
        "status": 412,
        "count": 1,
    } in stats["calls"]


def test_reset_forgets_sessions_stats_tokens_and_faults(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.create_session("s1")
    token = _token(http, emulator)
    emulator.set_faults(error_rate=1.0, latency_ms=5)
    emulator.reset()
    assert emulator.faults()["error_rate"] == 0.0
    assert emulator.faults()["latency_ms"] == 0.0
    assert emulator.faults()["rate_limit_per_minute"] == 0  # the start-up flag
    assert emulator.stats()["total"] == 0
    _assert_genesys_error(http.get(SESSION.format("s1"), headers=_bearer(token)), 401)
    fresh = _token(http, emulator)
    _assert_genesys_error(http.get(SESSION.format("s1"), headers=_bearer(fresh)), 404)


def test_handle_repr_hides_the_secret(emulator: EmulatorHandle) -> None:
    assert emulator.client_secret not in repr(emulator)


async def test_a_client_that_leaves_mid_request_is_counted_not_an_error(
    http: httpx.Client, emulator: EmulatorHandle
) -> None:
    """A caller that times out and closes its connection before its body is read is not an
    emulator failure (it was logged as one, with a traceback, and counted as a 500)."""
    emulator.create_session("s-gone")
    token = _token(http, emulator)
    url = httpx.URL(emulator.base_url)
    _, writer = await asyncio.open_connection(url.host, url.port)
    head = (
        f"PATCH {SESSION.format('s-gone')} HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"customAttributes": ')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await eventually(
        lambda: emulator.count("PATCH", SESSION_PATH, CLIENT_CLOSED) == 1,
        10,
        "the closed request counted",
    )
    assert emulator.count("PATCH", SESSION_PATH, 500) == 0
    assert emulator.session("s-gone")["customAttributes"] == {}
