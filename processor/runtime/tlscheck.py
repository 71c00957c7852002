"""A TLS handshake with the cluster before the Kafka clients start, when TLS is on.

A client speaking TLS to a plaintext listener learns nothing for its whole request timeout
(40 s: a broker that reads the ClientHello as the start of a huge request waits for the
rest, and the client for an answer), then reports only that it could not connect, and a
service retries that for ever. One handshake of our own, bounded, says at once which
setting is wrong and what the likely cause is.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import collect_hosts

from processor.settings import ConfigError, KafkaSettings

from .kafka import ssl_context

# A broker that speaks TLS answers a ClientHello in milliseconds.
TLS_CHECK_TIMEOUT_S = 5.0


async def check_tls(settings: KafkaSettings, timeout_s: float = TLS_CHECK_TIMEOUT_S) -> None:
    """With TLS on, one handshake with the first bootstrap server that takes a connection.

    The handshake uses the clients' own TLS context (`ssl_context`). Raises `ConfigError`
    (one line naming `KAFKA_SECURITY_PROTOCOL` and `KAFKA_BOOTSTRAP_SERVERS`, or
    `KAFKA_SSL_CAFILE`) when that server does not complete it: no answer or a non-TLS one
    is a plaintext listener, a certificate not trusted is a missing CA. Returns when TLS
    is off, the handshake succeeds, or no server takes a connection: a cluster that is
    down is no wrong setting, and the clients retry it as ever.
    """
    context = ssl_context(settings)
    if context is None:
        return
    for host, port, _ in collect_hosts(settings.bootstrap_servers, randomize=False):
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            continue  # not taking connections: try the next one
        try:
            await _handshake(writer, context, host, f"{host}:{port}", timeout_s, settings)
        finally:
            writer.close()
        return


async def _handshake(
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    host: str,
    server: str,
    timeout_s: float,
    settings: KafkaSettings,
) -> None:
    protocol = settings.security_protocol.value
    where = f"{server} of KAFKA_BOOTSTRAP_SERVERS"
    plaintext = (
        f"KAFKA_SECURITY_PROTOCOL is {protocol}, but {where} %s: likely a plaintext"
        " listener (set PLAINTEXT or SASL_PLAINTEXT, or name the cluster's TLS port)"
    )
    try:
        async with asyncio.timeout(timeout_s):
            await writer.start_tls(context, server_hostname=host)
    except TimeoutError:
        raise ConfigError(
            plaintext % f"took the connection and gave no TLS answer within {timeout_s:g} s"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"KAFKA_SSL_CAFILE: the TLS handshake with {where} failed, its certificate is not"
            f" trusted ({exc.verify_message}); set KAFKA_SSL_CAFILE to the cluster's CA"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(
            plaintext % f"failed the TLS handshake ({exc.reason or exc.strerror})"
        ) from None
    except (ConnectionError, EOFError, asyncio.IncompleteReadError):
        raise ConfigError(plaintext % "closed the connection during the TLS handshake") from None
