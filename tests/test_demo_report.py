"""The demo's measures: truth against what was shown, the budget bound and fidelity; and a
short demo run over every target kind."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from processor.cli import build_parser
from processor.demo import runner
from processor.demo.report import (
    accuracy,
    budget_bound,
    bursts,
    calls_to_show,
    fidelity,
    percentile,
    read_once,
    refresh_aware_bound,
    shown_intervals,
    typing_shown_intervals,
)
from processor.demo.runner import (
    DemoError,
    DemoOptions,
    emulator_config,
    emulator_faults,
    run_demo,
)
from processor.demo.summary import summary_table
from processor.emulator.config import EmulatorConfig
from processor.emulator.messaging import MessagingStore
from processor.loadgen import LoadProfile, TrafficModel, messaging_ids
from processor.settings import Settings


def test_shown_intervals_from_webchat_history_and_typing_calls() -> None:
    history = [
        {"at_ms": 100, "typing_indicator": {"status": "typing"}},
        {"at_ms": 150, "typing_indicator": {"status": "paused"}},
        {"at_ms": 400, "typing_indicator": None},
        {"at_ms": 900, "typing_indicator": {"status": "typing"}},
    ]
    assert shown_intervals(history, end_ms=1000) == [(100, 400), (900, 1000)]
    calls = [
        {"at_ms": 0, "duration": 1000},
        {"at_ms": 800, "duration": 1000},  # a refresh before "shown until": no gap
        {"at_ms": 5000, "duration": 1000},
    ]
    assert typing_shown_intervals(calls) == [(0, 1800), (5000, 6000)]


def test_accuracy_counts_phantom_missed_and_latencies_of_shown_bursts_only() -> None:
    truth = {"a": [(1000, 3000)], "b": [(1000, 2000)]}
    shown = {"a": [(1100, 3200)]}  # b never shown: missed, but no latency recorded
    result = accuracy(truth, shown, end_ms=10_000)
    assert (result.truth_ms, result.shown_ms) == (3000, 2100)
    assert (result.phantom_ms, result.missed_ms) == (200, 100 + 1000)
    assert result.shown_truth_ms == 1900
    assert (result.set_latencies_ms, result.clear_latencies_ms) == ([100.0], [200.0])


def test_an_indicator_never_cleared_counts_its_clear_lag_up_to_the_end() -> None:
    # a's clear never came: still shown at the end (a messaging call may show past it)
    truth = {"a": [(1000, 2000)], "b": [(1000, 2000)], "c": [(9000, 12_000)]}
    shown = {"a": [(1000, 10_000)], "b": [(1000, 12_000)], "c": [(9000, 10_000)]}
    result = accuracy(truth, shown, end_ms=10_000)
    assert result.set_latencies_ms == [0.0, 0.0, 0.0]
    # c is still typing at the end: no clear is due yet
    assert result.clear_latencies_ms == [8000.0, 8000.0]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([100.0, 200.0], 50, 100.0),  # rank ceil(0.5 * 2) = 1
        ([float(v) for v in range(1, 11)], 50, 5.0),
        ([float(v) for v in range(1, 11)], 90, 9.0),
        ([float(v) for v in range(1, 5)], 25, 1.0),
        ([float(v) for v in range(1, 101)], 99, 99.0),
        ([float(v) for v in range(1, 151)], 99, 149.0),  # ceil(148.5)
        ([3.0, 1.0, 2.0], 100, 3.0),
        ([3.0, 1.0, 2.0], 0, 1.0),
        ([], 99, None),
    ],
)
def test_percentile_is_the_nearest_rank(
    values: list[float], q: float, expected: float | None
) -> None:
    assert percentile(values, q) == expected


def test_the_bound_is_the_longest_bursts_the_calls_pay_for() -> None:
    lengths = [9000, 1000, 5000, 7000, 3000]
    # 10 calls, 2 of them GETs: 4 webchat bursts of 2 calls each, the longest four
    assert budget_bound({2: lengths}, calls=10, reads=2) == 9000 + 7000 + 5000 + 3000
    # messaging bursts cost one call each
    assert budget_bound({1: lengths}, calls=3, reads=0) == 9000 + 7000 + 5000
    assert budget_bound({2: lengths}, calls=1, reads=2) == 0
    assert fidelity(0, 0) is None  # nothing could be shown: not measurable, not perfect
    assert fidelity(0, 3000) == 0.0
    assert fidelity(1500, 3000) == 0.5
    assert sorted(bursts({"a": [(0, 5), (10, 30)], "b": [(3, 4)]})) == [1, 5, 20]


@settings(max_examples=200)
@given(
    webchat=st.lists(st.integers(1, 20_000), max_size=12),
    messaging=st.lists(st.integers(1, 20_000), max_size=12),
    calls=st.integers(0, 40),
    reads=st.integers(0, 10),
)
def test_no_schedule_beats_the_bound(
    webchat: list[int], messaging: list[int], calls: int, reads: int
) -> None:
    """Any choice of bursts the calls can pay for shows no more than the bound."""
    bound = budget_bound({2: webchat, 1: messaging}, calls, reads)
    budget = calls - reads
    items = [(length, 2) for length in webchat] + [(length, 1) for length in messaging]
    best = 0
    for picked in itertools.product((False, True), repeat=min(len(items), 10)):
        chosen = [item for item, take in zip(items, picked, strict=False) if take]
        if sum(cost for _, cost in chosen) <= budget:
            best = max(best, sum(length for length, _ in chosen))
    assert best <= bound + 1e-6


@pytest.mark.parametrize("targets", ["webchat", "mixed"])
async def test_a_short_demo_runs_and_reports_every_measure(targets: str) -> None:
    options = DemoOptions(sessions=6, duration_s=4.0, seed=3, targets=targets)  # type: ignore[arg-type]
    result = await run_demo(options, Console(quiet=True))
    assert result.events > 0
    assert result.accuracy.truth_ms > 0
    assert result.accuracy.shown_truth_ms > 0.8 * result.accuracy.truth_ms
    assert result.fidelity is not None
    assert 0 < result.fidelity <= 1.5
    assert 0 < result.ceiling_ms <= result.bound_ms  # refreshes can only cost more
    assert result.api_calls <= result.budget_calls
    if targets == "mixed":
        assert set(result.by_kind) == {"webchat", "messaging"}
        assert result.typing_calls() > 0
    table = summary_table(result)
    measures = list(table.columns[0].cells)
    assert "fidelity (shown / bound)" in measures
    assert "fidelity ceiling under I2 (refreshes paid)" in measures
    assert "fidelity under I2 (shown / ceiling)" in measures
    assert result.ceiling_fidelity is not None
    assert result.fidelity_of_ceiling == pytest.approx(result.fidelity / result.ceiling_fidelity)
    assert ("missed typing time (messaging)" in measures) == (targets == "mixed")


async def test_a_shell_set_up_for_a_real_cluster_runs_the_demo_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo starts its own broker and emulator: the connection settings of a shell set
    up for production (TLS and SASL, topics made out of band, a replication factor, scopes)
    are not the embedded ones', and must not stop it."""
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "typing",
        "KAFKA_SASL_PASSWORD": "production-secret",
        "KAFKA_ENABLE_IDEMPOTENCE": "true",
        "TYPING_CREATE_TOPICS": "false",
        "TYPING_TOPIC_REPLICATION_FACTOR": "3",
        "GENESYSCLOUD_OAUTH_SCOPES": "webchat:read",
    }.items():
        monkeypatch.setenv(name, value)
    options = DemoOptions(sessions=4, duration_s=3.0, seed=3)
    result = await run_demo(options, Console(quiet=True))
    assert result.accuracy.shown_truth_ms > 0


@asynccontextmanager
async def idle_system(settings: Settings, console: Console) -> AsyncIterator[dict[str, Any]]:
    """A system under test that reads nothing and calls nothing."""
    counters: dict[str, Any] = {}
    yield counters
    counters.update(
        events=0, dead_letters=0, crm_records=0, audit_records=0, changelog_records=0,
        decisions={}, calls={},
    )  # fmt: skip


async def test_a_run_without_calls_reports_fidelity_as_not_measurable() -> None:
    options = DemoOptions(sessions=3, duration_s=2.0, seed=3)
    result = await run_demo(options, Console(quiet=True), idle_system)
    assert result.accuracy.truth_ms > 0  # there was typing, none of it shown
    assert (result.api_calls, result.bound_ms, result.ceiling_ms) == (0, 0.0, 0.0)
    assert result.fidelity is None
    assert result.ceiling_fidelity is None
    assert result.fidelity_of_ceiling is None
    table = summary_table(result)
    values = dict(zip(table.columns[0].cells, table.columns[1].cells, strict=True))
    assert values["fidelity (shown / bound)"] == "n/a (no calls)"
    assert values["fidelity ceiling under I2 (refreshes paid)"] == "n/a (no calls)"
    assert values["fidelity under I2 (shown / ceiling)"] == "n/a (no calls)"


async def test_an_unsettled_run_counts_no_phantom_beyond_its_end() -> None:
    """A run that ends with indicators still shown (`require_settled=False`) measures up to
    its end: a messaging call that shows on past it counts as phantom only until then, as a
    webchat indicator still set does."""
    options = DemoOptions(
        sessions=1,
        duration_s=1.0,
        seed=3,
        targets="messaging",
        require_settled=False,
        settle_s=1.0,  # the indicators stay an hour: no need to wait the default 15 s
    )
    (session_id,) = TrafficModel(LoadProfile(sessions=1, duration_s=1.0, seed=3)).session_ids()
    conversation, communication, integration = messaging_ids(session_id)
    hour = 3_600_000

    @asynccontextmanager
    async def stuck(settings: Settings, console: Console) -> AsyncIterator[dict[str, Any]]:
        """Shows both messaging targets of the session for an hour, then does nothing."""
        genesys = settings.genesys
        async with httpx.AsyncClient(base_url=genesys.api_url) as api:
            secret = genesys.oauthclient_secret.get_secret_value()
            token = await api.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(genesys.oauthclient_id, secret),
            )
            token.raise_for_status()
            auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
            path = f"/api/v2/conversations/messages/{conversation}/communications/{communication}"
            typing = {"type": "On", "duration": hour}
            agent = await api.post(f"{path}/typing", json={"typing": typing}, headers=auth)
            assert agent.status_code == 202
            customer = await api.post(
                f"/api/v2/conversations/messages/{integration}/inbound/open/event",
                json={
                    "channel": {
                        "from": {"id": f"{session_id}-customer", "idType": "Opaque"},
                        "time": "2024-01-01T00:00:00Z",
                    },
                    "events": [{"eventType": "Typing", "typing": typing}],
                },
                headers=auth,
            )
            assert customer.status_code in (200, 202)
        async with idle_system(settings, console) as counters:
            yield counters

    result = await run_demo(options, Console(quiet=True), stuck)
    # the calls went out just before the traffic started: shown from then until the end
    run_ms = result.budget_calls * 60_000 / options.api_rate_per_minute + 1_000
    assert result.accuracy.truth_ms > 0
    assert 0 < result.accuracy.shown_ms <= run_ms
    assert 0 < result.accuracy.phantom_ms <= run_ms - result.accuracy.shown_truth_ms


def test_the_demo_emulator_admits_the_burst_asked_for_else_five_seconds_of_the_rate() -> None:
    default = emulator_faults(DemoOptions(api_rate_per_minute=300))
    assert (default.rate_limit_per_minute, default.rate_limit_burst) == (300, 25)
    args = build_parser().parse_args(["demo", "--rate-limit", "300", "--rate-limit-burst", "5"])
    options = DemoOptions(
        api_rate_per_minute=args.rate_limit, rate_limit_burst=args.rate_limit_burst
    )
    assert emulator_faults(options).rate_limit_burst == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--rate-limit-burst", "0"])


def bursts_of(sessions: dict[str, list[int]]) -> list[int]:
    return [length for lengths in sessions.values() for length in lengths]


def test_the_bound_charges_a_get_per_session_the_bound_shows_not_per_session_the_run_showed() -> (
    None
):
    # a run showed b, c and d once each: 3 GETs and 3 bursts, 9 calls, 3 s of typing.
    # A scheduler showing only a, four bursts of 9 s, pays 1 GET and 8 calls: 36 s.
    sessions = {"a": [9000, 9000, 9000, 9000], "b": [1000], "c": [1000], "d": [1000]}
    assert budget_bound({2: bursts_of(sessions)}, calls=9, reads=3) == 27_000  # beaten
    items = read_once([[(length, 2) for length in lengths] for lengths in sessions.values()])
    assert refresh_aware_bound(items, calls=9) == 36_000
    # a GET is charged once per session, to its longest burst
    assert sorted(read_once([[(1000, 2), (8000, 4), (3000, 2)]])) == [
        (1000, 2), (3000, 2), (8000, 5)
    ]  # fmt: skip
    assert read_once([[], [(500, 1)]]) == [(500, 2)]


@settings(max_examples=200)
@given(
    webchat=st.lists(st.lists(st.integers(1, 20_000), min_size=1, max_size=4), max_size=4),
    messaging=st.lists(st.integers(1, 20_000), max_size=4),
    calls=st.integers(0, 30),
)
def test_no_schedule_paying_a_get_per_session_it_shows_beats_the_bound(
    webchat: list[list[int]], messaging: list[int], calls: int
) -> None:
    items = [*read_once([[(length, 2) for length in lengths] for lengths in webchat])]
    bound = refresh_aware_bound([*items, *((length, 1) for length in messaging)], calls)
    choices = [(s, length) for s, lengths in enumerate(webchat) for length in lengths]
    choices += [(None, length) for length in messaging]
    best = 0
    for picked in itertools.product((False, True), repeat=min(len(choices), 12)):
        chosen = [item for item, take in zip(choices, picked, strict=False) if take]
        sessions = {s for s, _ in chosen if s is not None}
        cost = sum(1 if s is None else 2 for s, _ in chosen) + len(sessions)
        if cost <= calls:
            best = max(best, sum(length for _, length in chosen))
    assert best <= bound + 1e-6


def test_the_demo_emulator_keeps_every_typing_call_of_a_long_run() -> None:
    """What a messaging target showed is measured from the emulator's typing calls at the
    end: a long run's first calls must still be there."""
    options = DemoOptions(duration_s=300, targets="messaging")
    config = emulator_config(options)
    faults = config.faults
    admitted = faults.rate_limit_burst + faults.rate_limit_per_minute * 10  # ten minutes
    assert admitted > EmulatorConfig().typing_events_kept  # the default would drop some
    store = MessagingStore(config.typing_events_kept)
    for n in range(admitted):
        store.record(n, 5000, kind="agent_typing", conversation_id=f"conv-{n % 500}")
    assert len(store.query(conversation_id="conv-0")) == len(range(0, admitted, 500))
    assert store.query(conversation_id="conv-0")[0]["at_ms"] == 0


def test_the_demo_emulator_keeps_every_indicator_change_of_a_long_run() -> None:
    """What a webchat session showed is measured from its history at the end: a long
    run's first changes must still be there, although the emulator's default drops them."""
    config = emulator_config(DemoOptions(duration_s=300))
    faults = config.faults
    # each change is one admitted call: ten minutes of the rate, all on one session
    admitted = faults.rate_limit_burst + faults.rate_limit_per_minute * 10
    assert admitted > EmulatorConfig().history_kept  # the default would drop some
    assert config.history_kept >= admitted


async def test_a_demo_whose_emulator_dropped_history_fails_rather_than_measures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = DemoOptions(sessions=1, duration_s=1.0, seed=3)
    (session_id,) = TrafficModel(LoadProfile(sessions=1, duration_s=1.0, seed=3)).session_ids()

    @asynccontextmanager
    async def flickering(settings: Settings, console: Console) -> AsyncIterator[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=settings.genesys.api_url) as admin:
            for indicator in ({"status": "typing"}, None):  # two changes, one kept
                changed = await admin.patch(
                    f"/emulator/sessions/{session_id}",
                    json={"custom_attributes": {"typingIndicator": indicator}},
                )
                changed.raise_for_status()
        async with idle_system(settings, console) as counters:
            yield counters

    monkeypatch.setattr(runner, "DEMO_HISTORY_KEPT", 1)
    with pytest.raises(DemoError, match="dropped"):
        await run_demo(options, Console(quiet=True), flickering)


def test_a_burst_within_one_timeout_costs_a_set_and_a_clear() -> None:
    assert calls_to_show((0, 3000), [(0, 5000)]) == 2


def test_a_long_burst_pays_the_latest_refreshes_i2_allows() -> None:
    # typing every second until 11 s, 5 s timeout: each call shows up to the deadline
    # known then, so the set shows to 5 s and refreshes just before 5, 9 and 13 s reach
    # 9, 13 and 16 s
    events = [(t, t + 5000) for t in range(0, 12_000, 1000)]
    assert calls_to_show((0, 16_000), events) == 5


def test_a_messaging_burst_pays_for_its_longest_duration_and_no_clear() -> None:
    assert calls_to_show((0, 8000), [(0, 8000)], max_span_ms=5000, clear=False) == 2
    assert calls_to_show((0, 4000), [(0, 4000)], max_span_ms=5000, clear=False) == 1


def test_refresh_aware_bound_takes_the_typing_per_call_first() -> None:
    # one GET, then 5 calls: the 12 s burst (4 calls, 3 s a call) whole, half the other
    assert refresh_aware_bound([(12_000, 4), (4000, 2)], calls=6, reads=1) == 14_000
    assert refresh_aware_bound([(12_000, 4), (4000, 2)], calls=1, reads=1) == 0
