"""TLS the cluster does not speak stops start-up at once, with one line saying why."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from pipeline import RunProcess, eventually, silent_listener

from processor.runtime.tlscheck import check_tls
from processor.settings import ConfigError, KafkaSettings, SecurityProtocol


@pytest.mark.parametrize("command", ["run", "crm-webhook", "loadgen"])
async def test_tls_against_the_local_plaintext_broker_is_named_at_once(
    bootstrap_servers: str, command: str, tmp_path: Path
) -> None:
    """The local broker's listener is plaintext and waits for the rest of what it reads as
    a request: its clients would say nothing for their 40 s request timeout, then only
    that they could not connect. A warning names the settings within the check's 5 s;
    a silent listener is no proof, so start-up goes on (and `run` still stops cleanly)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "TYPING_HTTP_PORT": "0",
        "TYPING_CRM_WEBHOOK_URL": "http://127.0.0.1:9/crm",
        "GENESYSCLOUD_OAUTHCLIENT_ID": "client",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": "secret",
    }
    process = RunProcess(env, tmp_path / "tls.log", command)
    process.start()
    try:
        warning = (
            f"KAFKA_SECURITY_PROTOCOL is SSL, but {bootstrap_servers} of KAFKA_BOOTSTRAP_SERVERS"
            " gave no TLS answer within 5 s: likely a plaintext listener"
        )
        await eventually(lambda: warning in process.log_text(), 30, "the TLS warning")
        if command == "run":
            assert process.terminate(timeout_s=15) == 0, process.log_text()
    finally:
        process.kill()


async def test_a_silent_listener_is_warned_of_and_start_up_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with silent_listener() as (port, connected):
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", security_protocol="SSL")
        with caplog.at_level(logging.WARNING, "processor.runtime.tlscheck"):
            await check_tls(settings, timeout_s=0.5)
        assert connected.is_set()
    [record] = caplog.records
    assert f"127.0.0.1:{port} of KAFKA_BOOTSTRAP_SERVERS gave no TLS answer" in record.message


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
