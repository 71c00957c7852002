"""`typing-processor run`: the consumer group, partition ownership and the commit loop."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from processor.budget import partition_share
from processor.clock import Clock, SystemClock, within_grace
from processor.settings import Settings
from processor.state import EngineConfig, PartitionStore
from processor.telemetry import Telemetry
from processor.telemetry.http import MAX_FAILURE_CHARS

from .assignment import UNASSIGNED_WARN_S, AssignmentWait
from .kafka import (
    BrokerCheck,
    TopicError,
    TopicSpec,
    check_dlq_message_bytes,
    client_options,
    ensure_topics,
    topic_configs,
)
from .lease import MembershipLease
from .outbound import Outbound
from .partition import Counters, PartitionWorker
from .reconciler import Reconciler, Sink
from .recordbatch import Undecodable
from .restore import RestoreProgress, read_changelog
from .scheduler import Scheduler
from .undecodable import is_undecodable, read_past_undecodable

log = logging.getLogger(__name__)

REVOKE_GRACE_S = 5.0
# Leaving (or restarting): release the partitions (calls land within the revoke grace, the
# last flush and commit), then close the clients; a cluster that does not answer by then is
# given up on.
CLOSE_S = REVOKE_GRACE_S + 1.0
MAX_BACKLOG = 64
# The group's liveness: a member silent for the session timeout loses its partitions.
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_INTERVAL_MS = 1_000
# How long to wait for a partition's position: a known one comes at once, one being reset
# is asked for again in the next round rather than hold the consume loop.
POSITION_WAIT_S = 0.1
# Calls stop once the group has accepted no commit for the session timeout less two
# heartbeats (the last heartbeat may have come a heartbeat before the commit; the other is
# the margin for a call decided just before); a commit every heartbeat keeps the lease fresh.
LEASE_TERM_S = (SESSION_TIMEOUT_MS - 2 * HEARTBEAT_INTERVAL_MS) / 1000
LEASE_RENEW_S = HEARTBEAT_INTERVAL_MS / 1000
# How long the group waits for a member to finish its revoke and rejoin: the calls' grace,
# the last flush and the commit (at most a lease term), with room for the flush's acks. A
# member slower than this is dropped from the group while it still revokes: its partitions
# would go to another member while its last calls and changelog records went out (I4, I6).
# (aiokafka's default is the session timeout, shorter than a revoke can take.)
REBALANCE_TIMEOUT_MS = int((REVOKE_GRACE_S + LEASE_TERM_S + 3.0) * 1000)
# A restored partition's new sets and refreshes wait for the input since its last commit
# to be processed again (see `PartitionStore.hold_for_replay`), at most this long: a slow
# or empty fetch holds typing no longer.
REPLAY_HOLD_MS = 2_000
# How long a restore may wait for the input partition's committed and end offsets (asked
# while the changelog is read); not known by then, the hold lasts its bound.
REPLAY_LOOKUP_S = 1.0


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """One owned partition as the metrics see it."""

    partition: int
    tracked_sessions: int
    queued_work: int
    in_flight: int
    lag: int | None


@dataclass(frozen=True, slots=True)
class RestoreStats:
    """One partition whose store is being restored, as readiness and the metrics see it."""

    partition: int
    seconds: float
    """Since the partition was assigned (retries of a failed read included)."""
    records: int
    """Changelog records read so far."""
    remaining: int | None
    """Changelog offsets left to read, once the end is known."""


@dataclass(slots=True)
class _Restoring:
    started: float
    progress: RestoreProgress


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: TypingProcessor) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._service.release(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._service.acquire(list(assigned))


class TypingProcessor:
    """Consumes typing events in a group and keeps Genesys in step, partition by partition."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        *,
        clock: Clock | None = None,
        on_applied: Callable[[str, int], None] | None = None,
        telemetry: Telemetry | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        unassigned_warn_s: float = UNASSIGNED_WARN_S,
    ) -> None:
        """`unassigned_warn_s`: how long the member may wait for the group to assign it
        partitions before it says so (see `AssignmentWait`)."""
        self.settings = settings
        self.telemetry = telemetry or Telemetry.disabled()
        self._clock = clock or SystemClock()
        self._options = client_options(settings.kafka)
        self._outbound = Outbound(settings.kafka, settings.typing)
        self.lease = MembershipLease(LEASE_TERM_S, LEASE_RENEW_S, monotonic)
        self._monotonic = monotonic
        self._unassigned = AssignmentWait(
            settings.typing.group_id, monotonic, warn_after_s=unassigned_warn_s
        )
        # The scheduler takes no work while the lease has lapsed; the sink sends no request
        # either, retries included: a call planned under the lease may wait for its
        # intent's acknowledgement, or back off, through a stall.
        sink.hold_while(self._unconfirmed)
        self._reconciler = Reconciler(sink, settings.typing.max_in_flight)
        self._budget = sink.budget
        self.scheduler = Scheduler(
            self._reconciler,
            self._clock,
            on_wait=self.telemetry.record_budget_wait,
            held=self._unconfirmed,
        )
        self._engine = EngineConfig.from_settings(settings.typing)
        self.counters = Counters()
        self._on_applied = on_applied
        self.workers: dict[int, PartitionWorker] = {}
        self._committed: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._scheduling: asyncio.Task[None] | None = None
        self.assigned = False
        self._stopping = False
        # partitions being restored now: since when, and how far their read has come
        self._restores: dict[int, _Restoring] = {}
        # one per restore not settled yet (a partition assigned again while its previous
        # restore ends has two)
        self._settling: set[asyncio.Future[None]] = set()
        self._ready = asyncio.Event()
        self._broker = BrokerCheck()
        self._outbound_topics = {
            "crm": settings.typing.crm_topic,
            "audit": settings.typing.audit_topic,
            "dlq": settings.typing.dlq_topic,
        }

    def _unconfirmed(self) -> bool:
        """True while the group has not confirmed this member lately (see `lease`)."""
        return self.lease.left() <= 0

    @property
    def ready(self) -> bool:
        """Partitions assigned and restored: input is being processed."""
        return self.assigned and not self._settling and self.problem is None

    @property
    def problem(self) -> str | None:
        """Why a partition stopped committing, or the scheduler stopped planning, if one
        did (readiness says so; the processor restarts from the last commit)."""
        scheduling = self._scheduling
        if scheduling is not None and scheduling.done() and not scheduling.cancelled():
            error = scheduling.exception()
            # (it never returns by itself: without it, queued clears would wait for ever)
            return f"the scheduler stopped: {error!r}"[:MAX_FAILURE_CHARS]
        for partition, worker in self.workers.items():
            failed = worker.failed
            if failed is not None:
                return (
                    f"partition {partition} stopped committing (nothing is skipped):"
                    f" {type(failed).__name__}: {failed}"
                )[:MAX_FAILURE_CHARS]
        return None

    def unassigned(self) -> str | None:
        """While the member waits for the group to assign it partitions: for how long, and
        past `unassigned_warn_s` what that means (the `/readyz` reason)."""
        return self._unassigned.reason()

    async def wait_ready(self) -> None:
        """Return once the processor is ready (see `ready`)."""
        await self._ready.wait()

    @property
    def restoring(self) -> int:
        """Partitions whose store is being restored now."""
        return len(self._settling)

    def restores(self) -> list[RestoreStats]:
        """Every partition being restored now, by partition."""
        now = self._monotonic()
        return [
            RestoreStats(
                partition,
                now - restoring.started,
                restoring.progress.records,
                restoring.progress.remaining,
            )
            for partition, restoring in sorted(self._restores.items())
        ]

    async def broker_reachable(self) -> bool:
        """True when the Kafka cluster answered a metadata request lately (see `BrokerCheck`)."""
        return await self._broker.reachable(self._consumer)

    def partition_stats(self) -> list[PartitionStats]:
        """Sessions, queued and running calls, and lag of every owned partition."""
        consumer = self._consumer
        topic = self.settings.typing.input_topic
        stats = []
        for partition, worker in list(self.workers.items()):
            if not worker.restored.is_set():
                continue
            store = worker.store
            lag = None
            position = worker.position
            if consumer is not None and position is not None:
                tp = TopicPartition(topic, partition)
                try:
                    highwater = consumer.highwater(tp)
                except AssertionError:  # revoked meanwhile
                    highwater = None
                if highwater is not None:
                    lag = max(0, highwater - position)
            stats.append(
                PartitionStats(
                    partition, store.tracked_sessions, store.queued_work, store.in_flight, lag
                )
            )
        return stats

    def _update_ready(self) -> None:
        if self.ready:
            self._ready.set()
        else:
            self._ready.clear()

    async def prepare_topics(self) -> None:
        """Create missing topics (unless turned off)."""
        typing = self.settings.typing
        if typing.create_topics:
            await ensure_topics(
                self.settings.kafka,
                [
                    TopicSpec(typing.input_topic),
                    TopicSpec(typing.crm_topic),
                    TopicSpec(typing.audit_topic),
                    TopicSpec(typing.dlq_topic),
                    TopicSpec(typing.resolved_changelog_topic, compacted=True),
                ],
                typing.topic_partitions,
                typing.topic_replication_factor,
            )

    async def _check_topics(self, consumer: AIOKafkaConsumer) -> None:
        """Every topic read or written exists, the changelog fits the input, and the DLQ
        takes the largest dead letter (as far as the cluster reports configs). A topic
        written (the DLQ above all) is checked too: missing, it would fail only at its first
        record, a dead letter that cannot be written stopping its partition for good."""
        typing = self.settings.typing
        topics = await consumer.topics()
        for name in (
            typing.input_topic,
            typing.resolved_changelog_topic,
            typing.crm_topic,
            typing.audit_topic,
            typing.dlq_topic,
        ):
            if name not in topics:
                raise TopicError(f"topic {name} does not exist (TYPING_CREATE_TOPICS is off)")
        inputs = consumer.partitions_for_topic(typing.input_topic) or set()
        changelog = consumer.partitions_for_topic(typing.resolved_changelog_topic) or set()
        if not inputs <= changelog:
            raise TopicError(
                f"changelog {typing.resolved_changelog_topic} has {len(changelog)} partitions,"
                f" fewer than the {len(inputs)} of {typing.input_topic}"
            )
        configs = await topic_configs(
            self.settings.kafka, [typing.resolved_changelog_topic, typing.dlq_topic]
        )
        # Not compacted, the changelog keeps every change until its retention: each restore
        # reads all of it (hours, at a busy partition's rate) while clears wait (I1).
        policy = configs.get(typing.resolved_changelog_topic, {}).get("cleanup.policy")
        if policy is not None and "compact" not in policy.replace(" ", "").split(","):
            raise TopicError(
                f"changelog {typing.resolved_changelog_topic} has cleanup.policy={policy}:"
                " it must be compacted (cleanup.policy=compact); each restore would read"
                " every change it holds"
            )
        check_dlq_message_bytes(typing.dlq_topic, configs.get(typing.dlq_topic, {}))

    async def run(self, stop: asyncio.Event) -> None:
        """Process until `stop` is set, then drain, commit and return."""
        self._stopping = False
        consumer = AIOKafkaConsumer(
            **self._options,
            client_id=f"{self.settings.kafka.client_id}-consumer",
            group_id=self.settings.typing.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=self.settings.kafka.isolation_level.value,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
            max_poll_interval_ms=60_000,
            # Some brokers (Tansu among them) answer a waiting fetch only at its deadline:
            # this bounds how long a new event can sit on the broker before we see it.
            fetch_max_wait_ms=self.settings.typing.fetch_max_wait_ms,
        )
        started = False
        try:
            # a stop during start-up (the cluster slow or not answering) ends it at once
            await within_grace(self._start(consumer), stop, 0.0)
            started = not stop.is_set()
        finally:
            if not started:
                # a cluster down at start, or a stop: close what was opened, or every
                # restart leaks it
                self._consumer = None
                await consumer.stop()
                await self._outbound.stop()
        if not started:
            return
        self.telemetry.observe(self)
        scheduling = self._scheduling = asyncio.create_task(self.scheduler.run(), name="scheduler")
        try:
            await self._check_topics(consumer)
            self._unassigned.waiting()
            consumer.subscribe([self.settings.typing.input_topic], listener=_Rebalance(self))
            await self._consume(consumer, stop)
        finally:
            self._stopping = True
            self._unassigned.stopped()
            restarting = not stop.is_set()
            try:
                # A cluster that stopped answering would hold each step of the release for
                # its request timeout: neither the stop (10 s, DESIGN §5) nor a restart
                # waits for that.
                async with asyncio.timeout(CLOSE_S):
                    await self._close(consumer, clients=not restarting)
            except TimeoutError:
                log.warning(
                    "the cluster did not answer within %.1f s: leaving without the last"
                    " flush and commit (input since the one before is processed again)",
                    CLOSE_S,
                )
            if restarting:
                # (a partition or the scheduler stopped, say) The clients are closed however
                # long the cluster takes: a consumer left open stays a member of the group,
                # its heartbeats going on, and keeps its share of the partitions, read by
                # nobody, from every other member (the restart's among them) until its poll
                # interval runs out. A stop meanwhile still ends `run` in time (its caller's
                # grace).
                await consumer.stop()
                await self._outbound.stop()
            scheduling.cancel()
            await asyncio.gather(scheduling, return_exceptions=True)
            self._scheduling = None
            await self._reconciler.aclose()
            self._consumer = None
            self.telemetry.forget(self)

    async def _close(self, consumer: AIOKafkaConsumer, *, clients: bool) -> None:
        """Release every partition, then close the clients when `clients` (else the caller
        does: a consumer's close cut short by a timeout cannot be done again)."""
        # every worker, not only the consumer's assignment: a partition being assigned when
        # the stop came has a worker (restoring) and no assignment entry yet; and no new
        # one from a rebalance still under way
        input_topic = self.settings.typing.input_topic
        await self.release([TopicPartition(input_topic, p) for p in list(self.workers)])
        if clients:
            await consumer.stop()
            await self._outbound.stop()

    async def _start(self, consumer: AIOKafkaConsumer) -> None:
        await self.prepare_topics()
        await self._outbound.start()
        self._consumer = consumer
        await consumer.start()

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval_s = self.settings.typing.commit_interval_ms / 1000
        next_commit = loop.time() + interval_s
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=200, max_records=2_000))
                await self._unassigned.watch(fetch, stopping)
                if not fetch.done():
                    fetch.cancel()
                    await asyncio.gather(fetch, return_exceptions=True)
                    break
                try:
                    batches = fetch.result()
                except Exception as exc:
                    if not is_undecodable(exc):  # the cluster's trouble: fetch again
                        log.warning("fetch failed, retrying: %s", exc)
                        continue
                    # What the search hands on is committed as any input: while every
                    # fetch meets such a record, no commit (nor the lease it renews) may
                    # wait for one that does not.
                    await self._set_aside_undecodable(consumer, exc)
                    batches = {}
                for tp, records in batches.items():
                    worker = self.workers.get(tp.partition)
                    # no worker: revoked meanwhile; its next owner starts from the commit
                    if worker is not None and records:
                        worker.submit(records)
                await self._pass_over_non_records(consumer)
                self._apply_backpressure(consumer)
                self._raise_if_failed()
                if loop.time() >= next_commit or self.lease.renewal_due():
                    # a stop leaves it to the last commit, on the way out
                    await within_grace(self.commit(), stop, 0.0)
                    next_commit = loop.time() + interval_s
                    # A commit that renewed the lease ends the hold: the partitions paused
                    # for it are fetched from now, not once the next fetch has waited its
                    # whole timeout with every partition paused.
                    self._apply_backpressure(consumer)
        finally:
            stopping.cancel()

    async def _set_aside_undecodable(self, consumer: AIOKafkaConsumer, exc: Exception) -> None:
        """A fetch raised on a record the client cannot decode (`is_undecodable`). Each
        partition goes back to what its worker was given (the fetch may have skipped
        records it never returned) and is read record by record: what can be read is
        processed, what cannot goes to the DLQ (see `undecodable`)."""
        log.warning(
            "a fetch failed on a record the client cannot decode (%r); reading past it", exc
        )
        topic = self.settings.typing.input_topic
        owned = {
            tp: worker
            for tp in sorted(consumer.assignment() - consumer.paused())
            if tp.topic == topic and (worker := self.workers.get(tp.partition)) is not None
        }

        def current(tp: TopicPartition) -> bool:
            """Still assigned to the worker the search reads for."""
            return self.workers.get(tp.partition) is owned[tp]

        # Kafka's errors propagate from here: `run` restarts from the last commit, since a
        # partition may have been left past records the failed fetch never returned
        search = read_past_undecodable(
            consumer,
            self.settings.kafka,
            {tp: worker.resume_at() for tp, worker in owned.items()},
            current,
        )
        async with aclosing(search):
            async for tp, item in search:
                if not current(tp):
                    # Revoked meanwhile (perhaps given back, to a new worker): the search
                    # ends before it moves the position of an assignment that is not the
                    # one it read for; the next one starts from the new worker's place.
                    return
                if isinstance(item, Undecodable):
                    owned[tp].submit_undecodable(item)
                else:
                    owned[tp].submit(item)

    async def _pass_over_non_records(self, consumer: AIOKafkaConsumer) -> None:
        """Tell each worker where the consumer stands when that is past every record the
        worker was given (see `PartitionWorker.pass_to`). The consumer moves past a
        transaction's marker or an aborted transaction without handing out a record, and
        never past a record it has not handed out: the offsets in between hold nothing to
        process."""
        topic = self.settings.typing.input_topic
        for partition, worker in list(self.workers.items()):
            tp = TopicPartition(topic, partition)
            try:
                highwater = consumer.highwater(tp)
            except AssertionError:  # revoked meanwhile
                continue
            given = worker.resume_at()
            if highwater is None or (given is not None and given >= highwater):
                continue  # not fetched from yet, or given everything there is
            try:
                async with asyncio.timeout(POSITION_WAIT_S):
                    position = await consumer.position(tp)
            except (KafkaError, TimeoutError):  # revoked meanwhile, or being reset
                continue
            worker.pass_to(int(position))

    def _raise_if_failed(self) -> None:
        problem = self.problem
        if problem is not None:
            raise KafkaError(problem)

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        topic = self.settings.typing.input_topic
        for partition, worker in self.workers.items():
            tp = TopicPartition(topic, partition)
            # (a worker that writes nothing meanwhile would hold all it decides in memory)
            if worker.backlog > MAX_BACKLOG or worker.holding:
                consumer.pause(tp)
            elif worker.backlog < MAX_BACKLOG // 2 and tp in consumer.paused():
                consumer.resume(tp)

    async def commit(self) -> None:
        """Commit every partition's safe offset that moved since the last commit; when none
        did and the lease is due, one partition's again, to renew it (see `lease`)."""
        consumer = self._consumer
        if consumer is None:
            return
        topic = self.settings.typing.input_topic
        # whom the offsets are for: a commit still retrying when its partition is released
        # (and perhaps assigned again) must not leave its offset as the new worker's last
        # commit, which a renewal would commit again over a later one
        owners = dict(self.workers)
        offsets = {
            TopicPartition(topic, p): w.committable
            for p, w in owners.items()
            if w.committable is not None and w.committable != self._committed.get(p)
        }
        sent_at = self.lease.now()
        try:
            # no longer than the lease lasts, a renewal's lookups included: a commit or a
            # lookup that hangs (aiokafka retries them for as long as the coordinator or
            # the partition's leader is out of reach) would hold the consume loop
            async with asyncio.timeout(LEASE_TERM_S):
                if not offsets and self.lease.renewal_due():
                    offsets = await self._renewal_offset(consumer)
                if not offsets:
                    return
                await consumer.commit(offsets)
        except CommitFailedError:
            # The group has moved on without this member (its next heartbeat or poll
            # rejoins): another member may own these partitions already, and two owners
            # calling Genesys for one session would race. Nothing more goes out here
            # until the partitions are assigned again.
            log.warning(
                "commit refused: the group rebalanced without this member; no calls until"
                " the partitions are assigned again"
            )
            for worker in self.workers.values():
                worker.fence()
            self.lease.tried(sent_at)
            return
        except (KafkaError, TimeoutError) as exc:
            self.lease.tried(sent_at)
            log.warning("commit failed (will retry): %r", exc)
            return
        for tp, offset in offsets.items():
            owner = owners.get(tp.partition)
            if owner is not None and self.workers.get(tp.partition) is owner:
                self._committed[tp.partition] = offset
        if self.lease.renewed(sent_at):
            self.scheduler.poke()  # the calls held for the lapse may go now

    async def _renewal_offset(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """One owned partition's offset, committed again to renew the lease (the group checks
        the member and its generation whatever the partition). Only an offset that is safe
        to commit: the last one committed, else the group's own, else (none yet) the
        worker's first record, else (nothing read yet) where reading starts. Never where a
        worker's queue ends: records handed to a worker are not all processed yet. (Changes
        are written only once the group has confirmed the member, so the first commit of a
        new group cannot wait for a processed offset.)"""
        topic = self.settings.typing.input_topic
        for partition, offset in self._committed.items():
            if partition in self.workers:
                return {TopicPartition(topic, partition): offset}
        assigned = consumer.assignment()
        for partition, worker in list(self.workers.items()):
            tp = TopicPartition(topic, partition)
            if tp not in assigned:
                continue
            try:
                safe = await consumer.committed(tp)
                if safe is None:
                    safe = worker.first_offset
                if safe is None:
                    # (being reset: another partition renews, or the next round)
                    async with asyncio.timeout(POSITION_WAIT_S):
                        safe = await consumer.position(tp)
            except (KafkaError, TimeoutError) as exc:  # revoked meanwhile, the cluster's trouble
                log.debug("no offset to renew the lease with: %s", exc)
                continue
            if safe is not None:
                return {tp: safe}
        return {}

    async def acquire(self, assigned: list[TopicPartition]) -> None:
        """Start a worker for each new partition; each restores its store before input."""
        if self._stopping:
            return  # the consumer is leaving the group: its next owner takes over
        # (called for an empty assignment too: the group completed its rebalance)
        self._unassigned.assigned()
        topic = self.settings.typing.input_topic
        fresh = [tp.partition for tp in assigned if tp.topic == topic]
        fresh = [p for p in fresh if p not in self.workers]
        # Workers exist before the first await: the fetcher may hand out records of a
        # new partition before this listener returns, and they must queue, not vanish.
        for partition in fresh:
            self.workers[partition] = PartitionWorker(
                topic,
                partition,
                functools.partial(self._restore, partition),
                self._outbound,
                self._reconciler,
                self._clock,
                self.counters,
                flush_interval_ms=self.settings.typing.commit_interval_ms,
                on_ready=functools.partial(self.scheduler.attach, partition),
                on_queued=self.scheduler.plan_now,
                on_applied=self._on_applied,
                tracing=self.telemetry.partition_tracing(topic, partition, self._outbound_topics),
                held=self._unconfirmed,
            )
        self._share_budget(assigned)
        self.assigned = True
        # The listener returns at once: the group waits for it before the member may join
        # the next rebalance, so a long restore here held every member of the group (and
        # a member late to rejoin is dropped and restores again). Input fetched meanwhile
        # queues in the worker, paused by back-pressure; readiness waits for the restores.
        for partition in fresh:
            restoring = self._restores[partition] = _Restoring(self._monotonic(), RestoreProgress())
            # settled, not restored: a stop or a revocation may close a worker as it restores
            settling = asyncio.ensure_future(self.workers[partition].settled())
            self._settling.add(settling)
            settling.add_done_callback(
                functools.partial(self._restore_settled, partition, restoring)
            )
        self._update_ready()

    def _restore_settled(
        self, partition: int, restoring: _Restoring, settling: asyncio.Future[None]
    ) -> None:
        self._settling.discard(settling)
        # (the partition may have been assigned again meanwhile: that restore is its own)
        if self._restores.get(partition) is restoring:
            del self._restores[partition]
        self._update_ready()

    def _share_budget(self, assigned: list[TopicPartition]) -> None:
        """Spend the OAuth client's budget in proportion to the input partitions owned."""
        consumer = self._consumer
        typing = self.settings.typing
        topic = typing.input_topic
        partitions = consumer.partitions_for_topic(topic) if consumer is not None else None
        owned = {tp.partition for tp in assigned if tp.topic == topic} | set(self.workers)
        share, total = partition_share(owned, partitions, typing.topic_partitions)
        self._budget.set_share(share, total)
        if partitions:
            log.info("spending %d/%d of the OAuth client's API budget", share, total)
        else:
            log.warning(
                "the partition count of %s is unknown (no metadata for it): spending %d/%d"
                " of the OAuth client's API budget, taking the configured"
                " TYPING_TOPIC_PARTITIONS (%d) or the partitions owned as all of them",
                topic,
                share,
                total,
                typing.topic_partitions,
            )

    async def _restore(self, partition: int) -> PartitionStore:
        restoring = self._restores.get(partition)
        if restoring is None:  # (not assigned through `acquire`)
            restoring = _Restoring(self._monotonic(), RestoreProgress())
        progress = restoring.progress
        span = asyncio.ensure_future(self._replay_span(partition))
        try:
            records = await read_changelog(
                self._options,
                self.settings.typing.resolved_changelog_topic,
                partition,
                # the service's producer: no client of its own per restore
                write_barrier=functools.partial(self._outbound.barrier, partition),
                progress=progress,
            )
            start, end = await span
        finally:
            span.cancel()  # (the read failed, or the restore was cancelled)
        store = PartitionStore.restore(partition, self._engine, self._clock, records)
        if start is None or end is None or start < end:
            # Input since the last commit is processed again once the worker takes it: it
            # may end what the changelog still wants (a `stopped`), so new sets and
            # refreshes wait for it (clears and read-backs go at once, I1).
            store.hold_for_replay(end, self._clock.now_ms() + REPLAY_HOLD_MS)
        seconds = self._monotonic() - restoring.started
        log.info(
            "partition %d restored in %.3f s: %d changelog records read, %d sessions (and"
            " version floors) kept, %d sessions tracked",
            partition,
            seconds,
            progress.records,
            len(records),
            store.tracked_sessions,
        )
        self.telemetry.record_restore(partition, seconds, progress.records, store.tracked_sessions)
        # The restored sessions live long: keep them out of every later collection (a full
        # one over a million sessions costs a quarter second of the event loop). Garbage
        # first, or it is frozen too (what a collection looks at is what is not frozen yet:
        # about what the restore made).
        gc.collect()
        gc.freeze()
        return store

    async def _replay_span(self, partition: int) -> tuple[int | None, int | None]:
        """Where the input partition's replay starts (its committed offset, else its
        beginning) and where it ends (its end offset), as the partition is restored; None
        when not known (no answer within `REPLAY_LOOKUP_S`)."""
        consumer = self._consumer
        if consumer is None:
            return None, None
        tp = TopicPartition(self.settings.typing.input_topic, partition)
        answers: list[object]
        try:
            async with asyncio.timeout(REPLAY_LOOKUP_S):
                answers = await asyncio.gather(
                    consumer.committed(tp),
                    consumer.beginning_offsets([tp]),
                    consumer.end_offsets([tp]),
                    return_exceptions=True,
                )
        except TimeoutError:
            answers = [TimeoutError(f"no answer within {REPLAY_LOOKUP_S:.1f} s")] * 3
        committed, beginnings, ends = answers
        failed = next((a for a in answers if isinstance(a, BaseException)), None)
        if failed is not None:
            log.warning(
                "partition %d: where its input's replay starts or ends is not known (%r); new"
                " sets wait %.1f s for the input since the last commit",
                partition,
                failed,
                REPLAY_HOLD_MS / 1000,
            )
        start = committed if isinstance(committed, int) else None
        if start is None and committed is None and isinstance(beginnings, dict):
            start = beginnings.get(tp)  # no commit yet: the group reads from the beginning
        return start, ends.get(tp) if isinstance(ends, dict) else None

    async def release(self, revoked: list[TopicPartition]) -> None:
        """Finish, flush and commit the revoked partitions, then drop their stores."""
        if not self._stopping:
            # (the client revokes before each join, with nothing at the first)
            self._unassigned.waiting()
        partitions = [tp.partition for tp in revoked if tp.partition in self.workers]
        if partitions:
            log.info("partitions %s revoked", ", ".join(map(str, sorted(partitions))))
        for partition in partitions:
            self.scheduler.detach(partition)
        await asyncio.gather(
            *(self.workers[p].close(REVOKE_GRACE_S) for p in partitions), return_exceptions=True
        )
        for partition in partitions:
            # again: a restore that ended before its worker's close began handed the worker
            # to the scheduler after the first, which would hold it (and its store) for good
            self.scheduler.detach(partition)
        await self.commit()
        for partition in partitions:
            self.workers.pop(partition, None)
            self._committed.pop(partition, None)
        if partitions:
            # The released stores were frozen out of collection (see `_restore`): what of
            # them is cyclic garbage now (a failed worker and its traceback hold their store)
            # is collected once, here, and what lives on is frozen again.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        if not self.workers:
            self.assigned = False
            self.lease.forget()
        self._update_ready()
