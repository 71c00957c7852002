"""Start-up configuration of the Genesys Cloud emulator."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from processor.emulator.auth import ClientConfig
from processor.emulator.faults import Faults
from processor.emulator.store import DEFAULT_HISTORY_KEPT

DEFAULT_CLIENT_ID = "local-client"
DEFAULT_CLIENT_SECRET = "local-secret"  # noqa: S105 - the documented local demo credential


class EmulatorConfig(BaseModel):
    """What the emulator starts with, and what `POST /emulator/reset` returns to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clients: Annotated[tuple[ClientConfig, ...], Field(min_length=1)] = (
        ClientConfig(client_id=DEFAULT_CLIENT_ID, client_secret=SecretStr(DEFAULT_CLIENT_SECRET)),
    )
    faults: Faults = Faults()
    typing_events_kept: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000
    """How many typing-endpoint calls `GET /emulator/typing` and `GET /emulator/typing-events`
    remember (the oldest are dropped first, uncounted)."""
    history_kept: Annotated[int, Field(ge=0, le=1_000_000)] = DEFAULT_HISTORY_KEPT
    """How many changes of its typing indicator each session remembers for
    `GET /emulator/sessions/{id}/history` (the oldest are dropped first, and counted)."""

    @classmethod
    def single_client(
        cls,
        client_id: str,
        client_secret: str,
        faults: Faults | None = None,
        history_kept: int = DEFAULT_HISTORY_KEPT,
    ) -> EmulatorConfig:
        """One client with every scope, the usual local set-up."""
        return cls(
            clients=(ClientConfig(client_id=client_id, client_secret=SecretStr(client_secret)),),
            faults=faults or Faults(),
            history_kept=history_kept,
        )
