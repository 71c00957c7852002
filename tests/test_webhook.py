"""The CRM webhook worker delivers CRM-sync records to a real HTTP endpoint, at least once."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os
import re
import signal
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import trustme
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pipeline import (
    NotUtf8,
    Producer,
    RunProcess,
    Skewed,
    allow_undecodable_headers,
    announced_port,
    blocking_member,
    create_topic,
    eventually,
    publish,
    read_dead_letters,
    silent_listener,
    throttled_lines,
)
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from processor.asgi import serve_in_background
from processor.broker import LocalBroker
from processor.childproc import free_port
from processor.clock import ManualClock
from processor.deadletter import DLQ_MESSAGE_BYTES_NEEDED
from processor.logs import THROTTLE_S
from processor.models import DlqReason
from processor.runtime.assignment import MEANING, UNASSIGNED_WARN_S
from processor.runtime.kafka import TopicError
from processor.settings import KafkaSettings, TypingSettings
from processor.telemetry import Telemetry
from processor.webhook import CrmWebhookWorker, WebhookConfig

DELIVERED = re.compile(
    r'^typing_crm_webhook_deliveries_total\{[^}]*result="delivered"[^}]*\} 1\.0$', re.MULTILINE
)


@dataclass
class Receiver:
    """A CRM endpoint that fails the first `failures` posts, then accepts.

    The posts of an event in `answers` get its statuses one by one before it is accepted;
    those of an event in `held` wait for `release` first.
    """

    failures: int = 0
    refuse: set[str] = field(default_factory=set)
    answers: dict[str, list[int]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    attempts: int = 0

    async def hook(self, request: Request) -> Response:
        self.attempts += 1
        body = orjson.loads(await request.body())
        event_id = body["event_id"]
        if event_id in self.held:
            await self.release.wait()
        if event_id in self.refuse:
            return Response(status_code=422)
        if self.answers.get(event_id):
            status = self.answers[event_id].pop(0)
            # a redirect says where to: the worker does not follow it
            location = {"Location": "https://crm.example/hook"} if 300 <= status < 400 else {}
            return Response(status_code=status, headers=location)
        if self.failures > 0:
            self.failures -= 1
            return Response(status_code=503)
        self.received.append((request.headers["idempotency-key"], body))
        return Response(status_code=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    state = Receiver()
    port = free_port()
    app = Starlette(routes=[Route("/hook", state.hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, 10, "webhook receiver listening")
    try:
        yield state, f"http://127.0.0.1:{port}/hook"
    finally:
        state.release.set()  # a held post would hold the server's shutdown
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def serving(
    hook: Callable[[Request], Awaitable[Response]], path: str = "/hook"
) -> AsyncIterator[str]:
    """A CRM endpoint answering with `hook` at `path`, on loopback; its URL."""
    port = free_port()
    app = Starlette(routes=[Route(path, hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, 10, "the CRM endpoint listening")
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task


async def new_topic(bootstrap_servers: str, prefix: str, partitions: int) -> str:
    """A fresh CRM topic of `partitions` partitions; its name."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}.crm"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()
    return topic


def record(session: str, version: int) -> dict[str, object]:
    return {
        "event": "typing_indicator_update",
        "timestamp": 1_700_000_000_000 + version,
        "session_id": session,
        "status": "typing",
        "source": "genesys_typing_processor",
        "event_id": f"{session}-{version}",
        "version": version,
        "reason": "event",
        "expires_at": 1_700_000_005_000,
    }


async def deliver_until(worker: CrmWebhookWorker, done: Callable[[], bool], what: str) -> None:
    """Run `worker` until `done()` holds (or fail after 30 s), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(done, 30, what)
    finally:
        stop.set()
        await task


async def test_records_are_delivered_in_order_with_retries_and_refusals(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    state.failures = 2
    state.refuse = {"w-1-2"}
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm")
    sent = [record("w-1", v) for v in range(1, 5)]
    await publish(bootstrap_servers, typing.crm_topic, sent)
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers),
        typing,
        WebhookConfig(url=url, max_backoff_s=0.05),
    )
    await deliver_until(worker, lambda: len(state.received) == 3, "three records accepted")
    assert [body["version"] for _, body in state.received] == [1, 3, 4]
    assert [key for key, _ in state.received] == ["w-1-1", "w-1-3", "w-1-4"]
    assert state.received[0][1] == sent[0]
    assert worker.counters.refused == 1
    assert worker.counters.retries == 2
    # committed: a second worker in the same group has nothing left to deliver
    again = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers), typing, WebhookConfig(url=url)
    )
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        await producer.send(record("w-1", 5))
    await deliver_until(again, lambda: len(state.received) == 4, "the new record delivered")
    assert [body["version"] for _, body in state.received] == [1, 3, 4, 5]


async def test_a_flood_of_refused_records_logs_the_first_and_counts_the_rest(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    """Each refused record has its dead letter, but the log has the first of a partition's
    refusals, not a line each; the line let through a minute later counts the rest."""
    state, url = receiver
    state.refuse = {f"w-flood-{version}" for version in range(1, 7)}
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(
        group_id=f"hook-{prefix}",
        crm_topic=await new_topic(bootstrap_servers, f"hook-{prefix}", 1),
    )
    await publish(bootstrap_servers, typing.crm_topic, [record("w-flood", v) for v in range(1, 6)])
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers), typing, WebhookConfig(url=url)
    )
    now = [0.0]
    stop = asyncio.Event()
    with throttled_lines("processor.webhook", lambda: now[0]) as lines:
        running = asyncio.create_task(worker.run(stop))
        try:
            # each line is logged as its refusal is counted
            await eventually(lambda: worker.counters.refused == 5, 30, "five refused")
            now[0] = THROTTLE_S
            await publish(bootstrap_servers, typing.crm_topic, [record("w-flood", 6)])
            await eventually(lambda: worker.counters.refused == 6, 30, "the sixth refused")
        finally:
            stop.set()
            await running
    refusals = [line for line in lines if line.startswith("refused for good")]
    assert len(refusals) == 2, refusals
    assert refusals[0].startswith(f"refused for good at {typing.crm_topic}/0 offset 0 (")
    assert refusals[1].startswith(f"refused for good at {typing.crm_topic}/0 offset 5 (")
    assert refusals[1].endswith("(4 more like it in 60 s not logged)")


# Statuses that say the endpoint, not the record, is wrong (every record would get them).
ENDPOINT_WRONG = [301, 307, 308, 401, 402, 403, 404, 405, 406, 407, 410, 415, 451]


async def test_an_endpoint_that_rejects_every_request_holds_delivery_until_it_is_fixed(
    bootstrap_servers: str, receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A redirect, an expired credential or a wrong path would refuse every record: the
    worker holds the record, retries, says why at ERROR and delivers once it is fixed."""
    state, url = receiver
    state.answers = {"w-5-1": list(ENDPOINT_WRONG)}
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm")
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        for version in (1, 2):
            await producer.send(record("w-5", version))
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers),
        typing,
        WebhookConfig(url=url, max_backoff_s=0),
    )
    with caplog.at_level(logging.ERROR, logger="processor.webhook"):
        await deliver_until(worker, lambda: len(state.received) == 2, "both, once fixed")
    assert [key for key, _ in state.received] == ["w-5-1", "w-5-2"]
    assert state.attempts == len(ENDPOINT_WRONG) + 2
    assert (worker.counters.refused, worker.counters.retries) == (0, len(ENDPOINT_WRONG))
    held = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [re.findall(r"answers HTTP (\d+),.* held at w-5-1", m) for m in held] == [
        [str(status)] for status in ENDPOINT_WRONG
    ]


async def test_answers_about_the_record_refuse_it_and_a_conflict_is_retried(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    """400, 413 and 422 are the record's fault: refused, set aside on the DLQ with its
    bytes, delivery goes on. 409 is what an Idempotency-Key receiver answers while an
    earlier attempt is in progress: retried."""
    state, url = receiver
    state.answers = {"w-6-1": [400], "w-6-2": [413], "w-6-3": [422], "w-6-4": [409, 409]}
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(
        group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm", dlq_topic=f"hook-{prefix}.dlq"
    )
    sent = [record("w-6", version) for version in range(1, 6)]
    await publish(bootstrap_servers, typing.crm_topic, sent)
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers),
        typing,
        WebhookConfig(url=url, max_backoff_s=0),
    )
    await deliver_until(worker, lambda: len(state.received) == 2, "the last two accepted")
    assert [key for key, _ in state.received] == ["w-6-4", "w-6-5"]
    assert (worker.counters.refused, worker.counters.retries) == (3, 2)
    assert worker.counters.dead_letters == 0  # they were CRM-sync records: counted as refused
    letters = await read_dead_letters(bootstrap_servers, typing.dlq_topic)
    assert [(letter.reason, letter.detail) for letter in letters] == [
        (DlqReason.CRM_REFUSED, f"CRM endpoint answered HTTP {status}")
        for status in (400, 413, 422)
    ]
    assert [orjson.loads(base64.b64decode(letter.value_b64 or "")) for letter in letters] == sent[
        :3
    ]
    assert [letter.offset for letter in letters] == [0, 1, 2]


async def test_an_outage_of_more_than_a_thousand_retries_is_still_retried(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    """A doubling backoff overflows a float at the 1024th retry (hours into a long outage
    at the real cap): it stays capped instead of failing the worker."""
    state, url = receiver
    state.answers = {"w-7-1": [503] * 1030}
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm")
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        await producer.send(record("w-7", 1))
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers),
        typing,
        WebhookConfig(url=url, max_backoff_s=0),
    )
    await deliver_until(worker, lambda: len(state.received) == 1, "accepted after the outage")
    assert worker.counters.retries == 1030


async def test_a_held_record_says_for_how_long_and_a_delivery_ends_the_hold(
    bootstrap_servers: str,
) -> None:
    """A receiver answering 409 to a key (its earlier attempt still in progress, or, wrongly,
    a key it already processed) holds the partition by design: the worker says for how
    long (`held_s`, the `typing_crm_webhook_held_seconds` gauge), per worker, so that a
    partition held while other workers deliver is not hidden by their deliveries."""
    fixed = asyncio.Event()

    async def hook(request: Request) -> Response:
        return Response(status_code=204 if fixed.is_set() else 409)

    clock = ManualClock()
    typing = await crm_topic(bootstrap_servers, [record("held-1", 1)])
    async with serving(hook) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url, max_backoff_s=0.05),
            clock=clock,
        )
        assert worker.held_s == 0.0
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await eventually(lambda: worker.counters.retries >= 2, 60, "the 409 retried")
            clock.advance(900_000)  # a quarter of an hour at the same record
            assert worker.held_s == 900.0
            fixed.set()
            await eventually(lambda: worker.counters.delivered == 1, 30, "delivered")
            assert worker.held_s == 0.0
        finally:
            stop.set()
            await task


async def test_records_that_are_no_crm_record_go_to_the_dlq_and_delivery_goes_on(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(
        group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm", dlq_topic=f"hook-{prefix}.dlq"
    )
    typing_event = {"event_id": "e-1", "session_id": "w-2", "status": "typing"}
    junk = [
        b"{not json",
        b'["a", "list"]',
        orjson.dumps({"session_id": "w-2"}),
        orjson.dumps(typing_event),  # an input event written to the wrong topic
        orjson.dumps(record("w-2", 9) | {"event_id": "w-2-\u00e9"}),  # no header can hold it
        orjson.dumps(record("w-2", 9) | {"event_id": "w-2\r\nX-Injected: 1"}),
    ]
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        await producer.send(record("w-2", 1))
        for value in junk:
            await producer.send_raw(b"w-2", value)
        await producer.send(record("w-2", 2))
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers), typing, WebhookConfig(url=url)
    )
    await deliver_until(worker, lambda: len(state.received) == 2, "both CRM records accepted")
    assert [body["version"] for _, body in state.received] == [1, 2]
    assert state.attempts == 2  # nothing else was posted
    assert worker.counters.dead_letters == len(junk)
    assert worker.counters.restarts == 0
    letters = await read_dead_letters(bootstrap_servers, typing.dlq_topic)
    assert [letter.reason for letter in letters] == [
        DlqReason.INVALID_JSON,
        DlqReason.NOT_AN_OBJECT,
        DlqReason.MISSING_FIELD,
        DlqReason.MISSING_FIELD,
        DlqReason.INVALID_FIELD,
        DlqReason.INVALID_FIELD,
    ]
    assert [base64.b64decode(letter.value_b64 or "") for letter in letters] == junk
    assert letters[1].detail == "a JSON array, not an object"
    assert {letter.topic for letter in letters} == {typing.crm_topic}
    assert [letter.offset for letter in letters] == list(range(1, len(junk) + 1))


async def test_an_undecodable_record_is_dead_lettered_with_its_bytes_and_delivery_goes_on(
    bootstrap_servers: str, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, url = receiver
    allow_undecodable_headers(monkeypatch)
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(
        group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm", dlq_topic=f"hook-{prefix}.dlq"
    )
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await sender.start()
    try:
        written = [
            await sender.send_and_wait(
                typing.crm_topic,
                orjson.dumps(record("w-4", version)),
                key=b"w-4",
                partition=0,
                headers=[(NotUtf8("trace"), b"x")] if version == 2 else [],
            )
            for version in (1, 2, 3)
        ]
    finally:
        await sender.stop()
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers), typing, WebhookConfig(url=url)
    )
    await deliver_until(worker, lambda: len(state.received) == 2, "the records around it")
    assert [body["version"] for _, body in state.received] == [1, 3]
    letters = await read_dead_letters(bootstrap_servers, typing.dlq_topic)
    assert [(x.reason, x.offset) for x in letters] == [
        (DlqReason.UNDECODABLE_RECORD, written[1].offset)
    ]
    assert base64.b64decode(letters[0].value_b64 or "") == orjson.dumps(record("w-4", 2))
    assert worker.counters.restarts == 0


async def test_an_undecodable_record_ending_a_partition_is_dead_lettered_once_across_restarts(
    bootstrap_servers: str, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record the client cannot decode is the partition's last: its dead letter is
    committed past, so the next worker of the group sets it aside no second time."""
    state, url = receiver
    allow_undecodable_headers(monkeypatch)
    typing = await crm_topic(bootstrap_servers, [])
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await sender.start()
    try:
        for version in (1, 2):
            await sender.send_and_wait(
                typing.crm_topic,
                orjson.dumps(record("w-5", version)),
                key=b"w-5",
                partition=0,
                headers=[(NotUtf8("trace"), b"x")] if version == 2 else [],
            )
    finally:
        await sender.stop()
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    first = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url))
    await deliver_until(first, lambda: first.counters.dead_letters == 1, "the record set aside")
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        await producer.send_to(0, b"w-5", orjson.dumps(record("w-5", 3)))
    second = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url))
    await deliver_until(second, lambda: len(state.received) == 2, "the record after it")
    assert [body["version"] for _, body in state.received] == [1, 3]
    letters = await read_dead_letters(bootstrap_servers, typing.dlq_topic)
    assert [(x.reason, x.offset) for x in letters] == [(DlqReason.UNDECODABLE_RECORD, 1)]
    assert second.counters.dead_letters == 0
    assert await webhook_committed(bootstrap_servers, typing, 0) == 3


async def test_a_cluster_down_at_start_is_waited_for_not_fatal(
    receiver: tuple[Receiver, str],
) -> None:
    state, url = receiver
    port = free_port()
    typing = TypingSettings(group_id="hook-late", crm_topic="hook-late.crm")
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"), typing, WebhookConfig(url=url)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: worker.counters.restarts >= 1, 60, "a failed start retried")
        assert not task.done()
        with LocalBroker(port=port) as late:
            async with Producer(late.bootstrap_servers, typing.crm_topic) as producer:
                await producer.send(record("w-3", 1))
            await eventually(lambda: len(state.received) == 1, 60, "delivered once it is up")
            stop.set()
            await task
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    assert state.received[0][1]["event_id"] == "w-3-1"


async def test_a_stop_while_the_cluster_hangs_gives_up_on_it_after_the_grace(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The cluster stops answering while a post is in flight; the worker is stopped and the
    post accepted: the dead letter that follows, the last commit and closing the clients
    (whose producer still waits for that letter's ack) are given up after their grace
    instead of holding the exit (what was not committed is delivered again)."""
    state, url = receiver
    state.held = {"w-8-1"}
    typing = TypingSettings(group_id="hook-hung", crm_topic="hook-hung.crm", dlq_topic="hook.dlq")
    config = WebhookConfig(url=url, stop_grace_s=0.5, close_grace_s=0.5)
    with LocalBroker() as broker:
        assert broker.pid is not None
        async with Producer(broker.bootstrap_servers, typing.crm_topic) as producer:
            await producer.send_raw(b"w-8", b"{not json")  # a dead letter, while it answers
            await producer.send(record("w-8", 1))
            await producer.send_raw(b"w-8", b"{not json either")
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=broker.bootstrap_servers), typing, config
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await eventually(lambda: state.attempts == 1, 60, "the post in flight")
            os.kill(broker.pid, signal.SIGSTOP)  # a hung broker: connected, never answering
            try:
                stop.set()
                state.release.set()
                # a deadline, not a measure: past the graces (1 s in all), short of their
                # defaults (6.5 s) and far short of the cluster's request timeout (40 s)
                with caplog.at_level(logging.WARNING, logger="processor.webhook"):
                    async with asyncio.timeout(5):
                        await task
            finally:
                os.kill(broker.pid, signal.SIGKILL)  # never back: nothing waits for it
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert worker.counters.delivered == 1
    # the first record's letter, written once, or twice where a loaded machine made the
    # member rejoin and read again from its commit (dead letters are at least once)
    assert worker.counters.dead_letters in (1, 2)
    # each step given up at its own grace: the last commit, then closing the clients
    given_up = [r.getMessage() for r in caplog.records if "did not answer within" in r.getMessage()]
    assert [line.split(":")[0] for line in given_up] == [
        "the CRM endpoint or the Kafka cluster did not answer within 0.5s of the stop",
        "the Kafka cluster did not answer within 0.5s",
    ], given_up


async def webhook_committed(bootstrap: str, typing: TypingSettings, partition: int) -> int | None:
    """The CRM topic's offset the webhook worker's group has committed for `partition`."""
    group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"{typing.group_id}-crm-webhook")
    await group.start()
    try:
        offset: int | None = await group.committed(TopicPartition(typing.crm_topic, partition))
        return offset
    finally:
        await group.stop()


async def test_a_post_still_in_flight_after_the_grace_is_given_up_uncommitted(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    """A post the endpoint does not answer is given up after the grace, not waited for up
    to the HTTP timeout; its record stays uncommitted, to be delivered again."""
    state, url = receiver
    state.held = {"w-9-1"}
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm")
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        await producer.send_to(0, b"w-9", orjson.dumps(record("w-9", 1)))
    config = WebhookConfig(url=url, timeout_s=60, stop_grace_s=0.5)
    worker = CrmWebhookWorker(KafkaSettings(bootstrap_servers=bootstrap_servers), typing, config)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: state.attempts == 1, 60, "the post in flight")
        stop.set()
        async with asyncio.timeout(10):
            await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert worker.counters.delivered == 0
    assert await webhook_committed(bootstrap_servers, typing, 0) is None


async def test_a_stop_with_a_post_hung_commits_the_records_accepted_before_it(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    """Stopped while the endpoint holds a post: the records it accepted before that one
    (same batch) are committed, not delivered again by the next worker, and only the post
    given up is."""
    state, url = receiver
    state.held = {"w-10-3"}
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm")
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        for version in (1, 2, 3):
            await producer.send_to(0, b"w-10", orjson.dumps(record("w-10", version)))
    config = WebhookConfig(url=url, timeout_s=60)  # the post out outlasts any grace
    worker = CrmWebhookWorker(KafkaSettings(bootstrap_servers=bootstrap_servers), typing, config)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: state.attempts == 3, 60, "the third post in flight")
        stop.set()
        async with asyncio.timeout(10):
            await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [key for key, _ in state.received] == ["w-10-1", "w-10-2"]
    # the two accepted; the third is delivered again
    assert await webhook_committed(bootstrap_servers, typing, 0) == 2


async def test_worker_process_killed_while_a_record_is_held_posts_again_only_that_record(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    """The endpoint refuses the fourth record of a batch with 503 until it is fixed; the
    worker is SIGKILLed while retrying it: the three records accepted before it were
    committed before its first retry, so the next worker posts only the held one again."""
    fixed = asyncio.Event()
    posts: list[str] = []

    async def hook(request: Request) -> Response:
        body = orjson.loads(await request.body())
        posts.append(body["event_id"])
        if body["version"] == 4 and not fixed.is_set():
            return Response(status_code=503)
        return Response(status_code=204)

    typing = await crm_topic(bootstrap_servers, [record("kill-1", v) for v in range(1, 6)])
    async with serving(hook) as url:
        env = worker_env(bootstrap_servers, typing, url)
        process = RunProcess(env, tmp_path / "webhook.log", command="crm-webhook")
        process.start()
        try:
            # its second post follows the first retry's wait, which follows the commit
            await eventually(lambda: posts.count("kill-1-4") >= 2, 60, "the record held")
        finally:
            process.kill()
        fixed.set()
        again = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers), typing, WebhookConfig(url=url)
        )
        await deliver_until(again, lambda: "kill-1-5" in posts, "the rest delivered")
    assert [posts.count(f"kill-1-{v}") for v in (1, 2, 3)] == [1, 1, 1], posts
    assert posts[-2:] == ["kill-1-4", "kill-1-5"]


async def test_a_slow_endpoint_has_what_it_accepted_committed_every_commit_interval(
    bootstrap_servers: str,
) -> None:
    """Within one batch, what was delivered is committed once the commit interval has
    passed since the batch began (here after the second record, whose answer takes that
    long), not after every record: the first and third records commit nothing of their
    own, and the fourth, which the endpoint holds, keeps the commit at the second."""
    clock = ManualClock()
    release = asyncio.Event()
    posts: list[int] = []
    typing = await crm_topic(bootstrap_servers, [record("slow-2", v) for v in range(1, 5)])

    async def hook(request: Request) -> Response:
        version = int(orjson.loads(await request.body())["version"])
        posts.append(version)
        if version == 2:
            clock.advance(typing.commit_interval_ms)  # an answer that long in coming
        if version == 4:
            await release.wait()
        return Response(status_code=204)

    async with serving(hook) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url),
            clock=clock,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            # posted after the third record's delivery, and so after any commit it made
            await eventually(lambda: 4 in posts, 60, "the fourth record posted")
            assert await webhook_committed(bootstrap_servers, typing, 0) == 2
            release.set()
            await eventually(lambda: worker.counters.delivered == 4, 30, "all delivered")
        finally:
            release.set()
            stop.set()
            await task
    assert posts == [1, 2, 3, 4]
    assert await webhook_committed(bootstrap_servers, typing, 0) == 4


async def test_worker_process_stopped_while_kafka_does_not_answer_exits_at_once(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """A cluster that takes connections and never answers holds a start for the client's
    request timeout (40 s): SIGTERM gives the start up and the process exits 0 at once,
    well within the 10 s of DESIGN §5."""
    _, url = receiver
    async with silent_listener() as (port, connected):
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "TYPING_GROUP_ID": "hook-silent",
            "TYPING_CRM_TOPIC": "hook-silent.crm",
            "TYPING_CRM_WEBHOOK_URL": url,
            "TYPING_HTTP_PORT": "0",
            "TYPING_LOG_LEVEL": "INFO",
        }
        process = RunProcess(env, tmp_path / "webhook.log", command="crm-webhook")
        process.start()
        try:
            # connected: the worker is starting, waiting for the cluster's answer
            await asyncio.wait_for(connected.wait(), 30)
            assert process.terminate(timeout_s=10) == 0
        finally:
            process.kill()
    assert "stopped before the Kafka cluster answered" in process.log_text()


async def test_worker_is_not_ready_before_it_runs() -> None:
    worker = CrmWebhookWorker(KafkaSettings(), TypingSettings(), WebhookConfig(url="http://crm"))
    assert not worker.ready
    assert await worker.readiness() == "worker not running"


async def test_a_worker_left_without_a_partition_is_ready(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    """More workers than CRM partitions (a rollout's extra pod): the idle one is ready too,
    or the rollout would wait for a partition no rebalance gives it."""
    _, url = receiver
    topic = await new_topic(bootstrap_servers, "hook-idle", 1)
    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    workers = [CrmWebhookWorker(kafka, typing, WebhookConfig(url=url)) for _ in range(2)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    try:
        await eventually(lambda: all(w.ready for w in workers), 60, "both workers ready")
        assert [await w.readiness() for w in workers] == [None, None]
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def group_member_names(bootstrap_servers: str, group: str) -> list[str]:
    """The client id of each member of `group`, as the broker reports it: its `client_id`,
    or (a broker that leaves that empty) its member id, which Kafka starts with the client
    id and a dash before a generated suffix."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (entry,) = described.groups
    return [client_id or member_id for member_id, client_id, *_ in entry[-1]]


async def test_the_worker_s_kafka_clients_are_named_by_the_client_id(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    """Broker logs, ACLs and quotas know a client by its id: the worker's are named from
    KAFKA_CLIENT_ID, apart from `run`'s, not aiokafka's anonymous default."""
    state, url = receiver
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm")
    await publish(bootstrap_servers, typing.crm_topic, [record("w-1", 1)])
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers, client_id=f"crm-{prefix}")
    worker = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: len(state.received) == 1, 30, "the record delivered")
        names = await group_member_names(bootstrap_servers, f"{typing.group_id}-crm-webhook")
    finally:
        stop.set()
        await task
    assert len(names) == 1
    assert names[0].startswith(f"crm-{prefix}-crm-webhook-consumer")


async def test_worker_process_serves_probes_and_metrics(
    bootstrap_servers: str, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    state, url = receiver
    prefix = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "TYPING_GROUP_ID": f"hook-{prefix}",
        "TYPING_CRM_TOPIC": f"hook-{prefix}.crm",
        "TYPING_CRM_WEBHOOK_URL": url,
        "TYPING_HTTP_PORT": "0",
        "TYPING_LOG_LEVEL": "INFO",
    }
    # the topic exists (created by its first record) before the worker subscribes
    async with Producer(bootstrap_servers, env["TYPING_CRM_TOPIC"]) as producer:
        await producer.send(record("w-2", 1))
    process = RunProcess(env, tmp_path / "webhook.log", command="crm-webhook")
    process.start()
    try:
        port = await announced_port(process)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            health = await client.get("/healthz")
            assert (health.status_code, health.json()["status"]) == (200, "ok")

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, 60, "/readyz 200 once partitions are assigned")
            await eventually(lambda: len(state.received) == 1, 30, "the record delivered")

            async def counted() -> bool:
                text = (await client.get("/metrics")).text
                return bool(DELIVERED.search(text))

            await eventually(counted, 30, "the delivery on /metrics")
            text = (await client.get("/metrics")).text
            assert re.search(r"^typing_crm_webhook_ready(\{[^}]*\})? 1\.0$", text, re.MULTILINE)
            assert "typing_event_loop_lag_seconds" in text
            # the processor's own instruments stay out: no `typing_ready 0` to alert on
            assert "typing_ready" not in text.replace("typing_crm_webhook_ready", "")
            assert "typing_events_total" not in text
        assert process.terminate(timeout_s=15) == 0
    finally:
        process.kill()
    assert [key for key, _ in state.received] == ["w-2-1"]


async def test_a_partition_revoked_mid_delivery_moves_on_where_delivery_stopped(
    bootstrap_servers: str,
) -> None:
    """A second worker joins while the first delivers a backlog (a rollout's surge pod, a
    scale-up): the first stops posting a revoked partition after the POST out and commits
    what it delivered, so the new owner goes on from there. No two workers post one
    session at once, no session's versions go backwards at the CRM, nothing is skipped,
    and nobody restarts."""
    per_partition = 300
    posts: list[tuple[str, str, int]] = []  # worker, session, version

    async def hook(request: Request) -> Response:
        body = orjson.loads(await request.body())
        posts.append((request.query_params["w"], body["session_id"], body["version"]))
        await asyncio.sleep(0.01)  # a CRM's round trip: the backlog takes a few seconds
        return Response(status_code=204)

    topic = await new_topic(bootstrap_servers, "hook-moved", 2)
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer:
        for version in range(1, per_partition + 1):
            for partition in (0, 1):
                session = f"p{partition}"
                value = orjson.dumps(record(session, version))
                await producer.send(topic, value, key=session.encode(), partition=partition)
    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    everything = {(f"p{p}", v) for p in (0, 1) for v in range(1, per_partition + 1)}
    async with serving(hook) as url:
        first = CrmWebhookWorker(kafka, typing, WebhookConfig(url=f"{url}?w=first"))
        second = CrmWebhookWorker(kafka, typing, WebhookConfig(url=f"{url}?w=second"))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(first.run(stop))]
        try:
            await eventually(lambda: len(posts) >= 20, 60, "the first worker delivering")
            tasks.append(asyncio.create_task(second.run(stop)))
            await eventually(lambda: {(s, v) for _, s, v in posts} >= everything, 90, "all posted")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    assert any(worker == "second" for worker, _, _ in posts), "the second worker took one"
    for session in ("p0", "p1"):
        seen = [(worker, version) for worker, s, version in posts if s == session]
        versions = [version for _, version in seen]
        # at least once: the POST out at the revocation may come again, nothing more
        assert all(b >= a - 1 for a, b in itertools.pairwise(versions)), session
        handovers = sum(1 for a, b in itertools.pairwise(seen) if a[0] != b[0])
        assert handovers <= 1, f"{session}: delivered by two workers at once"
    assert first.counters.restarts == second.counters.restarts == 0


async def test_a_commit_refused_by_a_group_that_moved_on_restarts_nothing(
    bootstrap_servers: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit the group refuses because it rebalanced without the worker
    (`CommitFailedError`) is not fatal: the worker does not restart, which in a rolling
    update would rebalance the group again; it rejoins, and delivers again from the last
    commit what it delivered since (at least once), and on. The worker is put behind its
    group's generation in its client (nothing the clients' API does on demand), so that
    the broker refuses its next commit as it refuses a member the group moved on from."""
    accepted: list[str] = []
    behind: list[int] = []
    worker: CrmWebhookWorker | None = None

    async def hook(request: Request) -> Response:
        event_id = orjson.loads(await request.body())["event_id"]
        if event_id == "a-3" and not behind:  # the last of partition 0's batch: its commit next
            assert worker is not None
            assert worker._consumer is not None
            coordinator = worker._consumer._coordinator
            coordinator.generation += 7
            behind.append(coordinator.generation)
        accepted.append(event_id)
        return Response(status_code=204)

    topic = await new_topic(bootstrap_servers, "hook-refused", 2)

    async def send(versions: range) -> None:
        for version in versions:
            for partition, session in enumerate(("a", "b")):
                value = orjson.dumps(record(session, version))
                await producer.send_and_wait(
                    topic, value, key=session.encode(), partition=partition
                )

    async def committed() -> bool:
        return all([await webhook_committed(bootstrap_servers, typing, p) == 5 for p in (0, 1)])

    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    async with (
        serving(hook) as url,
        AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer,
    ):
        await send(range(1, 4))
        worker = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            with caplog.at_level(logging.WARNING):
                await eventually(lambda: bool(behind), 60, "the worker behind its group")
                await send(range(4, 6))
                await eventually(committed, 60, "both partitions delivered and committed")
        finally:
            stop.set()
            await task
    assert worker.counters.restarts == 0
    refusals = [r for r in caplog.records if "IllegalGenerationError" in r.getMessage()]
    assert refusals, "the broker refused no commit"
    everything = {f"{session}-{version}" for session in "ab" for version in range(1, 6)}
    assert set(accepted) == everything


async def crm_topic(bootstrap_servers: str, records: list[dict[str, object]]) -> TypingSettings:
    """A fresh CRM-sync topic holding `records`, and the settings that name it."""
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(
        group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm", dlq_topic=f"hook-{prefix}.dlq"
    )
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        for body in records:
            await producer.send(body)
    return typing


def worker_env(
    bootstrap_servers: str, typing: TypingSettings, url: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a `crm-webhook` process delivering `typing`'s CRM topic to `url`."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "TYPING_GROUP_ID": typing.group_id,
        "TYPING_CRM_TOPIC": typing.crm_topic,
        "TYPING_DLQ_TOPIC": typing.dlq_topic,
        "TYPING_CRM_WEBHOOK_URL": url,
        "TYPING_HTTP_PORT": "0",
        **(extra or {}),
    }


async def test_a_retry_waits_as_long_as_the_endpoint_asks(bootstrap_servers: str) -> None:
    """A 429 or 503 with `Retry-After` is retried no sooner than it says (whatever the
    backoff: here none)."""
    attempts: list[float] = []

    async def hook(request: Request) -> Response:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return Response(status_code=429, headers={"Retry-After": "1"})
        return Response(status_code=204)

    typing = await crm_topic(bootstrap_servers, [record("ra-1", 1)])
    async with serving(hook) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url, max_backoff_s=0),
        )
        await deliver_until(worker, lambda: worker.counters.delivered == 1, "delivered")
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.95


async def trickle(sent: list[bytes]) -> AsyncIterator[bytes]:
    """A body that never ends, a byte at a time (each one appended to `sent`)."""
    while True:
        sent.append(b"x")
        yield b"x"
        await asyncio.sleep(0.2)  # the endpoint's pace, not synchronisation


async def test_an_answer_that_never_ends_is_given_up_after_the_timeout(
    bootstrap_servers: str,
) -> None:
    """The timeout bounds the whole exchange: an answer whose body trickles in (a proxy
    streaming an error page) must not hold delivery, and a huge one is not read whole."""
    attempts: list[float] = []
    trickled: list[bytes] = []

    async def hook(request: Request) -> Response:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return StreamingResponse(trickle(trickled), status_code=503)
        return Response(b"y" * (8 * 1024 * 1024), status_code=200)  # 8 MiB: not read whole

    typing = await crm_topic(bootstrap_servers, [record("slow-1", 1)])
    async with serving(hook) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url, timeout_s=1.0, max_backoff_s=0),
        )
        await deliver_until(worker, lambda: worker.counters.delivered == 1, "delivered")
    assert len(attempts) == 2
    # given up after its second, not held: a byte each 0.2 s at most, so a machine however
    # slow sends fewer, never more (the default timeout, 5 s, would take some 25)
    assert len(trickled) < 15, len(trickled)


async def test_an_acceptance_whose_body_never_ends_is_delivered_not_posted_again(
    bootstrap_servers: str,
) -> None:
    """The status is the endpoint's answer: a 2xx whose body trickles on past the timeout
    (a streaming framework's response, a proxy) delivered the record, and the next record
    follows; posting it again would hold the partition for as long as the endpoint
    answers so."""
    posted: list[str] = []

    async def hook(request: Request) -> Response:
        posted.append(orjson.loads(await request.body())["event_id"])
        if len(posted) == 1:
            return StreamingResponse(trickle([]), status_code=200)
        return Response(status_code=204)

    typing = await crm_topic(bootstrap_servers, [record("ended-1", 1), record("ended-1", 2)])
    async with serving(hook) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url, timeout_s=0.5, max_backoff_s=0),
        )
        await deliver_until(worker, lambda: worker.counters.delivered == 2, "both delivered")
    assert posted == ["ended-1-1", "ended-1-2"]
    assert worker.counters.retries == 0


async def test_worker_process_gives_a_post_up_after_the_timeout_it_is_given(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    """`TYPING_CRM_WEBHOOK_TIMEOUT_MS` bounds each POST of the worker process: an endpoint
    that answers the first one late is given up after that, and retried; the default (5 s)
    would have waited for its answer."""
    attempts: list[float] = []
    hung = asyncio.Event()  # set once the test is done
    late = asyncio.Event()  # the first POST answered

    async def hook(request: Request) -> Response:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            # the endpoint's pace, not synchronisation: within the default timeout only
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hung.wait(), 4.5)
            late.set()
        return Response(status_code=204)

    typing = await crm_topic(bootstrap_servers, [record("to-1", 1)])
    async with serving(hook) as url:
        env = worker_env(bootstrap_servers, typing, url, {"TYPING_CRM_WEBHOOK_TIMEOUT_MS": "500"})
        process = RunProcess(env, tmp_path / "webhook.log", command="crm-webhook")
        process.start()
        try:
            await eventually(
                lambda: len(attempts) == 2 or late.is_set(), 60, "retried, or the post answered"
            )
            assert len(attempts) == 2, "the worker waited for the first answer"
            assert process.terminate(timeout_s=15) == 0
        finally:
            process.kill()
            hung.set()
    assert attempts[1] - attempts[0] >= 0.45  # not before its timeout


async def test_a_failed_connection_is_logged_with_its_reason(
    bootstrap_servers: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused connection, a certificate refused, a name not found: the log says which,
    not only the exception's class."""
    typing = await crm_topic(bootstrap_servers, [record("down-1", 1)])
    nothing_there = f"http://127.0.0.1:{free_port()}/hook"
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers),
        typing,
        WebhookConfig(url=nothing_there, max_backoff_s=0),
    )
    with caplog.at_level(logging.WARNING, logger="processor.webhook"):
        await deliver_until(worker, lambda: worker.counters.retries >= 2, "retried")
    failures = [r.getMessage() for r in caplog.records if "CRM delivery of" in r.getMessage()]
    assert failures
    assert all(re.search(r"\(ConnectError: \S", message) for message in failures), failures


@contextlib.asynccontextmanager
async def https_endpoint(
    certificate: trustme.LeafCert,
    tmp_path: Path,
    clients: trustme.CA | None = None,
    accepted: list[str] | None = None,
) -> AsyncIterator[str]:
    """A CRM endpoint accepting every record over HTTPS with `certificate`, on loopback
    (with mutual TLS when `clients` is given: only a client certificate it issued is let
    in), noting each record's `event_id` in `accepted`; its URL."""

    async def accept(request: Request) -> Response:
        if accepted is not None:
            accepted.append(orjson.loads(await request.body())["event_id"])
        return Response(status_code=204)

    pem = tmp_path / "endpoint.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(pem)
    mutual: dict[str, object] = {}
    if clients is not None:
        clients_pem = tmp_path / "clients-ca.pem"
        clients.cert_pem.write_to_path(clients_pem)
        mutual = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(clients_pem)}
    app = Starlette(routes=[Route("/hook", accept, methods=["POST"])])
    async with serve_in_background(
        app, name="https crm", ssl_certfile=str(pem), ssl_keyfile=str(pem), **mutual
    ) as listening:
        yield f"https://127.0.0.1:{listening.port}/hook"


def held_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """The worker's lines at `level` saying a record is held or its delivery failed."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "processor.webhook"
        and r.levelno == level
        and ("held at" in r.getMessage() or "CRM delivery of" in r.getMessage())
    ]


async def test_an_untrusted_certificate_is_an_error_naming_the_ca_setting_and_is_retried(
    bootstrap_servers: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A certificate refused refuses every record, as a 3xx or a 401 does: an ERROR naming
    the setting that mends it, not a transient failure's WARNING at each retry. The record
    is held and retried all the same, and once the CA is trusted it is delivered."""
    authority = trustme.CA()
    cafile = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(cafile)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    typing = await crm_topic(bootstrap_servers, [record("tls-1", 1)])
    async with https_endpoint(authority.issue_cert("127.0.0.1"), tmp_path) as url:
        kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
        untrusting = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url, max_backoff_s=0))
        with caplog.at_level(logging.WARNING, logger="processor.webhook"):
            await deliver_until(untrusting, lambda: untrusting.counters.retries >= 2, "retried")
        assert untrusting.counters.delivered == 0
        errors = held_lines(caplog, logging.ERROR)
        assert len(errors) == untrusting.counters.retries, errors
        assert all(
            re.search(
                r"certificate is not trusted \(.+\); set TYPING_CRM_WEBHOOK_CA_FILE .* held at"
                r" tls-1-1",
                m,
            )
            for m in errors
        ), errors
        assert held_lines(caplog, logging.WARNING) == []

        config = WebhookConfig(url=url, ca_file=cafile, max_backoff_s=0)  # as the line says
        trusting = CrmWebhookWorker(kafka, typing, config)
        await deliver_until(trusting, lambda: trusting.counters.delivered == 1, "delivered")
        assert trusting.counters.retries == 0


async def test_a_certificate_issued_to_another_name_is_an_error_naming_the_url(
    bootstrap_servers: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trusted certificate of another host: the URL names the endpoint otherwise than its
    certificate does, which no CA mends."""
    authority = trustme.CA()
    cafile = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(cafile)
    monkeypatch.setenv("SSL_CERT_FILE", str(cafile))
    typing = await crm_topic(bootstrap_servers, [record("tls-2", 1)])
    async with https_endpoint(authority.issue_cert("crm.example"), tmp_path) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url, max_backoff_s=0),
        )
        with caplog.at_level(logging.WARNING, logger="processor.webhook"):
            await deliver_until(worker, lambda: worker.counters.retries >= 2, "retried")
    errors = held_lines(caplog, logging.ERROR)
    assert len(errors) == worker.counters.retries, errors
    assert all(
        m.startswith("TYPING_CRM_WEBHOOK_URL: the CRM endpoint's TLS certificate is not issued")
        for m in errors
    ), errors
    assert held_lines(caplog, logging.WARNING) == []


async def test_the_ca_file_is_trusted_instead_of_the_default_store(
    bootstrap_servers: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`TYPING_CRM_WEBHOOK_CA_FILE` is the CRM endpoint's trust, whatever SSL_CERT_FILE
    says (another CA's there: the processor's own CAs, say): the endpoint its CA issued
    for is trusted, and one the bundle does not trust is an error naming the setting and
    its file, though SSL_CERT_FILE would trust it."""
    endpoint_ca, other_ca = trustme.CA(), trustme.CA()
    endpoint_bundle, other_bundle = tmp_path / "endpoint-ca.pem", tmp_path / "other-ca.pem"
    endpoint_ca.cert_pem.write_to_path(endpoint_bundle)
    other_ca.cert_pem.write_to_path(other_bundle)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    typing = await crm_topic(bootstrap_servers, [record("ca-1", 1)])
    async with https_endpoint(endpoint_ca.issue_cert("127.0.0.1"), tmp_path) as url:
        monkeypatch.setenv("SSL_CERT_FILE", str(endpoint_bundle))
        config = WebhookConfig(url=url, ca_file=other_bundle, max_backoff_s=0)
        untrusting = CrmWebhookWorker(kafka, typing, config)
        with caplog.at_level(logging.WARNING, logger="processor.webhook"):
            await deliver_until(untrusting, lambda: untrusting.counters.retries >= 1, "retried")
        assert untrusting.counters.delivered == 0
        errors = held_lines(caplog, logging.ERROR)
        assert errors
        assert all(
            m.startswith(
                "the CRM endpoint's TLS certificate is not trusted by TYPING_CRM_WEBHOOK_CA_FILE"
            )
            and f"add its CA to {other_bundle}" in m
            for m in errors
        ), errors

        monkeypatch.setenv("SSL_CERT_FILE", str(other_bundle))
        config = WebhookConfig(url=url, ca_file=endpoint_bundle, max_backoff_s=0)
        trusting = CrmWebhookWorker(kafka, typing, config)
        await deliver_until(trusting, lambda: trusting.counters.delivered == 1, "delivered")
        assert trusting.counters.retries == 0


async def test_a_client_certificate_is_presented_for_mutual_tls(
    bootstrap_servers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that lets in only the client certificates its CA issued: a worker
    without one is refused (the record held), one with its certificate and key (in two
    files, or the key in the certificate's file) delivers."""
    authority, clients = trustme.CA(), trustme.CA()
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(bundle)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    issued = clients.issue_cert("typing-processor")
    certificate, key, both = tmp_path / "client.crt", tmp_path / "client.key", tmp_path / "c.pem"
    issued.cert_chain_pems[0].write_to_path(certificate)
    issued.private_key_pem.write_to_path(key)
    issued.private_key_and_cert_chain_pem.write_to_path(both)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    typing = await crm_topic(bootstrap_servers, [record("mtls-1", 1)])
    accepted: list[str] = []
    async with https_endpoint(
        authority.issue_cert("127.0.0.1"), tmp_path, clients, accepted
    ) as url:
        anonymous = CrmWebhookWorker(
            kafka, typing, WebhookConfig(url=url, ca_file=bundle, max_backoff_s=0)
        )
        await deliver_until(anonymous, lambda: anonymous.counters.retries >= 2, "refused")
        assert (anonymous.counters.delivered, accepted) == (0, [])
        for config in (
            WebhookConfig(
                url=url, ca_file=bundle, client_cert_file=certificate, client_key_file=key
            ),
            WebhookConfig(url=url, ca_file=bundle, client_cert_file=both),
        ):
            before = len(accepted)
            worker = CrmWebhookWorker(kafka, typing, config)
            await deliver_until(worker, lambda: len(accepted) > before, "delivered")  # noqa: B023
            # the next worker, a group of its own, delivers the record again
            typing = typing.model_copy(update={"group_id": f"{typing.group_id}-next"})
    assert accepted == ["mtls-1-1", "mtls-1-1"]


async def test_worker_process_speaks_mutual_tls_with_the_files_it_is_given(
    bootstrap_servers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`TYPING_CRM_WEBHOOK_CA_FILE`, `_CLIENT_CERT_FILE` and `_CLIENT_KEY_FILE` reach the
    worker process's POSTs."""
    authority, clients = trustme.CA(), trustme.CA()
    bundle, certificate, key = (tmp_path / name for name in ("ca.pem", "c.crt", "c.key"))
    authority.cert_pem.write_to_path(bundle)
    issued = clients.issue_cert("typing-processor")
    issued.cert_chain_pems[0].write_to_path(certificate)
    issued.private_key_pem.write_to_path(key)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    typing = await crm_topic(bootstrap_servers, [record("mtls-2", 1)])
    accepted: list[str] = []
    async with https_endpoint(
        authority.issue_cert("127.0.0.1"), tmp_path, clients, accepted
    ) as url:
        env = worker_env(
            bootstrap_servers,
            typing,
            url,
            {
                "TYPING_CRM_WEBHOOK_CA_FILE": str(bundle),
                "TYPING_CRM_WEBHOOK_CLIENT_CERT_FILE": str(certificate),
                "TYPING_CRM_WEBHOOK_CLIENT_KEY_FILE": str(key),
            },
        )
        process = RunProcess(env, tmp_path / "webhook.log", command="crm-webhook")
        process.start()
        try:
            await eventually(lambda: accepted == ["mtls-2-1"], 60, "delivered over mutual TLS")
            assert process.terminate(timeout_s=15) == 0
        finally:
            process.kill()


TOKEN = "Bearer t0k3n-never-shown"


async def test_worker_process_sends_the_authorization_header_and_never_shows_it(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    """`TYPING_CRM_WEBHOOK_AUTHORIZATION` (here from a file, with its newline) goes out as
    the `Authorization` header of every POST, a retry's too; the log never shows it (at
    DEBUG, nor the line of the 401 the endpoint answers first). Each POST carries a
    `traceparent` of its own (telemetry is on by default), both in the record's trace,
    which the log line of the 401 names."""
    seen: list[str | None] = []
    traceparents: list[str] = []

    async def hook(request: Request) -> Response:
        seen.append(request.headers.get("authorization"))
        traceparents.append(request.headers["traceparent"])
        return Response(status_code=401 if len(seen) == 1 else 204)

    typing = await crm_topic(bootstrap_servers, [record("auth-1", 1)])
    async with serving(hook) as url:
        env = worker_env(
            bootstrap_servers,
            typing,
            url,
            {
                "TYPING_CRM_WEBHOOK_AUTHORIZATION": f"{TOKEN}\n",
                "TYPING_LOG_LEVEL": "DEBUG",
            },
        )
        process = RunProcess(env, tmp_path / "webhook.log", command="crm-webhook")
        process.start()
        try:
            await eventually(lambda: len(seen) == 2, 60, "the 401 retried and accepted")
            assert process.terminate(timeout_s=15) == 0
        finally:
            process.kill()
    assert seen == [TOKEN, TOKEN]
    [(first_trace, first_post), (trace, post)] = map(traceparent_of, traceparents)
    assert (first_trace, first_post) != (trace, post)
    assert first_trace == trace
    log = process.log_text()
    [held] = [
        entry
        for entry in map(orjson.loads, log.splitlines())
        if "CRM endpoint answers HTTP 401" in entry["message"]
    ]
    assert held["trace_id"] == f"{trace:032x}"
    assert "t0k3n" not in log


def test_the_authorization_is_never_in_a_repr() -> None:
    typing = TypingSettings(
        crm_webhook_url="https://crm.example/h", crm_webhook_authorization=TOKEN
    )
    config = WebhookConfig(
        url="https://crm.example/h", authorization=typing.crm_webhook_authorization
    )
    for shown in (repr(typing), str(typing), repr(config), str(config)):
        assert "t0k3n" not in shown


async def test_a_record_held_on_one_partition_holds_no_other_partition(
    bootstrap_servers: str,
) -> None:
    """The endpoint answers 409 to one session's record for as long as it likes: that
    partition is held, and the worker's other partitions (other sessions) are delivered
    and committed meanwhile, records written after the hold began included."""
    fixed = asyncio.Event()
    accepted: list[str] = []

    async def hook(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if body["session_id"] == "held" and not fixed.is_set():
            return Response(status_code=409)
        accepted.append(body["event_id"])
        return Response(status_code=204)

    topic = await new_topic(bootstrap_servers, "hook-apart", 2)
    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    group = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=f"{typing.group_id}-crm-webhook"
    )
    async with (
        serving(hook) as url,
        AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer,
    ):
        worker = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url, max_backoff_s=0.05))
        await producer.send_and_wait(
            topic, orjson.dumps(record("held", 1)), key=b"held", partition=0
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await group.start()
        try:
            await eventually(lambda: worker.counters.retries >= 2, 60, "the 409 retried")
            for version in (1, 2, 3):
                value = orjson.dumps(record("free", version))
                await producer.send_and_wait(topic, value, key=b"free", partition=1)

            async def committed() -> bool:
                return await group.committed(TopicPartition(topic, 1)) == 3

            await eventually(committed, 30, "the other partition delivered and committed")
            assert accepted == ["free-1", "free-2", "free-3"]
            assert worker.held_s > 0  # still held at its record
            assert await group.committed(TopicPartition(topic, 0)) is None
            fixed.set()
            await eventually(lambda: "held-1" in accepted, 30, "the held record delivered")
        finally:
            stop.set()
            await task
            await group.stop()


class Joined(ConsumerRebalanceListener):  # type: ignore[misc]
    """Another member of the worker's group: `assigned` once it has joined."""

    def __init__(self) -> None:
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.assigned.set()


async def test_a_partition_revoked_while_reading_past_an_undecodable_record_is_read_no_further(
    bootstrap_servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance while the worker reads a partition record by record past one it cannot
    decode (the endpoint holding a record before it): the worker stops there, as it does in
    a batch, and posts none of the records after the held one, which would be out of order
    with the held one (and, the partition given to another worker, delivered by a worker
    that no longer owns it). Whoever owns it next delivers from the held record on."""
    fixed = asyncio.Event()
    accepted: list[int] = []

    async def hook(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if body["version"] == 2 and not fixed.is_set():
            return Response(status_code=503)
        accepted.append(int(body["version"]))
        return Response(status_code=204)

    allow_undecodable_headers(monkeypatch)
    topic = await new_topic(bootstrap_servers, "hook-search", 1)
    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic, dlq_topic=f"{topic}.dlq")
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer:
        for version in (1, 2, 3, 4):  # 3: undecodable
            headers = [(NotUtf8("trace"), b"x")] if version == 3 else []
            value = orjson.dumps(record("s", version))
            await producer.send_and_wait(topic, value, key=b"s", partition=0, headers=headers)

    async with serving(hook) as url:
        worker = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url, max_backoff_s=0.05))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await eventually(lambda: worker.counters.retries >= 2, 60, "record 2 held")
            # another member joins (the partition moves, or comes back from the commit)...
            other = AIOKafkaConsumer(
                bootstrap_servers=bootstrap_servers, group_id=f"{typing.group_id}-crm-webhook"
            )
            joined = Joined()
            await other.start()
            try:
                other.subscribe([topic], listener=joined)
                async with asyncio.timeout(60):
                    await joined.assigned.wait()
            finally:
                await other.stop()  # ... and leaves: the worker owns the partition again
            fixed.set()
            await eventually(lambda: 4 in accepted, 60, "the records after the held one")
        finally:
            stop.set()
            await task
    assert 2 in accepted, "the held record was skipped"
    assert accepted.index(2) < accepted.index(4), accepted


async def test_a_record_held_while_reading_past_an_undecodable_one_holds_no_other_partition(
    bootstrap_servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint answers 409 to a record the worker reads record by record, past one the
    client cannot decode: as in a fetched batch, that partition alone is held, and the
    other partition's records, written after the hold began, are delivered and committed
    meanwhile. Once the endpoint accepts, the held partition goes on past the record set
    aside."""
    fixed = asyncio.Event()
    accepted: list[str] = []

    async def hook(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if body["session_id"] == "held" and not fixed.is_set():
            return Response(status_code=409)
        accepted.append(body["event_id"])
        return Response(status_code=204)

    allow_undecodable_headers(monkeypatch)
    topic = await new_topic(bootstrap_servers, "hook-search-apart", 2)
    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic, dlq_topic=f"{topic}.dlq")
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    async with (
        serving(hook) as url,
        AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer,
    ):
        for version in (1, 2, 3):  # 2: undecodable
            headers = [(NotUtf8("trace"), b"x")] if version == 2 else []
            value = orjson.dumps(record("held", version))
            await producer.send_and_wait(topic, value, key=b"held", partition=0, headers=headers)
        worker = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url, max_backoff_s=0.05))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await eventually(lambda: worker.counters.retries >= 2, 60, "held-1 held")
            for version in (1, 2, 3):
                value = orjson.dumps(record("free", version))
                await producer.send_and_wait(topic, value, key=b"free", partition=1)

            async def committed() -> bool:
                return await webhook_committed(bootstrap_servers, typing, 1) == 3

            await eventually(committed, 30, "the other partition delivered and committed")
            assert accepted == ["free-1", "free-2", "free-3"]
            assert worker.held_s > 0  # still held at its record
            fixed.set()
            await eventually(lambda: "held-3" in accepted, 30, "the held partition going on")
        finally:
            stop.set()
            await task
    assert accepted[3:] == ["held-1", "held-3"]
    assert worker.counters.dead_letters == 1
    assert worker.counters.restarts == 0


async def test_a_record_refused_during_a_hand_over_is_dead_lettered_once(
    bootstrap_servers: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The endpoint answers 422 to a post out while a rebalance takes its partition away:
    the hand-over waits for that record's dead letter and commits past it, so that whoever
    owns the partition next (here the same worker, the other member gone) neither posts
    nor dead-letters it again."""
    revoking = asyncio.Event()
    posts: list[int] = []

    async def hook(request: Request) -> Response:
        version = int(orjson.loads(await request.body())["version"])
        posts.append(version)
        if version == 1:
            await revoking.wait()
            return Response(status_code=422)
        return Response(status_code=204)

    topic = await new_topic(bootstrap_servers, "hook-handover", 1)
    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic, dlq_topic=f"{topic}.dlq")
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer:
        for version in (1, 2):
            value = orjson.dumps(record("ho", version))
            await producer.send_and_wait(topic, value, key=b"ho", partition=0)

    def handing_over() -> bool:
        return any("CRM partitions revoked" in r.getMessage() for r in caplog.records)

    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    async with serving(hook) as url:
        worker = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            with caplog.at_level(logging.INFO, logger="processor.webhook"):
                await eventually(lambda: posts == [1], 60, "the first record's post out")
                other = AIOKafkaConsumer(
                    bootstrap_servers=bootstrap_servers,
                    group_id=f"{typing.group_id}-crm-webhook",
                )
                joined = Joined()
                await other.start()
                try:
                    other.subscribe([topic], listener=joined)
                    await eventually(handing_over, 60, "the worker handing its partition over")
                    revoking.set()
                    async with asyncio.timeout(60):
                        await joined.assigned.wait()
                finally:
                    await other.stop()  # the worker owns the partition again
                await eventually(lambda: worker.counters.delivered == 1, 60, "the second record")
        finally:
            revoking.set()
            stop.set()
            await task
    letters = await read_dead_letters(bootstrap_servers, typing.dlq_topic)
    assert [(x.reason, x.offset) for x in letters] == [(DlqReason.CRM_REFUSED, 0)]
    assert posts == [1, 2]


async def test_a_record_delivered_after_its_hand_over_gave_up_is_not_committed_later(
    bootstrap_servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance takes a partition away while its record in hand outlasts the hand-over's
    wait (here a POST, the wait cut short; else a dead letter slower than its margin, which
    the local broker cannot be made to be). The record's delivery, noted once the hand-over
    has given up, belongs to the assignment that ended: the worker, given the partition
    back, does not commit it over what its next owner committed meanwhile."""
    monkeypatch.setattr("processor.webhook._HAND_OVER_MARGIN_S", 0.2 - 30.0)  # wait 0.2 s
    release = asyncio.Event()
    posts: list[int] = []

    async def hook(request: Request) -> Response:
        posts.append(int(orjson.loads(await request.body())["version"]))
        await release.wait()
        return Response(status_code=204)

    topic = await new_topic(bootstrap_servers, "hook-late", 1)
    tp = TopicPartition(topic, 0)
    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic, dlq_topic=f"{topic}.dlq")
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer:
        for version in (1, 2, 3):
            value = orjson.dumps(record("late", version))
            await producer.send_and_wait(topic, value, key=b"late", partition=0)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    async with serving(hook) as url:
        worker = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url, timeout_s=30.0))

        def owns_it() -> bool:
            consumer = worker._consumer
            return consumer is not None and tp in consumer.assignment()

        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await eventually(lambda: posts == [1], 60, "the first record's post out")
            other = AIOKafkaConsumer(
                bootstrap_servers=bootstrap_servers, group_id=f"{typing.group_id}-crm-webhook"
            )
            joined = Joined()
            await other.start()
            try:
                other.subscribe([topic], listener=joined)
                # the group's new generation: the worker's hand-over has given up by then
                async with asyncio.timeout(60):
                    await joined.assigned.wait()
                await other.commit({tp: 3})  # the next owner delivered all three
                release.set()
                await eventually(lambda: worker.counters.delivered == 1, 30, "the late record")
            finally:
                await other.stop()  # the worker owns the partition again
            await eventually(owns_it, 60, "the partition back with the worker")
        finally:
            release.set()
            stop.set()
            await task
    assert await webhook_committed(bootstrap_servers, typing, 0) == 3


# ---------------------------------------------------------------- traces


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    made = Telemetry.from_environment(
        {}, span_processors=[SimpleSpanProcessor(spans)], processor_metrics=False
    )
    try:
        yield made
    finally:
        made.shutdown()


def by_kind(spans: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    """The finished spans of `kind`, in the order they started."""
    found = [span for span in spans.get_finished_spans() if span.kind is kind]
    return sorted(found, key=lambda span: span.start_time or 0)


def traceparent_of(value: str) -> tuple[int, int]:
    """(trace id, parent id) of a `traceparent` header, checked for its W3C shape and its
    sampled flag (a new trace's may also say that its id is random: 03)."""
    version, trace_id, parent_id, flags = value.split("-")
    assert (version, len(trace_id), len(parent_id)) == ("00", 32, 16), value
    assert int(flags, 16) & 1, value
    return int(trace_id, 16), int(parent_id, 16)


async def send_traced(bootstrap_servers: str, topic: str, session: str, traceparent: str) -> None:
    """A CRM-sync record of `session` on partition 0 of `topic`, with `traceparent` and a
    `tracestate` as its headers."""
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer:
        await producer.send_and_wait(
            topic,
            orjson.dumps(record(session, 1)),
            key=session.encode(),
            partition=0,
            headers=[("traceparent", traceparent.encode()), ("tracestate", b"crm=7")],
        )


async def test_a_post_carries_the_trace_of_its_record_to_the_endpoint(
    bootstrap_servers: str, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    """The record's `traceparent` (the processor's publish span) is the parent of the
    record's CONSUMER span, each POST is a CLIENT span under it, and the endpoint gets that
    POST's `traceparent` (the record's trace) and the record's `tracestate`: the CRM
    continues the trace of the typing event."""
    trace_id, parent_id = uuid.uuid4().int, uuid.uuid4().int >> 64
    seen: list[tuple[str, str | None]] = []

    async def hook(request: Request) -> Response:
        seen.append((request.headers["traceparent"], request.headers.get("tracestate")))
        return Response(status_code=503 if len(seen) == 1 else 204)

    typing = await crm_topic(bootstrap_servers, [])
    traceparent = f"00-{trace_id:032x}-{parent_id:016x}-01"
    await send_traced(bootstrap_servers, typing.crm_topic, "tr-1", traceparent)
    async with serving(hook) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url, max_backoff_s=0),
            telemetry=telemetry,
        )
        await deliver_until(worker, lambda: worker.counters.delivered == 1, "delivered")
    [delivery] = by_kind(spans, SpanKind.CONSUMER)
    posts = by_kind(spans, SpanKind.CLIENT)
    assert delivery.name == f"{typing.crm_topic} process"
    assert delivery.parent is not None
    assert delivery.parent.is_remote
    assert (delivery.parent.trace_id, delivery.parent.span_id) == (trace_id, parent_id)
    assert dict(delivery.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.destination.name": typing.crm_topic,
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "typing.event_id": "tr-1-1",
        "typing.outcome": "delivered",
        "typing.attempts": 2,
        "http.response.status_code": 204,
    }
    assert delivery.status.status_code is StatusCode.UNSET
    assert [post.name for post in posts] == ["POST", "POST"]
    assert [(post.attributes or {}).get("http.response.status_code") for post in posts] == [
        503,
        204,
    ]
    assert [post.status.status_code for post in posts] == [StatusCode.ERROR, StatusCode.UNSET]
    for post, (sent, state) in zip(posts, seen, strict=True):
        assert post.parent is not None
        assert post.parent.span_id == delivery.context.span_id
        # what the endpoint got is the POST's own span, in the record's trace
        assert traceparent_of(sent) == (trace_id, post.context.span_id)
        assert state == "crm=7"


SECRETS = ("pw-s3cret", "q-s3cret", "h-s3cret", "f-s3cret")


async def test_a_refused_record_says_so_on_its_span_and_no_span_holds_a_secret(
    bootstrap_servers: str, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    """A record the endpoint refuses (422) ends its span as `refused`, an error naming the
    DLQ's reason; a record without a `traceparent` starts a trace, which its POST carries.
    The URL's userinfo, query and fragment and the `Authorization` value are in no span."""
    seen: list[str] = []

    async def hook(request: Request) -> Response:
        seen.append(request.headers["traceparent"])
        body = orjson.loads(await request.body())
        if body["version"] == 1:
            return Response(status_code=422)
        return Response(status_code=401 if len(seen) == 2 else 204)

    typing = await crm_topic(bootstrap_servers, [record("tr-2", 1), record("tr-2", 2)])
    async with serving(hook) as url:
        # (the userinfo goes out as Basic auth in the Authorization's place: settings refuse
        # the two together, the worker does not care; either is a secret)
        # (a fragment is never sent, but OAuth's implicit grant leaves a token there)
        secret_url = url.replace("//", "//user:pw-s3cret@") + "?token=q-s3cret#token=f-s3cret"
        config = WebhookConfig(
            url=secret_url, authorization=SecretStr("Bearer h-s3cret"), max_backoff_s=0
        )
        kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
        worker = CrmWebhookWorker(kafka, typing, config, telemetry=telemetry)
        await deliver_until(worker, lambda: worker.counters.delivered == 1, "the second one")
    refused, delivered = by_kind(spans, SpanKind.CONSUMER)
    assert (refused.attributes or {})["typing.outcome"] == "refused"
    assert (refused.attributes or {})["typing.dlq.reason"] == DlqReason.CRM_REFUSED.value
    assert (refused.attributes or {})["http.response.status_code"] == 422
    assert (refused.status.status_code, refused.status.description) == (
        StatusCode.ERROR,
        DlqReason.CRM_REFUSED.value,
    )
    assert (delivered.attributes or {})["typing.outcome"] == "delivered"
    assert (delivered.attributes or {})["typing.attempts"] == 2
    for span in (refused, delivered):
        assert span.parent is None  # no traceparent on the record: a trace of its own
    posts = by_kind(spans, SpanKind.CLIENT)
    assert [traceparent_of(sent) for sent in seen] == [
        (post.context.trace_id, post.context.span_id) for post in posts
    ]
    assert {(post.attributes or {})["url.full"] for post in posts} == {
        url.replace("//", "//REDACTED:REDACTED@").replace("/hook", "/REDACTED")
    }
    shown = repr(
        [
            (
                span.name,
                dict(span.attributes or {}),
                span.status.description,
                [(event.name, dict(event.attributes or {})) for event in span.events],
            )
            for span in spans.get_finished_spans()
        ]
    )
    assert not [secret for secret in SECRETS if secret in shown]


# A Slack-style endpoint: its credential is the last segment of its path.
PATH_SECRET = "p4th-s3cret"
CAPABILITY_PATH = f"/services/T0/B0/{PATH_SECRET}"


async def test_a_credential_in_the_endpoint_s_path_is_in_no_span(
    bootstrap_servers: str, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    """A POST's `url.full` names the endpoint by its scheme, host and port, its path masked
    whole (nothing tells a secret segment from a plain one), the query dropped: no span holds
    the credential, whether the endpoint answered (404, 503, 204) or not (nothing listens)."""
    answers = [404, 503]

    async def hook(request: Request) -> Response:
        return Response(status_code=answers.pop(0) if answers else 204)

    typing = await crm_topic(bootstrap_servers, [record("path-1", 1)])
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    nothing_there = f"http://127.0.0.1:{free_port()}{CAPABILITY_PATH}"
    down = CrmWebhookWorker(
        kafka, typing, WebhookConfig(url=nothing_there, max_backoff_s=0), telemetry=telemetry
    )
    await deliver_until(down, lambda: down.counters.retries >= 1, "a POST without answer")
    async with serving(hook, CAPABILITY_PATH) as url:
        config = WebhookConfig(url=f"{url}?token=q-s3cret", max_backoff_s=0)
        worker = CrmWebhookWorker(kafka, typing, config, telemetry=telemetry)
        await deliver_until(worker, lambda: worker.counters.delivered == 1, "delivered")
    posts = by_kind(spans, SpanKind.CLIENT)
    statuses = [(post.attributes or {}).get("http.response.status_code") for post in posts]
    assert statuses[-3:] == [404, 503, 204]
    assert None in statuses  # the POSTs nothing answered
    origin = url.removesuffix(CAPABILITY_PATH)
    assert {(post.attributes or {})["url.full"] for post in posts[-3:]} == {f"{origin}/REDACTED"}
    shown = repr(
        [
            (span.name, dict(span.attributes or {}), span.status.description)
            for span in spans.get_finished_spans()
        ]
    )
    assert PATH_SECRET not in shown
    assert "q-s3cret" not in shown


async def test_worker_process_never_shows_a_credential_in_the_endpoint_s_path(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    """The worker process names its endpoint at start-up without the credential its path
    carries, and neither its log (at DEBUG, the HTTP clients' lines included: a 404's ERROR,
    a 503's WARNING) nor `/readyz` (held, delivered) holds it."""
    answers = [404, 503]
    held = asyncio.Event()

    async def hook(request: Request) -> Response:
        if answers:
            return Response(status_code=answers.pop(0))
        await held.wait()  # /readyz asked while a record is held
        return Response(status_code=204)

    typing = await crm_topic(bootstrap_servers, [record("path-2", 1)])
    async with serving(hook, CAPABILITY_PATH) as url:
        env = worker_env(
            bootstrap_servers, typing, f"{url}?token=q-s3cret", {"TYPING_LOG_LEVEL": "DEBUG"}
        )
        process = RunProcess(env, tmp_path / "webhook.log", command="crm-webhook")
        process.start()
        try:
            port = await announced_port(process)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as ops:
                answers_seen = [(await ops.get("/readyz")).text]
                await eventually(lambda: not answers, 60, "the 404 and the 503 answered")
                answers_seen.append((await ops.get("/readyz")).text)
                held.set()
                await eventually(
                    lambda: "CRM delivery of path-2-1 failed (HTTP 503)" in process.log_text(),
                    30,
                    "the 503 logged",
                )
                answers_seen.append((await ops.get("/readyz")).text)
            assert process.terminate(timeout_s=15) == 0
        finally:
            process.kill()
            held.set()
    log = process.log_text()
    origin = url.removesuffix(CAPABILITY_PATH)
    assert f"to the CRM endpoint {origin}/**********?token=" in log
    assert "CRM endpoint answers HTTP 404" in log
    for shown in (log, *answers_seen):
        assert PATH_SECRET not in shown
        assert "q-s3cret" not in shown


async def test_a_post_without_an_answer_is_an_error_and_a_stop_gives_its_record_up(
    bootstrap_servers: str, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    """A POST that gets no answer (nothing listens) ends its span as an error of its
    exception's class; the record, held until the stop, ends its span `given_up`."""
    typing = await crm_topic(bootstrap_servers, [record("tr-3", 1)])
    nothing_there = f"http://user:pw-s3cret@127.0.0.1:{free_port()}/hook?token=q-s3cret"
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers),
        typing,
        WebhookConfig(url=nothing_there, max_backoff_s=0.05),
        telemetry=telemetry,
    )
    await deliver_until(worker, lambda: worker.counters.retries >= 2, "retried")
    [given_up] = by_kind(spans, SpanKind.CONSUMER)
    posts = by_kind(spans, SpanKind.CLIENT)
    assert (given_up.attributes or {})["typing.outcome"] == "given_up"
    assert (given_up.attributes or {})["typing.attempts"] == len(posts) >= 2
    assert "http.response.status_code" not in (given_up.attributes or {})
    assert given_up.status.status_code is StatusCode.UNSET  # delivered again: no failure
    for post in posts:
        assert (post.attributes or {})["error.type"] == "ConnectError"
        assert post.status.status_code is StatusCode.ERROR
        assert "s3cret" not in (post.status.description or "")


async def test_a_record_that_is_no_crm_record_ends_its_span_as_a_dead_letter(
    bootstrap_servers: str, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    """A record that is no CRM-sync record is never posted: its span ends `dead_letter`, an
    error naming the DLQ's reason, with no attempt, no status and no POST span; the record
    after it is delivered as usual."""
    seen: list[str] = []

    async def hook(request: Request) -> Response:
        seen.append(orjson.loads(await request.body())["event_id"])
        return Response(status_code=204)

    typing = await crm_topic(bootstrap_servers, [])
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        await producer.send_to(0, b"tr-4", b"{not json")
        await producer.send_to(0, b"tr-4", orjson.dumps(record("tr-4", 1)))
    async with serving(hook) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url),
            telemetry=telemetry,
        )
        await deliver_until(worker, lambda: worker.counters.delivered == 1, "delivered")
    dead, delivered = by_kind(spans, SpanKind.CONSUMER)
    assert dict(dead.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.destination.name": typing.crm_topic,
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "typing.outcome": "dead_letter",
        "typing.attempts": 0,
        "typing.dlq.reason": DlqReason.INVALID_JSON.value,
    }
    assert (dead.status.status_code, dead.status.description) == (
        StatusCode.ERROR,
        DlqReason.INVALID_JSON.value,
    )
    assert (delivered.attributes or {})["typing.outcome"] == "delivered"
    [post] = by_kind(spans, SpanKind.CLIENT)
    assert post.parent is not None
    assert post.parent.span_id == delivered.context.span_id
    assert seen == ["tr-4-1"]


async def test_telemetry_off_sends_no_traceparent(bootstrap_servers: str) -> None:
    """Without telemetry the POST carries no trace context, not even the record's own
    `traceparent` and `tracestate` passed on: nobody continues a trace nobody records."""
    headers: list[dict[str, str]] = []

    async def hook(request: Request) -> Response:
        headers.append(dict(request.headers))
        return Response(status_code=503 if len(headers) == 1 else 204)

    typing = await crm_topic(bootstrap_servers, [])
    traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    await send_traced(bootstrap_servers, typing.crm_topic, "tr-5", traceparent)
    async with serving(hook) as url:
        worker = CrmWebhookWorker(
            KafkaSettings(bootstrap_servers=bootstrap_servers),
            typing,
            WebhookConfig(url=url, max_backoff_s=0),
        )
        await deliver_until(worker, lambda: worker.counters.delivered == 1, "delivered")
    assert len(headers) == 2  # a retry too
    for sent in headers:
        assert sent["idempotency-key"] == "tr-5-1"
        assert not {"traceparent", "tracestate"} & set(sent), sent


async def dlq_limited_to(bootstrap_servers: str, limit: int) -> TypingSettings:
    """A fresh CRM-sync topic holding one record, and a DLQ created out of band with
    `max.message.bytes` = `limit`; the settings that name them."""
    typing = await crm_topic(bootstrap_servers, [record("dlq-limit-1", 1)])
    await create_topic(bootstrap_servers, typing.dlq_topic, 1, {"max.message.bytes": str(limit)})
    return typing


@pytest.mark.parametrize(
    ("limit", "refused"), [(256 * 1024, True), (DLQ_MESSAGE_BYTES_NEEDED, False)]
)
async def test_a_dlq_that_refuses_the_largest_dead_letter_stops_the_worker_s_start(
    bootstrap_servers: str, receiver: tuple[Receiver, str], limit: int, refused: bool
) -> None:
    """The worker writes dead letters too: a DLQ whose reported max.message.bytes is below
    the largest letter stops its start, naming the topic, before a record is posted (each
    such letter would restart delivery from the last commit, for good); one that takes
    them does not."""
    state, url = receiver
    typing = await dlq_limited_to(bootstrap_servers, limit)
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers), typing, WebhookConfig(url=url)
    )
    if not refused:
        await deliver_until(worker, lambda: worker.counters.delivered == 1, "delivered")
        return
    with pytest.raises(TopicError) as refusal:
        await asyncio.wait_for(worker.run(asyncio.Event()), 30)
    assert str(refusal.value).startswith(
        f"DLQ {typing.dlq_topic} has max.message.bytes={limit}: a dead letter takes up to"
        f" {DLQ_MESSAGE_BYTES_NEEDED} bytes"
    )
    assert state.attempts == 0


async def test_worker_process_with_a_dlq_too_small_stops_with_one_line_naming_it(
    bootstrap_servers: str, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    _, url = receiver
    typing = await dlq_limited_to(bootstrap_servers, 256 * 1024)
    process = RunProcess(
        worker_env(bootstrap_servers, typing, url), tmp_path / "webhook.log", "crm-webhook"
    )
    process.start()
    try:
        assert process.process is not None
        assert await asyncio.to_thread(process.process.wait, 60) == 2
    finally:
        process.kill()
    [line] = [
        entry
        for entry in map(orjson.loads, process.log_text().splitlines())
        if entry["level"] == "ERROR"
    ]
    assert line["message"].startswith(
        f"topic set-up is wrong: DLQ {typing.dlq_topic} has max.message.bytes=262144"
    )


@pytest.mark.parametrize("missing", ["crm_topic", "dlq_topic"])
async def test_a_missing_topic_stops_the_worker_s_start_when_it_creates_none(
    bootstrap_servers: str, receiver: tuple[Receiver, str], missing: str
) -> None:
    """With TYPING_CREATE_TOPICS off (topics made out of band), a CRM topic that does not
    exist (a misspelt name) stops the start, naming it, as it stops `run`'s: subscribed
    to it, the worker was ready and delivered nothing, for good. So does a DLQ that does
    not exist: every dead letter would fail and restart delivery."""
    _, url = receiver
    typing = await crm_topic(bootstrap_servers, [record("missing-1", 1)])
    name = f"{typing.group_id}.{missing}-absent"
    typing = typing.model_copy(update={missing: name, "create_topics": False})
    worker = CrmWebhookWorker(
        KafkaSettings(bootstrap_servers=bootstrap_servers), typing, WebhookConfig(url=url)
    )
    with pytest.raises(TopicError, match=re.escape(f"topic {name} does not exist")):
        await asyncio.wait_for(worker.run(asyncio.Event()), 20)


async def test_a_rebalance_that_does_not_complete_is_warned_of_and_named_by_readiness(
    bootstrap_servers: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another member's revocation holds the worker's group in its rebalance, the worker's
    first join waiting for it: once that has lasted `UNASSIGNED_WARN_S` (the worker's clock
    moved ahead), one WARNING names the group, how long and what it means, and readiness
    says the same; once the member rejoins, an INFO line says the partitions came, and the
    worker is ready."""
    logger = "processor.runtime.assignment"
    caplog.set_level(logging.INFO, logger=logger)

    def lines(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]

    topic = await new_topic(bootstrap_servers, "hook-rebalance", 2)
    typing = TypingSettings(group_id=f"{topic}-group", crm_topic=topic, dlq_topic=f"{topic}.dlq")
    group = f"{typing.group_id}-crm-webhook"
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    clock = Skewed()
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    async with blocking_member(bootstrap_servers, group, topic) as blocking:
        try:

            async def accept(request: Request) -> Response:
                return Response(status_code=204)

            async with serving(accept) as url:
                worker = CrmWebhookWorker(kafka, typing, WebhookConfig(url=url), monotonic=clock)
                task = asyncio.create_task(worker.run(stop))
                async with asyncio.timeout(60):
                    await blocking.revoking.wait()
                # (the worker's join began that rebalance: it has subscribed, and waits since)
                clock.skew = UNASSIGNED_WARN_S
                await eventually(lambda: lines(logging.WARNING), 30, "a warning of the rebalance")
                [warning] = lines(logging.WARNING)
                assert warning.startswith(f"no partitions assigned in group {group} for 6"), warning
                assert warning.endswith(MEANING)
                reason = await worker.readiness()
                assert reason is not None
                assert reason.startswith(
                    f"not yet a member of the group consuming {topic}: no partitions assigned in"
                    f" group {group} for 6"
                ), reason
                assert reason.endswith(MEANING), reason
                blocking.release.set()
                await eventually(lambda: worker.ready, 60, "the worker ready once it rejoins")
                [assigned] = lines(logging.INFO)
                assert assigned.startswith(f"partitions assigned in group {group} after 6"), (
                    assigned
                )
                assert len(lines(logging.WARNING)) == 1  # at most one a minute
                stop.set()
                await task
        finally:
            blocking.release.set()
            stop.set()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
