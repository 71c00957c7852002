"""A TLS handshake with the cluster before the Kafka clients start, when TLS is on.

A client speaking TLS to a plaintext listener learns nothing for its whole request timeout
(40 s), then reports only that it could not connect, and a service retries that for ever.
One handshake of our own, bounded, says at once which setting is wrong and what the likely
cause is.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiokafka.conn import collect_hosts

from processor.settings import ConfigError, KafkaSettings

from .kafka import ssl_context

log = logging.getLogger(__name__)

# A broker that speaks TLS answers a ClientHello in milliseconds; the whole check (the
# connections tried and the handshake) takes at most this long.
TLS_CHECK_TIMEOUT_S = 5.0
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the
# certificate verified, but names another host or address.
NAME_MISMATCH = frozenset({62, 64})


async def check_tls(settings: KafkaSettings, timeout_s: float = TLS_CHECK_TIMEOUT_S) -> None:
    """With TLS on, one handshake with the first bootstrap server that takes a connection,
    all within `timeout_s`.

    The handshake uses the clients' own TLS context (`ssl_context`). Raises `ConfigError`
    (one line naming `KAFKA_SECURITY_PROTOCOL` and `KAFKA_BOOTSTRAP_SERVERS`, or
    `KAFKA_SSL_CAFILE`) when that server refuses it: a non-TLS answer or a connection
    closed on the ClientHello is a plaintext listener (a Kafka broker's closes it), a
    certificate not trusted is a missing CA, one issued to other names a server named
    otherwise than its certificate (`KAFKA_BOOTSTRAP_SERVERS`). A server that gives no
    answer in time is only likely a plaintext listener (some wait for the rest of what they
    read as a request): a warning says so, and start-up goes on. Returns as well when TLS
    is off, the handshake succeeds, or no server takes a connection: a cluster that is down
    is no wrong setting, and the clients retry it as ever.
    """
    context = ssl_context(settings)
    if context is None:
        return
    server = "?"
    try:
        async with asyncio.timeout(timeout_s):
            for host, port, _ in collect_hosts(settings.bootstrap_servers, randomize=False):
                server = f"{host}:{port}"
                try:
                    _, writer = await asyncio.open_connection(host, port)
                except OSError:
                    continue  # not taking connections: try the next one
                try:
                    await _handshake(writer, context, host, server, settings)
                finally:
                    writer.close()
                return
    except TimeoutError:
        log.warning(
            "KAFKA_SECURITY_PROTOCOL is %s, but %s of KAFKA_BOOTSTRAP_SERVERS gave no TLS"
            " answer within %g s: likely a plaintext listener (set PLAINTEXT or"
            " SASL_PLAINTEXT, or name the cluster's TLS port); the Kafka clients try it"
            " all the same",
            settings.security_protocol.value,
            server,
            timeout_s,
        )


async def _handshake(
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    host: str,
    server: str,
    settings: KafkaSettings,
) -> None:
    protocol = settings.security_protocol.value
    where = f"{server} of KAFKA_BOOTSTRAP_SERVERS"
    plaintext = (
        f"KAFKA_SECURITY_PROTOCOL is {protocol}, but {where} %s: likely a plaintext"
        " listener (set PLAINTEXT or SASL_PLAINTEXT, or name the cluster's TLS port)"
    )
    try:
        await writer.start_tls(context, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in NAME_MISMATCH:
            # trusted, but issued to other names: another CA would not mend it
            raise ConfigError(
                f"KAFKA_BOOTSTRAP_SERVERS: the TLS handshake with {where} failed, its"
                f" certificate is not issued to {host} ({exc.verify_message}); name the"
                " servers as their certificates do"
            ) from None
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
