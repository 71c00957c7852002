"""The embedded stack: local broker, Genesys emulator, synthetic traffic, the processor.

Everything runs on loopback in this process (the broker as a child process); nothing is
left behind when the demo ends, however it ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from processor.broker import LocalBroker
from processor.clock import SystemClock
from processor.domain import Status
from processor.emulator.config import EmulatorConfig
from processor.emulator.faults import Faults
from processor.emulator.server import serve_in_background
from processor.intervals import Interval, clip, merge
from processor.loadgen import (
    TYPIST_MIXES,
    LoadProfile,
    TargetMix,
    TrafficModel,
    TypistMix,
    expected_intervals,
    messaging_ids,
    produce,
)
from processor.models import AgentTypingTarget, Target, TypingEvent
from processor.runtime.service import TypingProcessor
from processor.settings import (
    SecurityProtocol,
    Settings,
    TypingSettings,
    load_genesys,
    load_kafka,
    load_typing,
)
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig

from .report import (
    Accuracy,
    accuracy,
    calls_to_show,
    fidelity,
    read_once,
    refresh_aware_bound,
    shown_intervals,
    typing_shown_intervals,
)

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"  # noqa: S105 - a local, throwaway emulator credential


class DemoError(Exception):
    """The demo stack did not come up or did not settle."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo runs."""

    sessions: int = 40
    duration_s: float = 20.0
    seed: int = 7
    partitions: int = 4
    api_rate_per_minute: int = 6000
    # Calls the emulator admits back to back (None: a twelfth of the rate, 5 s of it).
    rate_limit_burst: int | None = None
    latency_ms: float = 15.0
    jitter_ms: float = 25.0
    conflict_rate: float = 0.02
    error_rate: float = 0.01
    targets: TargetMix = "webchat"
    typists: TypistMix = "uniform"
    # An indicator still shown `settle_s` after the last deadline fails the run (else: the
    # run ends there, and what is still shown is measured as phantom up to its end).
    require_settled: bool = True
    settle_s: float = 15.0


@dataclass(slots=True)
class DemoResult:
    """What the demo measured.

    `accuracy` covers every session, `by_kind` the webchat and the messaging ones apart.
    `bound_ms` is the budget bound: the most typing any scheduler could show with the
    Genesys calls this run made (see `report.budget_bound`); `fidelity` = typing shown
    / bound, None when the bound is 0 (no call made, or no typing). `budget_calls` is
    what the rate limit allowed over the run.
    """

    events: int
    counters: dict[str, Any]
    stats: dict[str, Any]
    accuracy: Accuracy
    by_kind: dict[str, Accuracy] = field(default_factory=dict)
    bound_ms: float = 0.0
    ceiling_ms: float = 0.0
    budget_calls: float = 0.0
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def fidelity(self) -> float | None:
        """Typing shown as a share of the budget bound (None: not measurable, the bound
        is 0 because the run made no call or there was no typing)."""
        return fidelity(self.accuracy.shown_truth_ms, self.bound_ms)

    @property
    def ceiling_fidelity(self) -> float | None:
        """The most fidelity any scheduler that keeps I2 could reach on this traffic."""
        return fidelity(self.ceiling_ms, self.bound_ms)

    @property
    def fidelity_of_ceiling(self) -> float | None:
        """Typing shown as a share of what any scheduler that keeps I2 could show."""
        return fidelity(self.accuracy.shown_truth_ms, self.ceiling_ms)

    @property
    def api_calls(self) -> int:
        """Every Genesys API call the run made (token requests aside)."""
        return sum(
            int(count)
            for route, statuses in self.stats.get("by_route", {}).items()
            if route.split(" ", 1)[-1].startswith("/api/")
            for count in statuses.values()
        )

    def typing_calls(self, status: int | None = None) -> int:
        """Messaging typing calls (agent typing and Open Messaging events)."""
        total = 0
        for route, statuses in self.stats.get("by_route", {}).items():
            if not route.startswith("POST /api/v2/conversations/"):
                continue
            for code, count in statuses.items():
                if status is None or int(code) == status:
                    total += int(count)
        return total

    def calls(self, method: str, status: int | None = None) -> int:
        """Emulator API calls by method on the session route (optionally by status)."""
        total = 0
        for route, statuses in self.stats.get("by_route", {}).items():
            verb, _, path = route.partition(" ")
            if verb != method or not path.startswith("/api/v2/webchat/sessions"):
                continue
            for code, count in statuses.items():
                if status is None or int(code) == status:
                    total += int(count)
        return total

    def status_count(self, status: int) -> int:
        """API calls of any method answered with `status`."""
        return sum(
            int(count)
            for route, statuses in self.stats.get("by_route", {}).items()
            if route.split(" ", 1)[-1].startswith("/api/")
            for code, count in statuses.items()
            if int(code) == status
        )


def _settings(bootstrap: str, base_url: str, options: DemoOptions) -> Settings:
    # The tuning from the environment, as `run` takes it (a bad value is a `ConfigError`);
    # how to reach the cluster and Genesys is the embedded broker's and emulator's, whatever
    # a shell set up for a real cluster says (TLS, SASL, topics made out of band, scopes).
    return Settings(
        kafka=load_kafka(
            bootstrap_servers=bootstrap,
            security_protocol=SecurityProtocol.PLAINTEXT,
            sasl_mechanism=None,
            sasl_username=None,
            sasl_password=None,
            ssl_cafile=None,
            enable_idempotence=False,  # the embedded broker has no idempotent producers
        ),
        genesys=load_genesys(
            oauthclient_id=DEMO_CLIENT_ID,
            oauthclient_secret=SecretStr(DEMO_CLIENT_SECRET),
            api_url=base_url,
            login_url=base_url,
            oauth_scopes=None,
        ),
        typing=load_typing(
            group_id=f"demo-{uuid.uuid4().hex[:8]}",
            topic_partitions=options.partitions,
            create_topics=True,
            topic_replication_factor=1,
            api_rate_per_minute=options.api_rate_per_minute,
            audit_log_file=None,
            # the embedded broker answers a waiting fetch only at its deadline: an event
            # (a stop) would sit there for up to this long before the processor sees it
            fetch_max_wait_ms=5,
        ),
    )


SystemUnderTest = Callable[[Settings, Console], AbstractAsyncContextManager[dict[str, Any]]]
"""Consumes the demo's input topic and drives the emulator while the block runs (ready when
it is entered); the dict it yields holds its counters once the block has exited."""


@asynccontextmanager
async def typing_processor(settings: Settings, console: Console) -> AsyncIterator[dict[str, Any]]:
    """The processor as the demo's system under test."""
    counters: dict[str, Any] = {}
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = TypingProcessor(settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop), name="processor")
    try:
        ready = asyncio.ensure_future(processor.wait_ready())
        await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
        if not processor.ready:
            raise DemoError("the processor was not assigned its partitions within 60 s")
        console.print(
            f"processor ready: group {settings.typing.group_id},"
            f" {len(processor.workers)} partitions restored"
        )
        yield counters
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()
    task.result()
    counters.update(
        events=processor.counters.events,
        dead_letters=processor.counters.dead_letters,
        crm_records=processor.counters.crm_records,
        audit_records=processor.counters.audit_records,
        changelog_records=processor.counters.changelog_records,
        decisions=dict(processor.counters.decisions),
        calls=dict(processor.counters.calls),
    )


def emulator_faults(options: DemoOptions) -> Faults:
    """How the demo's emulator misbehaves: latency, conflicts, errors and its rate limit."""
    burst = options.rate_limit_burst or max(1, options.api_rate_per_minute // 12)
    return Faults(
        latency_ms=options.latency_ms,
        jitter_ms=options.jitter_ms,
        conflict_rate=options.conflict_rate,
        error_rate=options.error_rate,
        rate_limit_per_minute=options.api_rate_per_minute,
        rate_limit_burst=burst,
        seed=options.seed,
    )


DEMO_TYPING_CALLS_KEPT = 1_000_000
"""Typing calls the demo's emulator keeps: what a messaging target showed is measured from
them at the end, so none may be dropped (the emulator's default keeps 10,000, which a
demo with messaging targets and the default rate passes in a few minutes)."""


DEMO_HISTORY_KEPT = 1_000_000
"""Changes of each webchat session's indicator the demo's emulator keeps: what a session
showed is measured from its whole history at the end (the emulator's default keeps 1,000
a session, which one session patched at the default rate passes in ten seconds). Each
change is an admitted call, so this covers any run of under two and a half hours at
the default rate; a run whose history was cut fails (`DemoError`) rather than measure it."""


def emulator_config(options: DemoOptions) -> EmulatorConfig:
    """The demo's emulator: its one client, `emulator_faults`, and every typing call and
    every indicator change kept."""
    return EmulatorConfig(
        clients=EmulatorConfig.single_client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET).clients,
        faults=emulator_faults(options),
        typing_events_kept=DEMO_TYPING_CALLS_KEPT,
        history_kept=DEMO_HISTORY_KEPT,
    )


async def run_demo(
    options: DemoOptions, console: Console, system: SystemUnderTest = typing_processor
) -> DemoResult:
    """Run the whole stack once and measure it."""
    console.print("[bold]starting[/] local broker (Tansu) and Genesys emulator")
    broker = LocalBroker()
    broker.start()
    try:
        config = emulator_config(options)
        async with serve_in_background(config) as emulator:
            return await _run_stack(options, console, broker, emulator.base_url, system)
    finally:
        broker.stop()


async def _run_stack(
    options: DemoOptions,
    console: Console,
    broker: LocalBroker,
    base_url: str,
    system: SystemUnderTest,
) -> DemoResult:
    settings = _settings(broker.bootstrap_servers, base_url, options)
    spread, agent_scale = TYPIST_MIXES[options.typists]
    model = TrafficModel(
        LoadProfile(
            sessions=options.sessions,
            duration_s=options.duration_s,
            seed=options.seed,
            targets=options.targets,
            typist_spread=spread,
            agent_burst_scale=agent_scale,
        )
    )
    clock = SystemClock()
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as admin:
        for session_id in model.session_ids():
            response = await admin.post(
                "/emulator/sessions", json={"session_id": session_id, "state": "connected"}
            )
            response.raise_for_status()
            conversation, communication, integration = messaging_ids(session_id)
            if options.targets != "webchat":
                created = await admin.post(
                    "/emulator/conversations",
                    json={"conversation_id": conversation, "communication_ids": [communication]},
                )
                created.raise_for_status()
                created = await admin.post(
                    "/emulator/integrations", json={"integration_id": integration}
                )
                created.raise_for_status()
        console.print(
            f"created {options.sessions} sessions in the emulator (targets: {options.targets})"
        )

        async with system(settings, console) as counters:
            start_ms = clock.now_ms() + 200
            schedule = model.schedule(start_ms)
            events = [item.event for item in schedule.events]
            await _send_traffic(settings, schedule, clock, start_ms, console)
            truth = expected_intervals(events, settings.typing.timeout_matrix)
            last_deadline = max((iv[-1][1] for iv in truth.values() if iv), default=start_ms)
            targets = _targets(events)
            shown: dict[str, list[Interval]] = {}
            histories: dict[str, list[dict[str, Any]]] = {}
            polled_at = start_ms

            async def all_clear() -> bool:
                """Read what the emulator shows; True when nothing is shown any more.

                What was shown is measured up to this poll's time, for every target kind
                alike: a webchat indicator still set and a messaging call that shows on
                past it are both cut there (the run's end, if this is its last poll).
                """
                nonlocal polled_at
                now = polled_at = clock.now_ms()
                still_shown = False
                for session_id in model.session_ids():
                    got = await admin.get(f"/emulator/sessions/{session_id}/history")
                    got.raise_for_status()
                    body = got.json()
                    if body.get("dropped", 0):
                        raise DemoError(
                            f"the emulator dropped the oldest {body['dropped']:,} changes of"
                            f" session {session_id}: what it showed cannot be measured;"
                            " run shorter or slower"
                        )
                    histories[session_id] = body["history"]
                    webchat = shown_intervals(histories[session_id], now)
                    target = targets.get(session_id)
                    messaging: list[Interval] = []
                    if target is not None:
                        calls = await admin.get("/emulator/typing", params=_typing_query(target))
                        calls.raise_for_status()
                        messaging = typing_shown_intervals(calls.json()["typing"])
                    shown[session_id] = clip(merge([*webchat, *messaging]), now)
                    history = histories[session_id]
                    still_shown = still_shown or bool(
                        (history and history[-1]["typing_indicator"] is not None)
                        or (messaging and messaging[-1][1] > now)
                    )
                return not still_shown

            console.print("traffic sent; waiting for every indicator to be cleared")
            settle_until = last_deadline + round(options.settle_s * 1000)
            while not await all_clear():
                if clock.now_ms() > settle_until:
                    if not options.require_settled:
                        break  # what is still shown counts as phantom up to the last poll
                    raise DemoError(
                        f"indicators were still shown {options.settle_s:g} s after the last"
                        " deadline"
                    )
                await asyncio.sleep(0.25)  # polling the emulator's view, not synchronisation
            end_ms = polled_at  # the time the measured view was read
        stats = (await admin.get("/emulator/stats")).json()
    accepted = sum(
        int(statuses.get("202", 0))
        for route, statuses in stats.get("by_route", {}).items()
        if route.startswith("POST /api/v2/conversations/")
    )
    if accepted > DEMO_TYPING_CALLS_KEPT:
        raise DemoError(
            f"the emulator kept {DEMO_TYPING_CALLS_KEPT:,} of {accepted:,} typing calls:"
            " what messaging targets showed cannot be measured; run shorter or slower"
        )
    kinds = {sid: ("webchat" if targets.get(sid) is None else "messaging") for sid in truth}
    by_kind = {
        kind: accuracy(
            {sid: iv for sid, iv in truth.items() if kinds[sid] == kind},
            {sid: iv for sid, iv in shown.items() if kinds.get(sid) == kind},
            end_ms,
        )
        for kind in sorted(set(kinds.values()))
    }
    result = DemoResult(
        events=len(schedule.events),
        counters=counters,
        stats=stats,
        accuracy=accuracy(truth, shown, end_ms),
        by_kind=by_kind,
        budget_calls=options.api_rate_per_minute * (end_ms - start_ms) / 60_000,
        history=histories,
    )
    result.bound_ms, result.ceiling_ms = budget_bounds(
        events, truth, kinds, settings.typing, result.api_calls
    )
    return result


def budget_bounds(
    events: list[TypingEvent],
    truth: dict[str, list[Interval]],
    kinds: dict[str, str],
    typing: TypingSettings,
    calls: int,
) -> tuple[float, float]:
    """The budget bound and the ceiling under I2 of a run that made `calls` Genesys calls.

    The bound: each burst at two calls (a set and its clear; one for a messaging target).
    The ceiling: each at the calls it takes to show it whole (`calls_to_show`). In both,
    every webchat session shown also costs one GET (`read_once`), whichever sessions a
    scheduler picks, not the sessions this run happened to show.
    """
    webchat: dict[str, list[tuple[int, int]]] = {}
    shown_whole: dict[str, list[tuple[int, int]]] = {}
    messaging: list[tuple[int, int]] = []
    messaging_whole: list[tuple[int, int]] = []
    for sid, length, needed in _bursts_with_calls(events, truth, kinds, typing):
        if kinds[sid] == "webchat":
            webchat.setdefault(sid, []).append((length, 2))
            shown_whole.setdefault(sid, []).append((length, needed))
        else:
            messaging.append((length, 1))
            messaging_whole.append((length, needed))
    bound = refresh_aware_bound([*read_once(webchat.values()), *messaging], calls)
    ceiling = refresh_aware_bound([*read_once(shown_whole.values()), *messaging_whole], calls)
    return bound, ceiling


def _bursts_with_calls(
    events: list[TypingEvent],
    truth: dict[str, list[Interval]],
    kinds: dict[str, str],
    typing: TypingSettings,
) -> Iterator[tuple[str, int, int]]:
    """Each true burst's session, length and the calls it takes to show it whole
    (`calls_to_show`)."""
    deadlines: dict[str, list[tuple[int, int]]] = {}
    for event in events:
        if event.status is not Status.STOPPED:
            timeout = typing.timeout_matrix.event_timeout_ms(event)
            deadlines.setdefault(event.session_id, []).append(
                (event.occurred_at, event.occurred_at + timeout)
            )
    for sid, intervals in truth.items():
        messaging = kinds[sid] == "messaging"
        known = deadlines.get(sid, [])
        for start, stop in intervals:
            inside = [item for item in known if start <= item[0] < stop]
            calls = calls_to_show(
                (start, stop),
                inside,
                max_span_ms=typing.messaging_max_duration_ms if messaging else None,
                clear=not messaging,
            )
            yield sid, stop - start, calls


def _targets(events: list[TypingEvent]) -> dict[str, Target | None]:
    """Each session's target, as its latest event names it."""
    return {event.session_id: event.target for event in events}


def _typing_query(target: Target) -> dict[str, str]:
    if isinstance(target, AgentTypingTarget):
        return {"conversation_id": target.conversation_id}
    return {"integration_id": target.integration_id, "from_id": target.from_id}


async def _send_traffic(
    settings: Settings, schedule: Any, clock: SystemClock, start_ms: int, console: Console
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=2)
    await producer.start()
    try:
        with Progress(
            TextColumn("[bold]typing traffic"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("traffic", total=len(schedule.events))
            await produce(
                producer,
                settings.typing.input_topic,
                schedule,
                clock,
                start_ms=start_ms,
                on_sent=lambda n: progress.update(bar, completed=n),
            )
    finally:
        await producer.stop()
