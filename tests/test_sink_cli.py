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
