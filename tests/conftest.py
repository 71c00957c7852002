"""Shared fixtures: a real Kafka-compatible broker and a real Genesys emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from processor.broker import LocalBroker

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
