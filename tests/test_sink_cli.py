"""`typing-processor apply` against the emulator: exit codes, output, version, cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from processor.cli import main
from processor.emulator.app import SESSION_PATH, TOKEN_PATH
from processor.emulator.testing import EmulatorHandle


@pytest.fixture
def genesys_env(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", emulator.client_id)
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", emulator.client_secret)
    monkeypatch.setenv("GENESYSCLOUD_API_URL", emulator.base_url)
    monkeypatch.setenv("GENESYSCLOUD_LOGIN_URL", emulator.base_url)
    return emulator


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(["apply", *argv])
    out = capsys.readouterr().out.strip()
    return code, json.loads(out)


def test_apply_sets_with_the_next_version_then_clears(
    genesys_env: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = genesys_env
    emulator.create_session("s1")

    code, report = run(capsys, "s1", "typing", "--timeout-ms", "4000")
    assert code == 0
    assert report["outcome"] == "applied"
    assert (report["version"], report["attempts"], report["http_status"]) == (1, 2, 200)
    indicator = emulator.session("s1")["customAttributes"]["typingIndicator"]
    assert indicator["status"] == "typing"
    assert indicator["expiresAt"] - indicator["originatedAt"] == 4000

    code, report = run(capsys, "s1", "paused")
    assert (code, report["version"]) == (0, 2)
    indicator = emulator.session("s1")["customAttributes"]["typingIndicator"]
    assert indicator["expiresAt"] - indicator["originatedAt"] == 2000  # the matrix default

    code, report = run(capsys, "s1", "stopped")
    assert (code, report["outcome"], report["status"]) == (0, "applied", "cleared")
    assert "typingIndicator" not in emulator.session("s1")["customAttributes"]
    # each command is one GET and one PATCH, as the tutorial's, but conditional and checked
    assert emulator.count("GET", SESSION_PATH) == 3
    assert emulator.count("PATCH", SESSION_PATH, 200) == 3


def test_apply_after_a_clear_starts_again_at_version_1_and_says_so(
    genesys_env: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clear leaves no indicator, the only place Genesys keeps a version, and the
    command has no store: the next set cannot go on counting, and the help says so."""
    genesys_env.create_session("s1")
    assert run(capsys, "s1", "typing")[1]["version"] == 1
    assert run(capsys, "s1", "paused")[1]["version"] == 2
    assert run(capsys, "s1", "stopped")[1]["status"] == "cleared"
    code, report = run(capsys, "s1", "typing")
    assert (code, report["version"]) == (0, 1)
    with pytest.raises(SystemExit) as exc:
        main(["apply", "--help"])
    assert exc.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "a set after a clear starts again at version 1" in shown


def test_apply_fails_with_exit_1_and_says_why(
    genesys_env: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    genesys_env.create_session("q1", state="queued")
    code, report = run(capsys, "q1", "typing")
    assert (code, report["outcome"], report["remote_state"]) == (
        1,
        "session_not_connected",
        "queued",
    )
    code, report = run(capsys, "nobody", "typing")
    assert (code, report["outcome"], report["http_status"]) == (1, "session_not_found", 404)
    code, report = run(capsys, "../etc", "stopped")
    assert (code, report["outcome"], report["attempts"]) == (1, "rejected", 0)
    assert genesys_env.count("PATCH", SESSION_PATH) == 0


def test_apply_bad_configuration_exits_2(
    genesys_env: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_API_URL", "ftp://nowhere")
    assert main(["apply", "s1", "typing"]) == 2
    assert "GENESYSCLOUD_API_URL" in capsys.readouterr().err
    assert genesys_env.count("POST", TOKEN_PATH) == 0


def test_apply_timeout_out_of_range_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["apply", "s1", "typing", "--timeout-ms", "10"])
    assert exc.value.code == 2


def test_apply_as_a_command(genesys_env: EmulatorHandle) -> None:
    genesys_env.create_session("s1")
    done = subprocess.run(
        [sys.executable, "-m", "processor", "apply", "s1", "typing"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "applied"
    assert genesys_env.client_secret not in done.stdout + done.stderr


CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
COMM = "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
INTEGRATION = "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21"


def test_apply_sends_one_agent_typing_call(
    genesys_env: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    genesys_env.create_conversation(CONV, [COMM])
    code, report = run(
        capsys, "s1", "typing", "--timeout-ms", "30000", "--agent-typing", CONV, COMM
    )
    assert (code, report["outcome"], report["target"]) == (0, "applied", "agent_typing")
    assert report["duration_ms"] == 5000  # clamped to TYPING_MESSAGING_MAX_DURATION_MS
    [call] = genesys_env.typing(conversation_id=CONV)
    assert call["duration"] == 5000
    # as sent (the emulator's clock is the same as ours, its time a moment later)
    assert isinstance(report["shown_until"], int)
    assert 0 <= call["shown_until"] - report["shown_until"] < 1000


def test_apply_says_nothing_is_shown_when_the_typing_call_failed(
    genesys_env: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    """A conversation Genesys does not know shows nothing: the report gives no "shown
    until" (it used to give one, from when the command began, whatever the outcome)."""
    code, report = run(capsys, "s1", "typing", "--agent-typing", CONV, COMM)
    assert (code, report["outcome"], report["http_status"]) == (1, "session_not_found", 404)
    assert "shown_until" not in report


def test_apply_sends_one_open_messaging_typing_call_and_stopped_sends_none(
    genesys_env: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    genesys_env.create_integration(INTEGRATION)
    argv = ["--open-messaging", INTEGRATION, "cust-1", "--from-id-type", "Phone"]
    code, report = run(capsys, "s1", "typing", "--timeout-ms", "2000", *argv)
    assert (code, report["outcome"], report["duration_ms"]) == (0, "applied", 2000)
    code, report = run(capsys, "s1", "stopped", *argv)
    assert (code, report["outcome"]) == (0, "lapses")  # there is no "Off"
    [call] = genesys_env.typing(integration_id=INTEGRATION, from_id="cust-1")
    assert call["from_id_type"] == "Phone"


def test_apply_refuses_ids_that_are_not_uuids(
    genesys_env: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["apply", "s1", "typing", "--agent-typing", "../x", COMM])
    assert code == 2
    assert "UUIDs" in capsys.readouterr().err
    assert genesys_env.typing_events() == []


def test_apply_asks_for_the_configured_scopes_only(
    genesys_env: EmulatorHandle,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    genesys_env.create_conversation(CONV, [COMM])
    monkeypatch.setenv("GENESYSCLOUD_OAUTH_SCOPES", "messaging")
    code, report = run(capsys, "s1", "typing", "--agent-typing", CONV, COMM)
    # the token carries only `messaging`: agent typing needs `conversations`
    assert (code, report["outcome"], report["http_status"]) == (1, "auth_config_error", 403)
    monkeypatch.setenv("GENESYSCLOUD_OAUTH_SCOPES", "conversations")
    code, report = run(capsys, "s1", "typing", "--agent-typing", CONV, COMM)
    assert (code, report["outcome"]) == (0, "applied")
    monkeypatch.delenv("GENESYSCLOUD_OAUTH_SCOPES")
    code, report = run(capsys, "s1", "typing", "--agent-typing", CONV, COMM)
    assert (code, report["outcome"]) == (0, "applied")  # no scope asked: the whole grant
