"""Shared fixtures: a real Kafka-compatible broker and a real Genesys emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from processor.broker import LocalBroker
from processor.emulator.testing import EmulatorHandle, EmulatorProcess

# --- broker fixtures ---


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One Tansu broker on a free loopback port for the whole test session."""
    with LocalBroker() as running:
        yield running


@pytest.fixture
def bootstrap_servers(broker: LocalBroker) -> str:
    """`host:port` of the session's broker."""
    return broker.bootstrap_servers


# --- end broker fixtures ---


# --- emulator fixtures ---


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[EmulatorProcess]:
    """One `python -m processor emulator` child for the whole test session (rate limit off).

    Stopped at session end even when tests fail; the child also dies with pytest.
    """
    with EmulatorProcess(
        client_id="test-client",
        client_secret="test-secret",
        extra_args=("--rate-limit-per-minute", "0"),
    ) as process:
        yield process


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> Iterator[EmulatorHandle]:
    """The session's emulator, reset to its start-up configuration before each test."""
    handle = emulator_process.handle()
    try:
        handle.reset()
        yield handle
    finally:
        handle.close()


# --- end emulator fixtures ---
