"""`typing-processor crm-webhook`: the worker's life cycle, signals and its ops endpoint.

The worker serves `/healthz`, `/readyz` and `/metrics` on `TYPING_HTTP_PORT` exactly as
`run` does (same embedded server, same loop monitor); `/readyz` is the worker's own check.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from processor.runtime.abandoned import report_abandoned_kafka_work
from processor.runtime.command import observability
from processor.runtime.kafka import TopicError
from processor.runtime.tlscheck import check_tls
from processor.settings import KafkaSettings, TypingSettings, redacted_endpoint
from processor.stopsignals import take_stop_request
from processor.telemetry import Telemetry
from processor.telemetry.webhook import instrument_webhook
from processor.webhook import CrmWebhookWorker, WebhookConfig

log = logging.getLogger(__name__)


async def run_webhook(
    kafka: KafkaSettings, typing: TypingSettings, url: str, telemetry: Telemetry | None = None
) -> int:
    """Deliver CRM-sync records to `url` until SIGTERM/SIGINT; returns the exit code.

    Once signalled, the worker gives up on a Kafka cluster or CRM endpoint that does not
    answer in time (`WebhookConfig`'s graces), so that the process exits within DESIGN §5's
    10 s. Telemetry comes from the `OTEL_*` environment unless given. TLS that the cluster
    does not speak stops start-up (`ConfigError`, `check_tls`), and a missing topic or a
    DLQ that cannot take the largest dead letter with exit code 2, as `run` does.
    """
    await check_tls(kafka)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if take_stop_request():  # signalled while it was starting, before these handlers
        stop.set()
    telemetry = telemetry or Telemetry.from_environment(processor_metrics=False)
    config = WebhookConfig(
        url=url,
        authorization=typing.crm_webhook_authorization,
        timeout_s=typing.crm_webhook_timeout_ms / 1000,
        ca_file=typing.crm_webhook_ca_file,
        client_cert_file=typing.crm_webhook_client_cert_file,
        client_key_file=typing.crm_webhook_client_key_file,
    )
    worker = CrmWebhookWorker(kafka, typing, config, telemetry=telemetry)
    instrument_webhook(telemetry, worker)
    report_abandoned_kafka_work(loop)
    # the endpoint named, never its credential (its path may be one)
    log.info(
        "delivering the records of %s to the CRM endpoint %s",
        typing.crm_topic,
        redacted_endpoint(url),
    )
    try:
        async with observability(telemetry, typing.http_port, readiness=worker.readiness):
            await worker.run(stop)
    except TopicError as exc:
        log.error("topic set-up is wrong: %s", exc)
        return 2
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("CRM webhook worker stopped cleanly")
    return 0
