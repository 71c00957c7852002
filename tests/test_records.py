"""Outbound record bytes built on the hot path equal what the validated models write."""

from __future__ import annotations

import tracemalloc

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain import ChangeReason, Decision
from processor.models import AuditRecord, CrmStatus, CrmSyncRecord
from processor.runtime.records import audit_bytes, crm_bytes
from processor.state import AppliedChange, AuditDecision

_TEXT = st.text(max_size=40)
_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)


@settings(max_examples=300)
@given(
    change=st.builds(
        AppliedChange,
        _IDS,
        st.sampled_from(CrmStatus),
        st.integers(0, 2**40),
        st.sampled_from(ChangeReason),
        st.none() | st.integers(0, 2**45),
        st.integers(0, 2**45),
        _TEXT,
    )
)
def test_crm_bytes_are_the_models_bytes(change: AppliedChange) -> None:
    fast = crm_bytes(change)
    model = CrmSyncRecord.model_validate(orjson.loads(fast))
    assert fast == model.to_bytes()


@settings(max_examples=300)
@given(
    decision=st.builds(
        AuditDecision,
        _TEXT,
        _TEXT,
        st.sampled_from(Decision),
        st.integers(0, 1000),
        st.none() | _TEXT,
        st.none() | st.integers(0, 2**40),
        st.floats(0, 1e6),
        _TEXT,
        st.none() | st.integers(100, 599),
        st.integers(0, 50),
    ),
    trace_id=st.none() | st.text("0123456789abcdef", min_size=32, max_size=32),
)
def test_audit_bytes_are_the_models_bytes(decision: AuditDecision, trace_id: str | None) -> None:
    fast = audit_bytes(decision, decision.partition, "2026-11-24T00:00:00.000+00:00", trace_id)
    model = AuditRecord.model_validate(orjson.loads(fast))
    assert fast == model.to_bytes()
    assert orjson.loads(fast)["trace_id"] == trace_id


def test_records_hold_about_their_own_size() -> None:
    # orjson's output holds its working buffer (KiBs); a backlog's turn keeps thousands
    for size in (10, 400, 3000):
        decision = AuditDecision("s", "typing", Decision.SUPPRESSED, 0, "e" * size, 7)
        change = AppliedChange("s", CrmStatus.TYPING, 1, ChangeReason.EVENT, None, 5, "e" * size)
        tracemalloc.start()
        try:
            audits = [audit_bytes(decision, 0, "2023-11-14T22:13:20.000Z") for _ in range(200)]
            crms = [crm_bytes(change) for _ in range(200)]
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        needed = sum(len(record) for record in audits + crms)
        assert held < 1.3 * needed + 400 * 64, (size, held, needed)
