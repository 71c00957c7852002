"""TLS the cluster does not speak stops start-up at once, with one line saying why."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from processor.runtime.tlscheck import check_tls
from processor.settings import ConfigError, KafkaSettings, SecurityProtocol


@pytest.mark.parametrize("command", ["run", "crm-webhook", "loadgen"])
def test_tls_against_a_plaintext_listener_stops_start_up_naming_the_settings(
    bootstrap_servers: str, command: str
) -> None:
    """The local broker's listener is plaintext: its clients would say nothing for their
    40 s request timeout, then only that they could not connect (and `run` and
    `crm-webhook` would retry that for ever)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "TYPING_HTTP_PORT": "0",
        "TYPING_CRM_WEBHOOK_URL": "http://127.0.0.1:9/crm",
        "GENESYSCLOUD_OAUTHCLIENT_ID": "client",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": "secret",
    }
    result = subprocess.run(
        [sys.executable, "-m", "processor", command],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("configuration error: KAFKA_SECURITY_PROTOCOL is SSL, but "), line
    assert f"{bootstrap_servers} of KAFKA_BOOTSTRAP_SERVERS" in line
    assert "gave no TLS answer within 5 s: likely a plaintext listener" in line


async def test_a_cluster_taking_no_connection_is_left_to_the_clients_retries() -> None:
    """Nothing listens: no wrong setting can be told from that, and a service retries a
    cluster that is down."""
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", security_protocol="SSL")
    await check_tls(settings, timeout_s=1.0)


async def test_plaintext_settings_need_no_handshake(bootstrap_servers: str) -> None:
    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers, security_protocol=SecurityProtocol.PLAINTEXT
    )
    await check_tls(settings, timeout_s=1.0)


async def test_a_listener_that_drops_the_client_hello_is_named_at_once() -> None:
    """A Kafka broker's plaintext listener reads a ClientHello as a request far over its
    size limit and closes the connection."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4)
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        settings = KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{port}",
            security_protocol=SecurityProtocol.SASL_SSL,
            sasl_mechanism="PLAIN",
            sasl_username="u",
            sasl_password="p",
        )
        with pytest.raises(ConfigError) as caught:
            await check_tls(settings, timeout_s=10.0)
    message = str(caught.value)
    assert message.startswith(
        f"KAFKA_SECURITY_PROTOCOL is SASL_SSL, but 127.0.0.1:{port} of KAFKA_BOOTSTRAP_SERVERS "
    )
    assert message.endswith(
        ": likely a plaintext listener (set PLAINTEXT or SASL_PLAINTEXT, or name the cluster's"
        " TLS port)"
    )
