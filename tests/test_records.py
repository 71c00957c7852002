"""Outbound records built on the hot path serialise exactly as validated models do."""

from __future__ import annotations

import orjson

from processor.domain import ChangeReason, Decision
from processor.models import AuditRecord, CrmStatus, CrmSyncRecord
from processor.runtime.records import audit_record, crm_record
from processor.state import AppliedChange, AuditDecision


def test_crm_record_equals_the_validated_model() -> None:
    change = AppliedChange("s-1", CrmStatus.CLEARED, 4, ChangeReason.EXPIRED, None, 1700, "e-1")
    fast = crm_record(change)
    checked = CrmSyncRecord.model_validate(orjson.loads(fast.to_bytes()))
    assert fast.to_bytes() == checked.to_bytes()
    assert orjson.loads(fast.to_bytes())["event"] == "typing_indicator_update"


def test_audit_record_equals_the_validated_model() -> None:
    decision = AuditDecision("s-1", "typing", Decision.APPLIED, 3, "evt", 17, 12.5, "", 200, 2)
    fast = audit_record(decision, 3, "2026-11-24T00:00:00.000+00:00", "ab" * 16)
    checked = AuditRecord.model_validate(orjson.loads(fast.to_bytes()))
    assert fast.to_bytes() == checked.to_bytes()
    body = orjson.loads(fast.to_bytes())
    assert (body["partition"], body["offset"], body["trace_id"]) == (3, 17, "ab" * 16)
