"""The CRM webhook worker: delivers `genesys.typing.crm-sync` records to a CRM endpoint.

A consumer group of its own (`<group>-crm-webhook`) reads the CRM-sync topic and POSTs each
record's JSON, as the tutorial's webhook did, with the record's `event_id` as the
`Idempotency-Key` so the receiver can drop redeliveries (delivery is at least once: the
offset is committed only after the endpoint accepted the record), and
`TYPING_CRM_WEBHOOK_AUTHORIZATION`, if set, as the `Authorization` header. It is ready
(`/readyz`) once it is a member of its group, with or without partitions, and the cluster
answers. With telemetry on, each record's delivery is a span continuing the record's
`traceparent`, and each POST a span of its own whose `traceparent` the POST carries, so that
the CRM continues the trace (`telemetry.delivery`).
With https, the endpoint's certificate is verified against `TYPING_CRM_WEBHOOK_CA_FILE` if
set (else the default store), and `TYPING_CRM_WEBHOOK_CLIENT_CERT_FILE` (and `_KEY_FILE`)
presented for mutual TLS (`tls_context`).

What the endpoint answers decides what becomes of a record (`_answer`): a 2xx is delivered;
400, 413 and 422 say the record itself is wrong, so it is refused for good (counted and
logged) and delivery goes on; any other answer (5xx, timeouts, 408/409/425/429, and the
statuses that say the endpoint is wrong: 3xx, 401, 403, 404, ..., as a TLS certificate
refused does) holds the partition and is retried with backoff until the endpoint accepts,
since every later record would get it too. An endpoint that is wrong is logged at ERROR
with what to correct, a transient failure at WARNING.
How long the oldest record held so has been retried is `CrmWebhookWorker.held_s`.

Each partition's fetched records are delivered by a task of their own, the partition paused
meanwhile (so in order, one POST at a time per partition), and committed once delivered: a
record held on one partition holds no other (other sessions), whose records are fetched,
delivered and committed meanwhile. Within a batch, what was delivered is also committed
before a held record's first retry and at least every `TYPING_COMMIT_INTERVAL_MS`, so that
a worker killed while the endpoint holds a record, or delivers slowly, posts again only
what it delivered since (on the fast path, one commit per batch).

A lost cluster (also one down at start) is retried from the last commit, never fatal; a
commit refused because the group rebalanced without the worker is not even a restart (the
worker rejoins, and whoever owns a partition next delivers again from its commit); a
DLQ whose `max.message.bytes` the cluster reports below the largest dead letter stops
start-up (`TopicError`), as it stops `run`'s, and so does, with `TYPING_CREATE_TOPICS`
off, a CRM topic or DLQ that does not exist. A
record that is not a CRM-sync record (not JSON, not an object, not valid as one: something
else wrote to the topic), or whose `event_id` no header can carry, is never posted: it
goes to the DLQ with its original bytes, and the worker goes on once the dead letter is
acknowledged.

Once stopped (SIGTERM), the worker gives up whatever would outlast DESIGN §5's 10 s: a start
at once, the POST in flight after `WebhookConfig.post_grace_s` (what was accepted before it
is still committed), the last commit after `stop_grace_s`, leaving the group and closing its
clients after `close_grace_s`; what was not committed by then is delivered again (at least
once).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import re
import ssl
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry import context as otel_context
from pydantic import SecretStr, ValidationError

from processor import USER_AGENT
from processor.clock import Clock, SystemClock, wait_unless_stopped, within_grace
from processor.codec import describe_errors, json_kind, reason_for
from processor.deadletter import dead_letter_of
from processor.logs import throttled
from processor.models import CrmSyncRecord, DlqReason
from processor.retryafter import retry_after_s
from processor.runtime.assignment import UNASSIGNED_WARN_S, AssignmentWait
from processor.runtime.kafka import (
    BrokerCheck,
    TopicError,
    check_dlq_message_bytes,
    client_options,
    keep_running,
    topic_configs,
)
from processor.runtime.recordbatch import Undecodable
from processor.runtime.tlscheck import NAME_MISMATCH
from processor.runtime.undecodable import is_undecodable, read_past_undecodable
from processor.settings import KafkaSettings, TypingSettings
from processor.sink.backoff import Backoff
from processor.telemetry import Telemetry
from processor.telemetry.delivery import RecordSpan, delivery_tracing

log = logging.getLogger(__name__)

# Answers about the record itself (400 Bad Request, 413 Content Too Large, 422 Unprocessable
# Content): every other record may well be accepted, so this one is refused for good
# rather than holding its partition for ever.
_RECORD_REFUSED = frozenset({400, 413, 422})
# 4xx answers that the same request may pass later, as 5xx: 408 Request Timeout, 425 Too
# Early, 429 Too Many Requests, and 409 Conflict, which a receiver implementing the
# Idempotency-Key draft answers while the same key's earlier attempt (one this worker
# timed out on) is still being processed.
_TRANSIENT_4XX = frozenset({408, 409, 425, 429})
# How long a partition may be held at one record (a CRM outage) while this worker stays in
# the group: a week.
_HELD_FOR_MS = 7 * 24 * 3600 * 1000
# How much longer than a POST's timeout a hand-over waits for the record in hand: the
# dead letter of a record refused.
_HAND_OVER_MARGIN_S = 1.0
# Most of an answer's body read (no more is needed: the status says it all), and the longest
# wait a `Retry-After` is followed for.
_MAX_BODY = 64 * 1024
_MAX_RETRY_AFTER_S = 60.0
# An `event_id` that can go out as a header value: visible ASCII, bounded.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,256}")
# Base of the retries' backoff: the wait after failed attempt n (from 1) is drawn up to
# 0.2 * 2**n s (0.4 s after the first), capped by `WebhookConfig.max_backoff_s`.
_BACKOFF_BASE_S = 0.2


class _Answer(enum.Enum):
    """What an answer of the CRM endpoint means for the record posted."""

    ACCEPTED = "accepted"
    REFUSED = "refused"  # the record's fault: set aside on the DLQ, delivery goes on
    TRANSIENT = "transient"  # retried: 5xx, `_TRANSIENT_4XX`, no answer at all
    ENDPOINT_WRONG = "endpoint wrong"  # retried: the endpoint is misconfigured


def _answer(status: int | None) -> _Answer:
    """Classify the endpoint's answer (None: none, the request failed).

    Every status that is neither a 2xx, nor about the record (`_RECORD_REFUSED`), nor
    transient (5xx, `_TRANSIENT_4XX`) says that the endpoint would answer every record so:
    a redirect (3xx: not followed, the URL is outdated, e.g. http for https), 401/403 (an
    expired or rotated credential, a missing permission), 402, 404/405/410 (a wrong path),
    406/415 (the URL points at something that takes no JSON), 407 (a proxy's credential),
    411/414/421/426/428/431/451 and any status not listed. Held and retried, not refused: a
    misconfiguration must not drop the whole CRM stream while it lasts.
    """
    if status is None or status >= 500 or status in _TRANSIENT_4XX:
        return _Answer.TRANSIENT
    if 200 <= status < 300:
        return _Answer.ACCEPTED
    if status in _RECORD_REFUSED:
        return _Answer.REFUSED
    return _Answer.ENDPOINT_WRONG


def _certificate_problem(exc: BaseException, ca_file: Path | None) -> str | None:
    """What is wrong with the endpoint's TLS certificate when `exc` (an httpx error) is its
    verification failing, naming the setting that mends it (`ca_file`: the bundle trusted,
    if one is set); None for any other failure.

    Like a 3xx, 401 or 404, a certificate refused refuses every record: the endpoint or
    the trust is misconfigured, not down for a while.
    """
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    if cause.verify_code in NAME_MISMATCH:
        # trusted, but issued to other names: another CA would not mend it
        return (
            f"TYPING_CRM_WEBHOOK_URL: the CRM endpoint's TLS certificate is not issued to"
            f" its host ({cause.verify_message}); name the endpoint as its certificate does"
        )
    if ca_file is not None:
        return (
            f"the CRM endpoint's TLS certificate is not trusted by TYPING_CRM_WEBHOOK_CA_FILE"
            f" ({cause.verify_message}); add its CA to {ca_file}, or correct"
            " TYPING_CRM_WEBHOOK_URL"
        )
    return (
        f"the CRM endpoint's TLS certificate is not trusted ({cause.verify_message}); set"
        " TYPING_CRM_WEBHOOK_CA_FILE to a bundle with its CA, or correct"
        " TYPING_CRM_WEBHOOK_URL"
    )


def tls_context(config: WebhookConfig) -> ssl.SSLContext:
    """The TLS context of the POSTs: `config.ca_file` trusted if set, else httpx's default
    store (SSL_CERT_FILE or SSL_CERT_DIR, else certifi's), and the client certificate for
    mutual TLS, if any. The files were checked with the settings (`TypingSettings`)."""
    if config.ca_file is not None:
        context = ssl.create_default_context(cafile=config.ca_file)
    else:
        context = httpx.create_ssl_context()
    if config.client_cert_file is not None:
        # no password: an encrypted key was refused with the settings; never prompt for one
        context.load_cert_chain(
            config.client_cert_file, config.client_key_file, password=lambda: b""
        )
    return context


class _Outcome(enum.Enum):
    """What became of a record (its span's `typing.outcome`)."""

    DELIVERED = "delivered"
    REFUSED = "refused"  # by the endpoint (400/413/422): on the DLQ
    DEAD_LETTER = "dead_letter"  # no CRM-sync record: on the DLQ
    GIVEN_UP = "given_up"  # stopped, revoked: delivered again from the commit


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Where and how patiently to deliver (the URL, which may carry a credential, is kept
    out of `repr`), and the `Authorization` header sent with every POST, if any (a
    `SecretStr`: masked wherever it is shown). `timeout_s` bounds each POST, answer
    included (`TYPING_CRM_WEBHOOK_TIMEOUT_MS`). With https, `ca_file` is the bundle trusted
    instead of the default store, `client_cert_file` (its key in `client_key_file`, else in
    it) the certificate presented for mutual TLS (`tls_context`).

    Once stopped, the delivery in flight and the last commit get `stop_grace_s`, leaving
    the group and closing the Kafka clients `close_grace_s`: 6.5 s of SIGTERM's 10
    (DESIGN §5), the rest is for the ops endpoint and the telemetry's last export. The POST
    in flight gets `post_grace_s` of `stop_grace_s`, so that the commit of what the endpoint
    accepted before it still fits.
    """

    url: str = field(repr=False)
    authorization: SecretStr | None = field(default=None, repr=False)
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    timeout_s: float = 5.0
    max_backoff_s: float = 30.0  # 0: retry at once
    stop_grace_s: float = 4.5
    post_grace_s: float = 3.0
    close_grace_s: float = 2.0


@dataclass(slots=True)
class WebhookCounters:
    """Deliveries so far."""

    delivered: int = 0
    refused: int = 0
    retries: int = 0
    dead_letters: int = 0
    restarts: int = 0


class _Partition:
    """The delivery of one partition's fetched records: `revoked` once a rebalance takes
    the partition away (its delivery stops after the record in hand), `idle` while none of
    its records is in hand (from its POST or dead letter until it is noted as delivered, so
    that a hand-over commits past a record whose dead letter was written), `handed_over`
    once the hand-over is done with it (nothing delivered is noted after), and when what
    was delivered of it was last committed (epoch ms; the delivery's start at first)."""

    __slots__ = ("committed_ms", "handed_over", "idle", "revoked")

    def __init__(self, now_ms: int) -> None:
        self.revoked = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.handed_over = False
        self.committed_ms = now_ms


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Notes when the worker has joined the group (its first assignment, even empty), and
    how long it has waited for an assignment since it subscribed or since the last
    revocation (`wait`); hands revoked partitions over (`CrmWebhookWorker._hand_over`)."""

    def __init__(
        self, worker: CrmWebhookWorker, consumer: AIOKafkaConsumer, wait: AssignmentWait
    ) -> None:
        self.joined = False
        self.wait = wait
        self._worker = worker
        self._consumer = consumer
        wait.waiting()  # (from the subscription)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.wait.waiting()  # (the client revokes before each join, with nothing at the first)
        await self._worker._hand_over(self._consumer, revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.joined = True  # even with no partition: more workers than partitions
        self.wait.assigned()


class CrmWebhookWorker:
    """Consumes CRM-sync records and POSTs them one by one, in order per partition, the
    partitions concurrently."""

    def __init__(
        self,
        kafka: KafkaSettings,
        typing: TypingSettings,
        config: WebhookConfig,
        *,
        http: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        telemetry: Telemetry | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        unassigned_warn_s: float = UNASSIGNED_WARN_S,
    ) -> None:
        """`telemetry`: spans of each record and POST when on (`telemetry.delivery`); its
        metrics are `telemetry.webhook.instrument_webhook`'s. `monotonic` times the waits for
        the group to assign the worker partitions, of which one longer than
        `unassigned_warn_s` is warned of (see `AssignmentWait`)."""
        self._kafka = kafka
        self._typing = typing
        self._config = config
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=config.timeout_s,
            headers={"User-Agent": USER_AGENT},
            verify=tls_context(config),
        )
        self._backoff = Backoff(_BACKOFF_BASE_S, config.max_backoff_s, rng)
        self._clock = clock or SystemClock()  # dead letters' timestamps
        self._monotonic = monotonic
        self._unassigned_warn_s = unassigned_warn_s
        self._tracing = delivery_tracing(telemetry, config.url)
        self.counters = WebhookCounters()
        self._consumer: AIOKafkaConsumer | None = None
        self._assignment: _Assignment | None = None
        self._broker = BrokerCheck()
        # Offset after the last record delivered, by partition, not committed yet; the
        # deliveries under way, and the tasks delivering fetched batches, by partition.
        self._delivered: dict[TopicPartition, int] = {}
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._tasks: dict[TopicPartition, asyncio.Task[None]] = {}
        # When the record being delivered first failed, by partition (absent: not held).
        self._held_since_ms: dict[TopicPartition, int] = {}

    @property
    def ready(self) -> bool:
        """Consuming: the worker is a member of the group, with whatever partitions of the
        CRM topic it was given (none when there are more workers than partitions: an idle
        worker is ready, so that a rollout's extra pod never stalls it)."""
        assignment = self._assignment
        return self._consumer is not None and assignment is not None and assignment.joined

    @property
    def held_s(self) -> float:
        """Seconds since the record held longest first failed (0: none is held). A record
        is held until the endpoint accepts or refuses it, whatever the other partitions
        and workers deliver meanwhile, so this is what says a partition is stuck."""
        if not self._held_since_ms:
            return 0.0
        return max(0, self._clock.now_ms() - min(self._held_since_ms.values())) / 1000

    async def readiness(self) -> str | None:
        """Why the worker is not ready (for `/readyz`), or None when it is."""
        if self._consumer is None:
            return "worker not running"
        assignment = self._assignment
        if assignment is None or not assignment.joined:
            joining = f"not yet a member of the group consuming {self._typing.crm_topic}"
            waiting = None if assignment is None else assignment.wait.reason()
            return joining if waiting is None else f"{joining}: {waiting}"
        if not await self._broker.reachable(self._consumer):
            return "Kafka cluster unreachable"
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; commits after each delivered batch (and within one:
        `_commit_progress`). A lost cluster is retried (after the backoff of
        `keep_running`) from the last commit. Once `stop` is set, what the cluster or the
        endpoint do not finish within the graces of `WebhookConfig` is given up.

        Raises `TopicError` when a topic is missing or the DLQ cannot take the largest dead
        letter (`_start`)."""

        def count_restart(_: KafkaError | OSError) -> None:
            self.counters.restarts += 1

        try:
            await keep_running(
                lambda: self._consume(stop), stop, "CRM delivery", on_failure=count_restart
            )
        finally:
            if self._owns_http:
                await self._http.aclose()

    async def _consume(self, stop: asyncio.Event) -> None:
        """One pair of clients: start, deliver until stopped, close; each step bounded
        once `stop` is set."""
        options = client_options(self._kafka)
        # named apart from `run`'s clients, which take the same KAFKA_CLIENT_ID
        name = f"{self._kafka.client_id}-crm-webhook"
        consumer = AIOKafkaConsumer(
            **options,
            client_id=f"{name}-consumer",
            group_id=f"{self._typing.group_id}-crm-webhook",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=self._kafka.isolation_level.value,
            # A record is held, not fetched past, while the endpoint fails (by design, for
            # as long as it fails): the client must not leave the group after its default
            # five minutes without a fetch, silently, and deliver the batch again once
            # back. Heartbeats keep the membership; a stuck process fails its liveness probe.
            max_poll_interval_ms=_HELD_FOR_MS,
        )
        # dead letters only; acks from every replica: a letter is the record's only copy
        # once its offset is committed
        dead_letters = AIOKafkaProducer(**options, client_id=f"{name}-producer", acks="all")
        try:
            # A cluster that does not answer holds a start for its request timeout (40 s):
            # given up as soon as the worker is stopped.
            if not await within_grace(self._start(consumer, dead_letters), stop, 0.0):
                log.info("stopped before the Kafka cluster answered")
                return
            group = f"{self._typing.group_id}-crm-webhook"
            wait = AssignmentWait(group, self._monotonic, warn_after_s=self._unassigned_warn_s)
            self._assignment = _Assignment(self, consumer, wait)
            consumer.subscribe([self._typing.crm_topic], listener=self._assignment)
            self._consumer = consumer
            delivering = self._deliver_until_stopped(consumer, stop, dead_letters)
            if not await within_grace(delivering, stop, self._config.stop_grace_s):
                log.warning(
                    "the CRM endpoint or the Kafka cluster did not answer within %.1fs of the"
                    " stop: leaving without the last commit (the records since the one before"
                    " are delivered again)",
                    self._config.stop_grace_s,
                )
        finally:
            self._consumer = None
            self._assignment = None
            closing = _stop(consumer, dead_letters)
            if not await within_grace(closing, stop, self._config.close_grace_s):
                log.warning(
                    "the Kafka cluster did not answer within %.1fs: left without leaving the"
                    " group (its partitions move once its session times out)",
                    self._config.close_grace_s,
                )

    async def _start(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        """Connect both clients, then check the topics as `run`'s start-up does
        (`TopicError` otherwise). With `TYPING_CREATE_TOPICS` off, the CRM topic and the
        DLQ must exist: subscribed to a CRM topic that does not, the worker would be ready
        and deliver nothing, and a dead letter would restart delivery for good. The DLQ
        must take the largest dead letter: one refused for its size would restart delivery
        from the last commit for good, posting again what was accepted since (a limit the
        cluster does not report is not checked)."""
        await consumer.start()
        await producer.start()
        if not self._typing.create_topics:
            topics = await consumer.topics()
            for name in (self._typing.crm_topic, self._typing.dlq_topic):
                if name not in topics:
                    raise TopicError(f"topic {name} does not exist (TYPING_CREATE_TOPICS is off)")
        dlq = self._typing.dlq_topic
        configs = await topic_configs(self._kafka, [dlq])
        check_dlq_message_bytes(dlq, configs.get(dlq, {}))

    async def _deliver_until_stopped(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event, dead_letters: AIOKafkaProducer
    ) -> None:
        """Fetch until `stop` is set, each partition's batch delivered and committed by a
        task of its own (`_deliver_batch`); then wait for the tasks (they give up once
        stopped) and commit what they delivered."""
        self._delivered.clear()
        try:
            while not stop.is_set():
                self._raise_a_failed_delivery()
                try:
                    batch = await self._fetch(consumer)
                except Exception as exc:
                    if not is_undecodable(exc):
                        raise  # the cluster's trouble: `run` restarts from the commit
                    await self._set_aside_undecodable(consumer, exc, stop, dead_letters)
                    continue
                for tp, records in batch.items():
                    partition = self._partitions[tp] = _Partition(self._clock.now_ms())
                    self._launch(consumer, tp, [records], stop, dead_letters, partition)
            await asyncio.gather(*self._tasks.values())
            await self._commit(consumer, consumer.assignment())
        finally:
            # (a lost cluster, or the stop's grace over: no delivery outlives the clients)
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()
            self._partitions.clear()

    async def _fetch(
        self, consumer: AIOKafkaConsumer
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """The next fetch; while it waits (for the group's rebalance to end, however long
        that takes), how long the worker has waited for an assignment is looked at
        (`AssignmentWait.watch`)."""
        fetch: asyncio.Future[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]
        fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=500, max_records=500))
        try:
            if self._assignment is not None:
                await self._assignment.wait.watch(fetch)
            return await fetch
        finally:
            fetch.cancel()  # (this one cancelled: a stop's grace over, a lost cluster)

    def _raise_a_failed_delivery(self) -> None:
        """Raise what ended a delivery task (the cluster's trouble: `run` restarts), and
        forget the tasks that are done."""
        for tp, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[tp]
                task.result()

    def _launch(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        items: list[list[ConsumerRecord[bytes, bytes]] | Undecodable],
        stop: asyncio.Event,
        dead_letters: AIOKafkaProducer,
        partition: _Partition,
    ) -> None:
        """Pause `tp` and deliver its `items` by a task of its own (`_deliver_batch`);
        `partition` is known in `_partitions` already, so that a revocation before the task
        starts stops it."""
        # not fetched again until delivered: one batch of a partition at a time
        consumer.pause(tp)
        delivery = self._deliver_batch(
            consumer, tp, items, stop, dead_letters, partition, self._tasks.get(tp)
        )
        self._tasks[tp] = asyncio.create_task(delivery)

    async def _deliver_batch(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        items: list[list[ConsumerRecord[bytes, bytes]] | Undecodable],
        stop: asyncio.Event,
        dead_letters: AIOKafkaProducer,
        partition: _Partition,
        earlier: asyncio.Task[None] | None,
    ) -> None:
        """Deliver the `items` of paused `tp` in order (runs of records, and records the
        client could not decode, set aside on the DLQ), commit after each and resume it,
        unless stopped or revoked first (what was delivered is then committed by the stop,
        or handed over). `earlier`: the partition's previous delivery, revoked and given
        it back since, which may still be ending: waited for (and its failure raised),
        never two POSTs of a partition at once."""
        try:
            if earlier is not None:
                await earlier
            for item in items:
                if stop.is_set() or partition.revoked.is_set():
                    return
                if isinstance(item, Undecodable):
                    await self._set_aside(tp, item, dead_letters, partition)
                else:
                    await self._deliver_all(consumer, item, stop, dead_letters, partition)
                if stop.is_set() or partition.revoked.is_set():
                    return
                await self._commit(consumer, {tp})
            # a revocation during the commit may have given the partition back to a newer
            # delivery, which resumes it itself once its records are delivered
            if tp in consumer.assignment() and not partition.revoked.is_set():
                consumer.resume(tp)
        finally:
            if self._partitions.get(tp) is partition:
                del self._partitions[tp]

    async def _set_aside(
        self,
        tp: TopicPartition,
        item: Undecodable,
        dead_letters: AIOKafkaProducer,
        partition: _Partition,
    ) -> None:
        """Put a record the client could not decode on the DLQ, and note it as delivered:
        committed past, it is set aside once, not again after a restart."""
        partition.idle.clear()
        try:
            await self._dead_letter(
                item.record, DlqReason.UNDECODABLE_RECORD, item.detail, dead_letters
            )
            self._note_delivered(tp, partition, item.offset + 1)
        finally:
            partition.idle.set()

    def _note_delivered(self, tp: TopicPartition, partition: _Partition, end: int) -> None:
        """Note `end` as the offset to commit of `tp`, unless its hand-over gave up waiting
        for the record and is over: that offset belongs to an assignment that ended, and
        committed later (the partition given back) it would take back what its next owner
        committed meanwhile."""
        if not partition.handed_over:
            self._delivered[tp] = end

    async def _commit(self, consumer: AIOKafkaConsumer, owned: set[TopicPartition]) -> None:
        """Commit what was delivered of the partitions in `owned`.

        A commit the group refuses because it rebalanced without this member
        (`CommitFailedError`) is not the cluster's trouble: only logged, never a restart,
        which in a rolling update would make every member rejoin and rebalance the group
        again. The client rejoins at once, and the revocation that comes first hands every
        partition over (`_hand_over`): what was delivered of a partition is dropped there
        uncommitted, and whoever owns it next (this worker again, or another) delivers it
        again from the last commit."""
        offsets = {tp: end for tp, end in self._delivered.items() if tp in owned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError:
            log.warning(
                "commit of delivered CRM records of %s refused: the group rebalanced without"
                " this member, which rejoins (whoever owns them next delivers them again)",
                ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(offsets)),
            )
            return
        for tp in offsets:
            self._delivered.pop(tp, None)

    async def _hand_over(self, consumer: AIOKafkaConsumer, revoked: list[TopicPartition]) -> None:
        """A rebalance takes `revoked` away (and may give some back): their delivery stops
        after the post out, and what was delivered of them is committed now, while the
        group still counts this member, so that their next owner (this worker again, or
        another) starts where delivery stopped, not at the last batch's commit. Posting on
        meanwhile would deliver what the next owner delivers too, out of order with it."""
        gone = set(revoked)
        ending = [self._partitions[tp] for tp in gone if tp in self._partitions]
        for partition in ending:
            partition.revoked.set()
        if ending:
            log.info(
                "CRM partitions revoked (%s): handed over once the records in hand are done",
                ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(gone)),
            )
        try:
            # the records in hand, if any: a POST at most its timeout (no retry follows a
            # revocation), or a dead letter's acknowledgement
            async with asyncio.timeout(self._config.timeout_s + _HAND_OVER_MARGIN_S):
                for partition in ending:
                    await partition.idle.wait()
            await self._commit(consumer, gone)
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "delivered CRM records of revoked partitions not committed (%r): their next"
                " owner delivers them again",
                exc,
            )
        for partition in ending:
            partition.handed_over = True
        for tp in gone:
            self._delivered.pop(tp, None)

    async def _set_aside_undecodable(
        self,
        consumer: AIOKafkaConsumer,
        exc: Exception,
        stop: asyncio.Event,
        dead_letters: AIOKafkaProducer,
    ) -> None:
        """A fetch raised on a record the client cannot decode (`is_undecodable`). Each
        partition goes back to its commit (the fetch may have skipped records it never
        returned) and is read record by record (see `runtime.undecodable`); what was read
        of a partition is then delivered by a task of its own, as a fetched batch is: what
        can be read posted, what cannot put on the DLQ, each committed as it goes. Only
        the reading holds the fetches, never a POST: a record the endpoint holds on one
        partition holds no other."""
        log.warning(
            "a fetch failed on a record the client cannot decode (%r); reading past it", exc
        )
        # every partition from its commit (Kafka's errors propagate: `run` restarts)
        owned = sorted(consumer.assignment() - consumer.paused())
        # known for the whole search: a partition revoked meanwhile (perhaps given back) is
        # read no further, and what was read of it is not delivered (its next owner reads
        # it again from the commit)
        searched = {tp: _Partition(self._clock.now_ms()) for tp in owned}
        self._partitions.update(searched)
        read: dict[TopicPartition, list[list[ConsumerRecord[bytes, bytes]] | Undecodable]] = {}
        try:
            search = read_past_undecodable(
                consumer,
                self._kafka,
                dict.fromkeys(owned, None),
                lambda tp: not searched[tp].revoked.is_set(),
            )
            async with aclosing(search):
                async for tp, item in search:
                    read.setdefault(tp, []).append(item)
        except BaseException:
            read.clear()  # the cluster's trouble: `run` restarts from the commits
            raise
        finally:
            for tp, partition in searched.items():
                if tp in read and not partition.revoked.is_set():
                    self._launch(consumer, tp, read[tp], stop, dead_letters, partition)
                elif self._partitions.get(tp) is partition:
                    del self._partitions[tp]

    async def _deliver_all(
        self,
        consumer: AIOKafkaConsumer,
        records: list[ConsumerRecord[bytes, bytes]],
        stop: asyncio.Event,
        dead_letters: AIOKafkaProducer,
        partition: _Partition,
    ) -> None:
        """Deliver `records` (of one partition) in order, noting each in `_delivered`, and
        committing what was delivered once `TYPING_COMMIT_INTERVAL_MS` has passed since the
        last commit (a slow endpoint), until stopped or revoked."""
        interval_ms = self._typing.commit_interval_ms
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if partition.revoked.is_set():
                break  # its next owner delivers the rest
            partition.idle.clear()
            try:
                if not await self._deliver(consumer, record, stop, dead_letters, partition):
                    break  # stopping, or revoked: leave the rest uncommitted
                self._note_delivered(tp, partition, record.offset + 1)
            finally:
                partition.idle.set()
            if self._clock.now_ms() - partition.committed_ms >= interval_ms:
                await self._commit_progress(consumer, tp, partition)

    async def _commit_progress(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, partition: _Partition
    ) -> None:
        """Commit what was delivered of `tp` in the middle of its delivery (a record held, a
        slow endpoint), unless revoked (the hand-over commits it). A failure is only logged:
        what was delivered stays noted, for the batch's commit or the hand-over."""
        if partition.revoked.is_set() or tp not in self._delivered:
            return
        partition.committed_ms = self._clock.now_ms()
        try:
            await self._commit(consumer, {tp})
        except KafkaError as exc:
            log.warning(
                "delivered CRM records of %s/%d not committed yet (%r): committed with the"
                " rest of their batch",
                tp.topic,
                tp.partition,
                exc,
            )

    async def _post(self, value: bytes, headers: dict[str, str]) -> tuple[int, float | None]:
        """POST one record: the answer's status, and the wait its `Retry-After` asks for
        (429 and 503 only). The whole exchange gets the timeout, not each read (a body
        that trickles would hold delivery), and at most `_MAX_BODY` bytes of the answer
        are read (a huge one would exhaust the worker's memory on every retry).

        The status decides: a body that times out or breaks off after it changes nothing
        (the body is read only so that the connection can serve the next POST): a 2xx
        whose body never ends is delivered, not posted again for as long as the endpoint
        answers so."""
        status: int | None = None
        asked = None
        try:
            async with (
                asyncio.timeout(self._config.timeout_s),
                self._http.stream(
                    "POST", self._config.url, content=value, headers=headers
                ) as answer,
            ):
                status = answer.status_code
                if status in (429, 503):
                    asked = retry_after_s(answer.headers, self._clock.now_ms())
                read = 0
                async for chunk in answer.aiter_raw():
                    read += len(chunk)
                    if read > _MAX_BODY:
                        break  # the connection is closed, not reused
        except (TimeoutError, httpx.HTTPError):
            if status is None:
                raise  # no answer
        return status, asked

    async def _post_unless_stopped(
        self, value: bytes, headers: dict[str, str], stop: asyncio.Event
    ) -> tuple[int, float | None] | None:
        """`_post`, or None when `stop` has been set for `post_grace_s` before the answer
        came: a hung endpoint must not cost the commit of the records accepted before."""
        answer: tuple[int, float | None] | None = None

        async def post() -> None:
            nonlocal answer
            answer = await self._post(value, headers)

        await within_grace(post(), stop, self._config.post_grace_s)
        return answer

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        reason: DlqReason,
        detail: str,
        producer: AIOKafkaProducer,
    ) -> None:
        """Put `record` on the DLQ with its original bytes, and wait for its ack: a record
        that is no CRM-sync record, or one the endpoint refused (`DlqReason.CRM_REFUSED`)."""
        letter = dead_letter_of(record, reason, detail, self._clock.now_ms())
        await producer.send_and_wait(
            self._typing.dlq_topic, letter.to_bytes(), key=letter.record_key()
        )
        refused = reason is DlqReason.CRM_REFUSED
        if refused:
            self.counters.refused += 1
        else:
            self.counters.dead_letters += 1
        # the first of a partition's letters for a reason, then a count of them a minute:
        # a producer of nothing but bad records does not flood the log (the DLQ has each)
        log.error(
            "%s at %s/%d offset %d (%s): sent to %s with its bytes",
            "refused for good" if refused else "not a CRM-sync record",
            record.topic,
            record.partition,
            record.offset,
            detail,
            self._typing.dlq_topic,
            extra=throttled(record.topic, record.partition, reason),
        )

    async def _deliver(
        self,
        consumer: AIOKafkaConsumer,
        record: ConsumerRecord[bytes, bytes],
        stop: asyncio.Event,
        dead_letters: AIOKafkaProducer,
        partition: _Partition,
    ) -> bool:
        """POST one record until accepted or refused; False if stopped before either. With
        telemetry on, the record's span is the current one meanwhile (log lines name its
        trace) and ends with what became of the record, whatever ends its delivery."""
        if record.value is None:
            return True  # a tombstone: nothing to deliver
        event_id = _event_id(record.value)
        if self._tracing is None:
            outcome = await self._deliver_record(
                consumer, record, event_id, stop, dead_letters, partition, None
            )
            return outcome is not _Outcome.GIVEN_UP
        traced = self._tracing.start(record, event_id if isinstance(event_id, str) else None)
        outcome = _Outcome.GIVEN_UP  # unless delivery ends: cancelled, or the DLQ failed
        token = otel_context.attach(traced.context)
        try:
            outcome = await self._deliver_record(
                consumer, record, event_id, stop, dead_letters, partition, traced
            )
        finally:
            otel_context.detach(token)
            if outcome is _Outcome.REFUSED:
                traced.end(outcome.value, DlqReason.CRM_REFUSED.value)
            elif outcome is _Outcome.DEAD_LETTER and isinstance(event_id, tuple):
                traced.end(outcome.value, event_id[0].value)
            else:
                traced.end(outcome.value)
        return outcome is not _Outcome.GIVEN_UP

    async def _deliver_record(
        self,
        consumer: AIOKafkaConsumer,
        record: ConsumerRecord[bytes, bytes],
        event_id: str | tuple[DlqReason, str],
        stop: asyncio.Event,
        dead_letters: AIOKafkaProducer,
        partition: _Partition,
        traced: RecordSpan | None,
    ) -> _Outcome:
        """`_deliver` of a record that is not a tombstone; `event_id` as `_event_id` read it,
        `traced` the record's span (None: telemetry off), to which each POST adds its own."""
        if isinstance(event_id, tuple):
            await self._dead_letter(record, *event_id, dead_letters)
            return _Outcome.DEAD_LETTER
        headers = {"Content-Type": "application/json", "Idempotency-Key": event_id}
        if self._config.authorization is not None:
            headers["Authorization"] = self._config.authorization.get_secret_value()
        attempt = 0
        tp = TopicPartition(record.topic, record.partition)
        try:
            while not stop.is_set() and not partition.revoked.is_set():
                post, sent = (None, headers) if traced is None else traced.start_post(headers)
                # until an answer or an exception says otherwise: abandoned (stop, cancel)
                status: int | None = None
                error, detail = "cancelled", "given up before an answer"
                certificate: str | None = None  # what is wrong with it, if it was refused
                try:
                    posted = await self._post_unless_stopped(record.value, sent, stop)
                    if posted is None:
                        log.warning(
                            "stopped while the CRM endpoint held the post of %s: given up after"
                            " %.1fs (delivered again)",
                            event_id,
                            self._config.post_grace_s,
                        )
                        return _Outcome.GIVEN_UP
                    status, asked = posted
                except httpx.HTTPError as exc:
                    # (what the library says: a certificate refused, a name not found; the
                    # log formatter and the span mask any credential in it)
                    reason = str(exc).strip()
                    error = type(exc).__name__
                    detail = f"{error}: {reason}" if reason else error
                    certificate = _certificate_problem(exc, self._config.ca_file)
                    asked = None
                except TimeoutError:
                    asked, error, detail = None, "TimeoutError", "no answer in time"
                else:
                    detail = f"HTTP {status}"
                finally:
                    if post is not None and traced is not None:
                        if status is None:
                            traced.failed(post, error, detail)
                        else:
                            traced.answered(post, status)
                answer = _Answer.ENDPOINT_WRONG if certificate else _answer(status)
                if answer is _Answer.ACCEPTED:
                    self.counters.delivered += 1
                    return _Outcome.DELIVERED
                if answer is _Answer.REFUSED:
                    # The record's own fault: retrying would block every later record. Kept
                    # with its bytes all the same: an endpoint that refuses every record with
                    # 400 (plain HTTP sent to an HTTPS port) must not lose the stream.
                    await self._dead_letter(
                        record,
                        DlqReason.CRM_REFUSED,
                        f"CRM endpoint answered {detail}",
                        dead_letters,
                    )
                    return _Outcome.REFUSED
                attempt += 1
                self.counters.retries += 1
                self._held_since_ms.setdefault(tp, self._clock.now_ms())
                # `attempt` counts from 1: the first retry waits up to 0.4 s, as it always did
                delay = self._backoff.delay(attempt)
                if asked is not None:
                    delay = max(delay, min(asked, _MAX_RETRY_AFTER_S))  # as the endpoint asks
                if certificate is not None:
                    log.error(
                        "%s: delivery is held at %s, retry in %.1fs", certificate, event_id, delay
                    )
                elif answer is _Answer.ENDPOINT_WRONG:
                    log.error(
                        "CRM endpoint answers %s, which no record can pass (wrong URL, expired"
                        " credential?): delivery is held at %s, retry in %.1fs",
                        detail,
                        event_id,
                        delay,
                    )
                else:
                    log.warning(
                        "CRM delivery of %s failed (%s); retry in %.1fs", event_id, detail, delay
                    )
                if attempt == 1:
                    # held: what was accepted before it is not posted again after a crash
                    await self._commit_progress(consumer, tp, partition)
                await wait_unless_stopped(stop, delay, partition.revoked)
            return _Outcome.GIVEN_UP
        finally:
            self._held_since_ms.pop(tp, None)  # accepted, refused or given up: held no more


async def _stop(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
    """Leave the group and close both clients."""
    await consumer.stop()
    await producer.stop()


def _event_id(value: bytes) -> str | tuple[DlqReason, str]:
    """A CRM-sync record's `event_id`, or why the value is no CRM-sync record (not JSON, not
    an object, not valid as `CrmSyncRecord`: an input event or an audit record written to
    the topic by mistake), or why its `event_id` cannot go out as the `Idempotency-Key`."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return DlqReason.INVALID_JSON, f"not JSON: {exc}"
    if not isinstance(body, dict):
        return DlqReason.NOT_AN_OBJECT, f"a JSON {json_kind(body)}, not an object"
    try:
        crm = CrmSyncRecord.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        return reason_for(errors[0]), f"not a CRM-sync record: {describe_errors(errors)}"
    event_id = crm.event_id
    if not _HEADER_SAFE.fullmatch(event_id):
        # (a header with a CR/LF or beyond ASCII cannot be sent: held for ever, or a crash)
        return DlqReason.INVALID_FIELD, "event_id cannot be an Idempotency-Key header"
    return event_id
