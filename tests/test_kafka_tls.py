"""TLS the cluster does not speak stops start-up at once, with one line saying why."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
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


@contextlib.asynccontextmanager
async def tls_listener(certificate: trustme.LeafCert) -> AsyncIterator[int]:
    """A loopback server that completes TLS handshakes with `certificate`; its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    cafile = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(cafile))
    return authority, cafile


async def refusal(certificate: trustme.LeafCert, cafile: Path | None) -> tuple[int, str]:
    """The port of a listener serving `certificate` and the line the TLS check refuses it
    with, trusting `cafile` (None: the system's CAs)."""
    async with tls_listener(certificate) as port:
        settings = KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{port}", security_protocol="SSL", ssl_cafile=cafile
        )
        with pytest.raises(ConfigError) as caught:
            await check_tls(settings, timeout_s=10.0)
    return port, str(caught.value)


async def test_a_certificate_for_the_server_trusted_by_the_ca_file_passes(
    ca: tuple[trustme.CA, Path],
) -> None:
    authority, cafile = ca
    async with tls_listener(authority.issue_cert("127.0.0.1")) as port:
        settings = KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{port}", security_protocol="SSL", ssl_cafile=cafile
        )
        await check_tls(settings, timeout_s=10.0)


async def test_a_certificate_no_ca_vouches_for_names_the_ca_file(
    ca: tuple[trustme.CA, Path],
) -> None:
    authority, _ = ca
    port, message = await refusal(authority.issue_cert("127.0.0.1"), None)
    assert message.startswith(
        f"KAFKA_SSL_CAFILE: the TLS handshake with 127.0.0.1:{port} of KAFKA_BOOTSTRAP_SERVERS"
        " failed, its certificate is not trusted ("
    )
    assert message.endswith("set KAFKA_SSL_CAFILE to the cluster's CA")


async def test_a_certificate_issued_to_another_name_names_the_servers_not_the_ca(
    ca: tuple[trustme.CA, Path],
) -> None:
    """Trusted, but for `kafka-0.kafka`: the servers are named by an address their
    certificates do not carry. Another CA file would not mend it; saying so would send
    the operator after the wrong setting."""
    authority, cafile = ca
    port, message = await refusal(authority.issue_cert("kafka-0.kafka"), cafile)
    assert message.startswith(
        f"KAFKA_BOOTSTRAP_SERVERS: the TLS handshake with 127.0.0.1:{port} of"
        " KAFKA_BOOTSTRAP_SERVERS failed, its certificate is not issued to 127.0.0.1 ("
    )
    assert message.endswith("name the servers as their certificates do")
    assert "KAFKA_SSL_CAFILE" not in message
