"""Metrics of the CRM webhook worker (`typing-processor crm-webhook`), read on collection.

- `typing_crm_webhook_deliveries_total{result}`: records the CRM endpoint accepted
  (`delivered`), refused for good (`refused`), attempts that failed and were retried
  (`retried`) and records that were no CRM-sync record, sent to the DLQ (`dead_letter`);
- `typing_crm_webhook_restarts_total`: restarts from the last commit after the cluster was
  lost;
- `typing_crm_webhook_ready`: 1 while the worker is a member of its group (with or without
  partitions);
- `typing_crm_webhook_held_seconds`: how long the record held longest of the worker's
  partitions (delivered concurrently) has been retried (0: none is held); per worker,
  since the others' deliveries say nothing of its partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from processor import __version__

from .core import Telemetry


class DeliveryCounts(Protocol):
    """What the worker counts (`processor.webhook.WebhookCounters`)."""

    delivered: int
    refused: int
    retries: int
    dead_letters: int
    restarts: int


class ObservedWorker(Protocol):
    """A running CRM webhook worker as its metrics see it."""

    @property
    def counters(self) -> DeliveryCounts:
        """Deliveries since the worker started."""
        ...

    @property
    def ready(self) -> bool:
        """A member of its group (with or without partitions)."""
        ...

    @property
    def held_s(self) -> float:
        """Seconds the record held longest has been retried (0: none is held)."""
        ...


def instrument_webhook(telemetry: Telemetry, worker: ObservedWorker) -> None:
    """Report `worker`'s deliveries and readiness on `telemetry` (nothing when it is off)."""
    if telemetry.meter_provider is None:
        return
    meter = telemetry.meter_provider.get_meter("processor", __version__)

    def deliveries(options: CallbackOptions) -> Iterable[Observation]:
        counts = worker.counters
        return [
            Observation(counts.delivered, {"result": "delivered"}),
            Observation(counts.refused, {"result": "refused"}),
            Observation(counts.retries, {"result": "retried"}),
            Observation(counts.dead_letters, {"result": "dead_letter"}),
        ]

    def restarts(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(worker.counters.restarts)]

    def ready(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(worker.ready))]

    def held(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(worker.held_s)]

    meter.create_observable_counter(
        "typing.crm_webhook.deliveries",
        [deliveries],
        unit="{record}",
        description="CRM-sync records delivered, refused by the endpoint, retried attempts and"
        " records sent to the DLQ",
    )
    meter.create_observable_counter(
        "typing.crm_webhook.restarts",
        [restarts],
        unit="{restart}",
        description="Restarts of CRM delivery from the last commit after the cluster was lost",
    )
    meter.create_observable_gauge(
        "typing.crm_webhook.ready",
        [ready],
        description="1 while the CRM webhook worker is a member of its group",
    )
    meter.create_observable_gauge(
        "typing.crm_webhook.held",
        [held],
        unit="s",
        description="Seconds the record held longest has been retried (0: none is held)",
    )
