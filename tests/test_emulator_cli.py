"""`typing-processor emulator`: flags reach the running server; bad flags stop start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from processor.childproc import ChildStartError, ListeningChild
from processor.emulator.testing import EmulatorProcess


def test_fault_flags_configure_the_server() -> None:
    flags = (
        "--latency-ms", "3",
        "--jitter-ms", "2",
        "--error-rate", "0.1",
        "--conflict-rate", "0.2",
        "--token-lifetime-s", "120",
        "--rate-limit-per-minute", "100",
        "--rate-limit-burst", "2",
        "--seed", "9",
        "--history-kept", "2",
    )  # fmt: skip
    with (
        EmulatorProcess("cli-client", "cli-secret", extra_args=flags) as process,
        httpx.Client(base_url=process.base_url, timeout=10.0) as http,
    ):
        assert http.get("/emulator/faults").json() == {
            "latency_ms": 3.0,
            "jitter_ms": 2.0,
            "error_rate": 0.1,
            "conflict_rate": 0.2,
            "token_lifetime_s": 120.0,
            "rate_limit_per_minute": 100,
            "rate_limit_burst": 2,
            "seed": 9,
        }
        token = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("cli-client", "cli-secret"),
        )
        assert token.status_code == 200
        assert token.json()["expires_in"] == 120
        # each session keeps its latest two changes of the indicator
        assert http.post("/emulator/sessions", json={"session_id": "s1"}).status_code == 201
        for indicator in ({"status": "typing"}, None, {"status": "paused"}):
            changed = http.patch(
                "/emulator/sessions/s1", json={"custom_attributes": {"typingIndicator": indicator}}
            )
            assert changed.status_code == 200
        history = http.get("/emulator/sessions/s1/history").json()
        assert [h["typing_indicator"] for h in history["history"]] == [None, {"status": "paused"}]
        assert history["dropped"] == 1
        # the secret came by environment: it is not on the command line
        with open(f"/proc/{process.pid}/cmdline", "rb") as cmdline:
            assert b"cli-secret" not in cmdline.read()
    assert process.pid is None


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--error-rate", "1.5", "Input should be less than or equal to 1"),
        ("--history-kept", "-1", "give 0 to 1000000 changes per session"),
        ("--client-id", " ", "must not be empty or blank"),
        ("--client-secret", "\n", "must not be empty or blank"),
    ],
)
def test_invalid_flag_exits_2_with_one_line(flag: str, value: str, error: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "emulator", flag, value, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"configuration error: {flag} is invalid: {error}"
    ]


def test_credentials_given_as_flags_are_stripped_as_the_processor_strips_its_own() -> None:
    """A Secret made from a file ends in a newline: the processor strips it from its OAuth
    settings, so the emulator must too, from a flag as from the environment."""
    flags = ("--client-secret", " cli-secret\n", "--rate-limit-per-minute", "0")
    with (
        EmulatorProcess("cli-client\n", "not-this-one", extra_args=flags) as process,
        httpx.Client(base_url=process.base_url, timeout=10.0) as http,
    ):
        token = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("cli-client", "cli-secret"),
        )
        assert token.status_code == 200


def test_help_never_shows_the_secret_from_the_environment() -> None:
    env = {**os.environ, "GENESYSCLOUD_OAUTHCLIENT_SECRET": "do-not-print-me"}
    result = subprocess.run(
        [sys.executable, "-m", "processor", "emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0
    assert "--rate-limit-per-minute" in result.stdout
    assert "do-not-print-me" not in result.stdout


class _ExitsAtOnce(ListeningChild):
    name = "short-lived child"

    def start(self, timeout_s: float = 30.0) -> None:
        self._spawn([sys.executable, "-c", "raise SystemExit(3)"], os.environ, timeout_s)


def test_a_child_that_exits_before_it_listens_fails_at_once() -> None:
    """Not after the whole start-up timeout (a demo or test run waited it out)."""
    child = _ExitsAtOnce("127.0.0.1", None, None)
    started = time.monotonic()
    with pytest.raises(ChildStartError, match=r"exit 3"):
        child.start(timeout_s=60)
    assert time.monotonic() - started < 30
    assert child.pid is None
