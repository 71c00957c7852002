"""Observability: OpenTelemetry traces and metrics, Prometheus text, health and readiness.

`Telemetry` is built once at start-up (`Telemetry.from_environment()`) and handed to the
processor; `Telemetry.disabled()` is the free default. `OpsEndpoint` is the HTTP app of
`/metrics`, `/healthz` and `/readyz`.
"""

from processor.telemetry.core import Observed, PartitionStats, Telemetry
from processor.telemetry.http import OpsEndpoint
from processor.telemetry.tracing import PartitionTracing

__all__ = ["Observed", "OpsEndpoint", "PartitionStats", "PartitionTracing", "Telemetry"]
