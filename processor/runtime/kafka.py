"""Kafka client construction and topic management from `KafkaSettings`."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from processor.clock import wait_unless_stopped
from processor.deadletter import DLQ_MESSAGE_BYTES_NEEDED
from processor.settings import KafkaSettings, SecurityProtocol

log = logging.getLogger(__name__)


# Waits before restarting from the last commit after the cluster was lost (then the last).
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# A run that lasted this long was healthy: the failure ending it restarts the backoff.
HEALTHY_RUN_S = 60.0
# A broker check's answer serves readiness probes for this long.
BROKER_CHECK_TTL_S = 2.0
BROKER_CHECK_TIMEOUT_S = 5.0


async def keep_running(
    run: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    what: str,
    *,
    on_failure: Callable[[KafkaError | OSError], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[asyncio.Event, float], Awaitable[None]] = wait_unless_stopped,
) -> None:
    """Run `run` (`what`, from the last commit) until `stop` is set; a lost cluster
    (`KafkaError`, `OSError`) is reported to `on_failure`, logged, and `run` started again
    after the backoff of `RESTART_BACKOFF_S`, or as soon as `stop` is set. Other exceptions
    propagate.

    The backoff grows with each failure in a row; a run that lasted `HEALTHY_RUN_S` (by
    `clock`, seconds) was not one of them, so the failure ending it waits the first
    backoff again: a worker that had a few blips over its life otherwise waited the
    longest after every later one."""
    failures = 0
    while not stop.is_set():
        started = clock()
        try:
            await run()
            failures = 0
        except (KafkaError, OSError) as exc:
            if clock() - started >= HEALTHY_RUN_S:
                failures = 0
            if on_failure is not None:
                on_failure(exc)
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            log.warning(
                "%s stopped (%s); restarting from the last commit in %.0fs", what, exc, delay
            )
            await wait(stop, delay)
            failures += 1


class TopicError(Exception):
    """Topics are missing or do not fit together (e.g. changelog partitions differ)."""


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol.value,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.sasl_mechanism.value
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of the clients (`KAFKA_SSL_CAFILE` or the system's CAs); None when
    `KAFKA_SECURITY_PROTOCOL` uses no TLS."""
    if settings.security_protocol not in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        return None
    return ssl.create_default_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
    )


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the processor reads or writes."""

    name: str
    compacted: bool = False


async def ensure_topics(
    settings: KafkaSettings,
    specs: list[TopicSpec],
    partitions: int,
    replication_factor: int,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(**client_options(settings), client_id=settings.client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return
        new_topics = [
            NewTopic(
                name=spec.name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
            )
            for spec in missing
        ]
        try:
            response = await admin.create_topics(new_topics)
        except TopicAlreadyExistsError:
            log.info("topics created concurrently by another replica")
        else:
            raise_for_topic_errors(response.topic_errors)
        log.info("created topics %s", ", ".join(spec.name for spec in missing))
    finally:
        await admin.close()


async def topic_configs(settings: KafkaSettings, topics: list[str]) -> dict[str, dict[str, str]]:
    """Each of `topics`' configs as the cluster reports them, by name. A cluster may say
    nothing of a config (a broker that lists only what was set on the topic), and a topic
    it cannot or will not describe (no DescribeConfigs permission, a request refused) is
    left out: logged, not fatal, its configs not checked."""
    admin = AIOKafkaAdminClient(**client_options(settings), client_id=settings.client_id)
    await admin.start()
    try:
        # every entry, not only those checked: some brokers (Tansu) drop a connection that
        # names the configs it asks for
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
        )
    except KafkaError as exc:
        # a check that cannot be made must not keep the processor from starting
        log.warning("cannot read the configs of %s (%r): not checked", ", ".join(topics), exc)
        return {}
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for code, message, _, name, entries in response.resources:
            if name not in topics:
                continue
            if code != 0:
                log.warning(
                    "cannot read the configs of %s (%s: %s): not checked",
                    name,
                    for_code(code).__name__,
                    message,
                )
                continue
            # (a sensitive config's value is None)
            configs[name] = {str(e[0]): str(e[1]) for e in entries if e[1] is not None}
    return configs


def check_dlq_message_bytes(topic: str, configs: dict[str, str]) -> None:
    """`TopicError` when DLQ `topic`'s reported `configs` give it a `max.message.bytes`
    below what a dead letter may take (`DLQ_MESSAGE_BYTES_NEEDED`): the largest letters
    would be refused, each stopping its partition for good. Not reported, not checked."""
    reported = configs.get("max.message.bytes")
    if reported is None:
        return
    try:
        limit = int(reported)
    except ValueError:
        log.warning("the max.message.bytes of %s is %r, no number: not checked", topic, reported)
        return
    if limit < DLQ_MESSAGE_BYTES_NEEDED:
        raise TopicError(
            f"DLQ {topic} has max.message.bytes={limit}: a dead letter takes up to"
            f" {DLQ_MESSAGE_BYTES_NEEDED} bytes (max.message.bytes={DLQ_MESSAGE_BYTES_NEEDED}"
            " or more); a larger one would be refused and stop its partition for good"
        )


def raise_for_topic_errors(topic_errors: list[tuple[Any, ...]]) -> None:
    """The per-topic errors of a CreateTopics answer, which the client does not raise:
    `TopicError` for one that asking again cannot mend (a replication factor above the
    brokers there are, a policy refusing the topic), `KafkaError` for a passing one (retried
    from the start); a topic created concurrently is no error.

    `topic_errors` holds `(name, error_code[, error_message])` per topic (by version).
    """
    for name, code, *rest in topic_errors:
        if code == 0:
            continue
        error = for_code(code)
        if error is TopicAlreadyExistsError:
            log.info("topic %s created concurrently by another replica", name)
            continue
        message = f"cannot create topic {name}: {error.__name__}"
        if rest and rest[0]:
            message += f" ({rest[0]})"
        if error.retriable:
            raise error(message)
        raise TopicError(message)


class BrokerCheck:
    """Whether the Kafka cluster answers a metadata request, for readiness probes.

    One answer serves every probe for `BROKER_CHECK_TTL_S`, and concurrent probes share
    one request, so a probe storm costs the cluster one request per interval.
    """

    def __init__(self) -> None:
        self._checked: tuple[float, bool] | None = None
        self._check: asyncio.Future[bool] | None = None

    async def reachable(self, consumer: AIOKafkaConsumer | None) -> bool:
        """True when the cluster answered `consumer` within the last `BROKER_CHECK_TTL_S`."""
        if consumer is None:
            return False
        now = time.monotonic()
        if self._checked is not None and now - self._checked[0] < BROKER_CHECK_TTL_S:
            return self._checked[1]
        if self._check is None:
            self._check = asyncio.ensure_future(self._ask(consumer))
        check = self._check
        try:
            return await asyncio.shield(check)
        finally:
            if check.done() and self._check is check:
                self._check = None

    async def _ask(self, consumer: AIOKafkaConsumer) -> bool:
        try:
            async with asyncio.timeout(BROKER_CHECK_TIMEOUT_S):
                await consumer.topics()
            reachable = True
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("Kafka cluster unreachable: %s", exc)
            reachable = False
        self._checked = (time.monotonic(), reachable)
        return reachable
