"""Outbound payloads built from what the state engine emitted."""

from __future__ import annotations

from processor.models import AuditRecord, CrmSyncRecord
from processor.state import AppliedChange, AuditDecision


def crm_record(change: AppliedChange) -> CrmSyncRecord:
    """The CRM-sync record of one change applied in Genesys."""
    # The engine's values are already valid: skip re-validating them on the hot path.
    return CrmSyncRecord.model_construct(
        timestamp=change.applied_at,
        session_id=change.session_id,
        status=change.status,
        event_id=change.event_id,
        version=change.version,
        reason=change.reason,
        expires_at=change.expires_at,
    )


def audit_record(
    decision: AuditDecision, partition: int, timestamp: str, trace_id: str | None = None
) -> AuditRecord:
    """The audit record of one decision (`timestamp` is ISO-8601 UTC)."""
    return AuditRecord.model_construct(
        timestamp=timestamp,
        session_id=decision.session_id,
        indicator_status=decision.indicator_status,
        result=decision.result,
        latency_ms=decision.latency_ms,
        error=decision.error,
        event_id=decision.event_id,
        http_status=decision.http_status,
        attempts=decision.attempts,
        trace_id=trace_id,
        partition=partition,
        offset=decision.offset,
    )
