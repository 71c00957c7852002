"""Helpers for integration tests against the emulator (ours and our users').

`EmulatorProcess` runs `python -m processor emulator` on a free loopback port;
`EmulatorHandle` drives a running emulator's admin API over HTTP:

    with EmulatorProcess(client_id="test-client", client_secret="test-secret") as process:
        emulator = process.handle()
        emulator.create_session("s1")
        ...  # point your Genesys client at emulator.base_url
        assert emulator.history("s1")[-1]["typing_indicator"] is None
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

import httpx

from processor.childproc import ListeningChild


class EmulatorHandle:
    """Admin access to one running emulator.

    `base_url` serves the Genesys API and `/oauth/token` alike, so it is both the API
    URL and the login URL of a client under test.
    """

    def __init__(
        self, base_url: str, client_id: str, client_secret: str, timeout_s: float = 10.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def __repr__(self) -> str:
        # the secret stays out of reprs (and so out of pytest failure output)
        return f"EmulatorHandle(base_url={self.base_url!r}, client_id={self.client_id!r})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, json: Any = None, expect: int = 200) -> httpx.Response:
        response = self._http.request(method, path, json=json)
        if response.status_code != expect:
            raise AssertionError(
                f"emulator {method} {path} answered {response.status_code}, expected {expect}: "
                f"{response.text}"
            )
        return response

    def create_session(self, session_id: str, state: str = "connected") -> None:
        """Create a web-chat session (`queued`, `connected` or `closed`)."""
        self._call(
            "POST", "/emulator/sessions", {"session_id": session_id, "state": state}, expect=201
        )

    def set_state(self, session_id: str, state: str) -> None:
        """Move a session to another state; a change bumps its ETag."""
        self._call("PATCH", f"/emulator/sessions/{session_id}", {"state": state})

    def write_as_other(self, session_id: str, custom_attributes: dict[str, Any]) -> None:
        """Merge attributes as another writer would: no precondition, new ETag."""
        self._call(
            "PATCH",
            f"/emulator/sessions/{session_id}",
            {"custom_attributes": custom_attributes},
        )

    def session(self, session_id: str) -> dict[str, Any]:
        """The session as `GET /api/v2/webchat/sessions/{id}` would return it."""
        body: dict[str, Any] = self._call("GET", f"/emulator/sessions/{session_id}").json()
        return body

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Change fault fields (`latency_ms`, `error_rate`, ...); returns all faults."""
        body: dict[str, Any] = self._call("PUT", "/emulator/faults", fields).json()
        return body

    def faults(self) -> dict[str, Any]:
        """The faults in force."""
        body: dict[str, Any] = self._call("GET", "/emulator/faults").json()
        return body

    def stats(self) -> dict[str, Any]:
        """Call counts: `{"total", "calls": [{method, path, status, count}], "by_route"}`.

        `by_route` maps `"PATCH /api/v2/webchat/sessions/{sessionId}"` to `{"200": n, ...}`.
        """
        body: dict[str, Any] = self._call("GET", "/emulator/stats").json()
        return body

    def count(self, method: str, path: str, status: int | None = None) -> int:
        """Calls of one route (path template), optionally with one status only."""
        statuses = self.stats()["by_route"].get(f"{method} {path}", {})
        if status is None:
            return int(sum(statuses.values()))
        return int(statuses.get(str(status), 0))

    def history(self, session_id: str) -> list[dict[str, Any]]:
        """Every change of `typingIndicator`: `{"at_ms", "typing_indicator", "etag", "source"}`."""
        body = self._call("GET", f"/emulator/sessions/{session_id}/history").json()
        history: list[dict[str, Any]] = body["history"]
        return history

    def typing_events(self) -> list[dict[str, Any]]:
        """Calls received by the conversations typing endpoint, oldest first."""
        events: list[dict[str, Any]] = self._call("GET", "/emulator/typing-events").json()[
            "typing_events"
        ]
        return events

    def create_conversation(self, conversation_id: str, communication_ids: list[str]) -> None:
        """Make a messaging conversation (and its communications) known (DESIGN §2b)."""
        self._call(
            "POST",
            "/emulator/conversations",
            {"conversation_id": conversation_id, "communication_ids": communication_ids},
            expect=201,
        )

    def end_conversation(self, conversation_id: str) -> None:
        """End a messaging conversation: its typing calls are answered 409 from now on."""
        self._call("PATCH", f"/emulator/conversations/{conversation_id}", {"state": "disconnected"})

    def create_integration(self, integration_id: str) -> None:
        """Make an Open Messaging integration known."""
        self._call("POST", "/emulator/integrations", {"integration_id": integration_id}, 201)

    def typing(
        self,
        *,
        conversation_id: str | None = None,
        integration_id: str | None = None,
        from_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Accepted typing calls of one conversation or integration (`at_ms`, `duration`,
        `shown_until`), oldest first."""
        params = {
            name: value
            for name, value in (
                ("conversation_id", conversation_id),
                ("integration_id", integration_id),
                ("from_id", from_id),
            )
            if value is not None
        }
        response = self._http.get("/emulator/typing", params=params)
        response.raise_for_status()
        calls: list[dict[str, Any]] = response.json()["typing"]
        return calls

    def reset(self) -> None:
        """Forget sessions, stats and tokens; faults back to the start-up configuration."""
        self._call("POST", "/emulator/reset", expect=204)


class EmulatorProcess(ListeningChild):
    """`python -m processor emulator` in a child process on a free loopback port."""

    name = "emulator"

    def __init__(
        self,
        client_id: str = "test-client",
        client_secret: str = "test-secret",  # noqa: S107 - the documented test credential
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: tuple[str, ...] = ("--rate-limit-per-minute", "0"),
        log: IO[bytes] | None = None,
    ) -> None:
        super().__init__(host, port, log)
        self.client_id = client_id
        self.client_secret = client_secret
        self._extra_args = extra_args

    def __repr__(self) -> str:
        return f"EmulatorProcess(base_url={self.base_url!r}, pid={self.pid})"

    @property
    def base_url(self) -> str:
        """The emulator's URL (API, login and admin)."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the child and wait until it accepts connections."""
        command = [
            sys.executable,
            "-m",
            "processor",
            "emulator",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--client-id",
            self.client_id,
            *self._extra_args,
        ]
        # The secret goes by environment, not argv, so `ps` does not show it.
        env = {**os.environ, "GENESYSCLOUD_OAUTHCLIENT_SECRET": self.client_secret}
        self._spawn(command, env, timeout_s)

    def handle(self) -> EmulatorHandle:
        """An `EmulatorHandle` for this process (close it when done)."""
        return EmulatorHandle(self.base_url, self.client_id, self.client_secret)
