"""The CRM webhook worker delivers CRM-sync records to a real HTTP endpoint, at least once."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pipeline import (
    NotUtf8,
    Producer,
    RunProcess,
    allow_undecodable_headers,
    announced_port,
    eventually,
    read_topic,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from processor.broker import LocalBroker
from processor.childproc import free_port
from processor.models import DeadLetter, DlqReason
from processor.settings import KafkaSettings, TypingSettings
from processor.webhook import CrmWebhookWorker, WebhookConfig

DELIVERED = re.compile(
    r'^typing_crm_webhook_deliveries_total\{[^}]*result="delivered"[^}]*\} 1\.0$', re.MULTILINE
)


@dataclass
class Receiver:
    """A CRM endpoint that fails the first `failures` posts, then accepts."""

    failures: int = 0
    refuse: set[str] = field(default_factory=set)
    received: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    attempts: int = 0

    async def hook(self, request: Request) -> Response:
        self.attempts += 1
        body = orjson.loads(await request.body())
        if body["event_id"] in self.refuse:
            return Response(status_code=422)
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
        server.should_exit = True
        await task


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
    async with Producer(bootstrap_servers, typing.crm_topic) as producer:
        for item in sent:
            await producer.send(item)
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


async def test_records_that_are_no_crm_record_go_to_the_dlq_and_delivery_goes_on(
    bootstrap_servers: str, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    prefix = uuid.uuid4().hex[:8]
    typing = TypingSettings(
        group_id=f"hook-{prefix}", crm_topic=f"hook-{prefix}.crm", dlq_topic=f"hook-{prefix}.dlq"
    )
    junk = [b"{not json", b'["a", "list"]', orjson.dumps({"session_id": "w-2"})]
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
    assert worker.counters.dead_letters == 3
    assert worker.counters.restarts == 0
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(bootstrap_servers, typing.dlq_topic)
        if r.value is not None
    ]
    assert [letter.reason for letter in letters] == [
        DlqReason.INVALID_JSON,
        DlqReason.NOT_AN_OBJECT,
        DlqReason.MISSING_FIELD,
    ]
    assert [base64.b64decode(letter.value_b64 or "") for letter in letters] == junk
    assert {letter.topic for letter in letters} == {typing.crm_topic}
    assert [letter.offset for letter in letters] == [1, 2, 3]


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
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(bootstrap_servers, typing.dlq_topic)
        if r.value is not None
    ]
    assert [(x.reason, x.offset) for x in letters] == [
        (DlqReason.UNDECODABLE_RECORD, written[1].offset)
    ]
    assert base64.b64decode(letters[0].value_b64 or "") == orjson.dumps(record("w-4", 2))
    assert worker.counters.restarts == 0


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
    topic = f"hook-idle-{uuid.uuid4().hex[:8]}.crm"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
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
