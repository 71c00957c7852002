"""Synthetic typing traffic: realistic sessions that type in bursts, pause, stop or abandon.

`TrafficModel` is pure (a seed in, a time-ordered schedule out), so the demo can compute the
ground truth of when each indicator should have been shown; `produce` sends a schedule to
the input topic in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from processor.clock import Clock, SystemClock
from processor.domain import Role, Status
from processor.intervals import merge
from processor.models import (
    AgentTypingTarget,
    OpenMessagingTarget,
    Participant,
    Target,
    TypingEvent,
)
from processor.runtime.kafka import client_options
from processor.runtime.tlscheck import check_tls
from processor.settings import KafkaSettings, TimeoutMatrix, TypingSettings

TargetMix = Literal["webchat", "messaging", "mixed"]
TARGET_MIXES: tuple[TargetMix, ...] = ("webchat", "messaging", "mixed")
TypistMix = Literal["uniform", "varied", "agents-long"]
TYPIST_MIXES: dict[TypistMix, tuple[tuple[float, float], float]] = {
    "uniform": ((1.0, 1.0), 1.0),  # everyone types alike
    "varied": ((0.3, 3.0), 1.0),  # each participant's bursts 0.3x to 3x as long
    "agents-long": ((0.5, 1.5), 4.0),  # agents compose answers four times as long
}
"""Named (`typist_spread`, `agent_burst_scale`) pairs of `LoadProfile`."""
# Fixed namespace: a session's conversation and integration ids are the same every run.
_IDS = uuid.UUID("1d3f7a52-6c1e-4f0b-9b8e-2a7d5c4e3f10")
# How long a run that failed waits for the producer to flush what it still holds.
_GIVE_UP_STOP_S = 2.0


def messaging_ids(session_id: str) -> tuple[str, str, str]:
    """(conversation id, communication id, integration id) of a synthetic session."""
    conversation, communication, integration = (
        str(uuid.uuid5(_IDS, f"{session_id}/{part}"))
        for part in ("conversation", "communication", "integration")
    )
    return conversation, communication, integration


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Shape of the traffic."""

    sessions: int = 50
    duration_s: float = 20.0
    seed: int = 7
    keystroke_gap_ms: tuple[int, int] = (250, 900)
    burst_ms: tuple[int, int] = (1_000, 8_000)
    idle_ms: tuple[int, int] = (1_000, 5_000)
    # after a burst: pause, stop (message sent), or abandon (no event at all)
    pause_weight: float = 0.45
    stop_weight: float = 0.40
    abandon_weight: float = 0.15
    agent_share: float = 0.3
    # participants differ: each session's bursts are scaled by a factor drawn from
    # `typist_spread` (its own speed), and agents' by `agent_burst_scale` too
    typist_spread: tuple[float, float] = (1.0, 1.0)
    agent_burst_scale: float = 1.0
    session_prefix: str = "sess"
    # where indicators are shown: "webchat" (no target), "messaging" (agents' typing to
    # the customer, customers' typing from an Open Messaging integration), or "mixed"
    targets: TargetMix = "webchat"


@dataclass(frozen=True, slots=True)
class Scheduled:
    """One event and when (ms after the start) to send it."""

    at_ms: int
    event: TypingEvent


@dataclass(slots=True)
class Schedule:
    """Every event of a run, time-ordered, and the session ids used."""

    events: list[Scheduled] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)


class TrafficModel:
    """Deterministic generator of typing traffic for `profile`."""

    def __init__(self, profile: LoadProfile) -> None:
        self.profile = profile

    def session_ids(self) -> list[str]:
        """Session ids of this profile (valid Genesys session ids)."""
        return [f"{self.profile.session_prefix}-{i:06d}" for i in range(self.profile.sessions)]

    def target_of(self, session_id: str, role: Role) -> Target | None:
        """Where a session's indicator is shown under this profile's target mix."""
        mix = self.profile.targets
        if mix == "webchat":
            return None
        if mix == "mixed" and int(session_id.rsplit("-", 1)[-1]) % 3 == 0:
            return None  # a third of the sessions stay on the webchat session
        conversation, communication, integration = messaging_ids(session_id)
        if role is Role.AGENT:
            return AgentTypingTarget(
                kind="agent_typing", conversation_id=conversation, communication_id=communication
            )
        return OpenMessagingTarget(
            kind="open_messaging", integration_id=integration, from_id=f"{session_id}-customer"
        )

    def typist_scale(self, session_id: str, role: Role) -> float:
        """How much longer than the profile's `burst_ms` this participant's bursts last."""
        p = self.profile
        low, high = p.typist_spread
        # a generator of its own: the schedule's draws stay the same whatever the spread
        scale = random.Random(f"{p.seed}/{session_id}").uniform(low, high)
        return scale * (p.agent_burst_scale if role is Role.AGENT else 1.0)

    def schedule(self, start_ms: int) -> Schedule:
        """All events of the run, with `occurred_at` = `start_ms` + their offset."""
        p = self.profile
        rng = random.Random(p.seed)
        end = int(p.duration_s * 1000)
        out = Schedule(session_ids=self.session_ids())
        # Event ids name the run (seed and start) as well: the processor drops an id it
        # has seen, so a second run, or one with another seed, must not repeat them.
        run = uuid.uuid5(_IDS, f"run/{p.seed}/{start_ms}").hex[:16]
        event_ids = (f"lg-{run}-{serial:08d}" for serial in itertools.count(1))
        for session_id in out.session_ids:
            role = Role.AGENT if rng.random() < p.agent_share else Role.CUSTOMER
            participant = Participant(id=f"{session_id}-{role.value}", role=role)
            target = self.target_of(session_id, role)
            scale = self.typist_scale(session_id, role)
            t = rng.randint(0, max(1, end // 4))
            while t < end:
                burst_end = min(end, t + int(rng.randint(*p.burst_ms) * scale))
                while t < burst_end:
                    event = self._event(
                        next(event_ids),
                        session_id,
                        Status.TYPING,
                        start_ms + t,
                        participant,
                        target,
                    )
                    out.events.append(Scheduled(t, event))
                    t += rng.randint(*p.keystroke_gap_ms)
                if t >= end:
                    break
                choice = rng.choices(
                    (Status.PAUSED, Status.STOPPED, None),
                    weights=(p.pause_weight, p.stop_weight, p.abandon_weight),
                )[0]
                if choice is not None:
                    event = self._event(
                        next(event_ids),
                        session_id,
                        choice,
                        start_ms + t,
                        participant,
                        target,
                    )
                    out.events.append(Scheduled(t, event))
                t += rng.randint(*p.idle_ms)
        out.events.sort(key=lambda s: (s.at_ms, s.event.event_id))
        return out

    @staticmethod
    def _event(
        event_id: str,
        session_id: str,
        status: Status,
        occurred_at: int,
        participant: Participant,
        target: Target | None,
    ) -> TypingEvent:
        return TypingEvent(
            event_id=event_id,
            session_id=session_id,
            status=status,
            occurred_at=occurred_at,
            participant=participant,
            channel="web",
            target=target,
        )


def expected_intervals(
    events: list[TypingEvent], matrix: TimeoutMatrix
) -> dict[str, list[tuple[int, int]]]:
    """Ground truth: per session, when an indicator should be shown (DESIGN §4 rules)."""
    by_session: dict[str, list[TypingEvent]] = {}
    for event in sorted(events, key=lambda e: e.occurred_at):
        by_session.setdefault(event.session_id, []).append(event)
    truth: dict[str, list[tuple[int, int]]] = {}
    for session_id, items in by_session.items():
        intervals: list[tuple[int, int]] = []
        deadline = 0
        previous: Status | None = None
        for i, event in enumerate(items):
            if event.status is Status.STOPPED:
                previous = None
                continue
            timeout = matrix.event_timeout_ms(event)
            own = event.occurred_at + timeout
            deadline = max(deadline, own) if previous is event.status else own
            previous = event.status
            following = items[i + 1].occurred_at if i + 1 < len(items) else None
            stop = deadline if following is None else min(deadline, following)
            if following is not None and following >= deadline:
                previous = None
            intervals.append((event.occurred_at, stop))
        truth[session_id] = merge(intervals)
    return truth


class TrafficError(Exception):
    """The broker stopped taking events; `acknowledged` of `scheduled` had been."""

    def __init__(self, acknowledged: int, scheduled: int, reason: BaseException) -> None:
        super().__init__(
            f"the broker stopped taking events ({reason!r}); it had acknowledged"
            f" {acknowledged} of {scheduled}"
        )
        self.acknowledged = acknowledged
        self.scheduled = scheduled
        self.reason = reason


class RateCap:
    """At most `rate` sends a second, as a true limit: each send is due `1/rate` s after
    the previous one was handed over, by the clock. A stall (the event loop blocked, the
    producer's buffer full) skips the slots it missed instead of sending them at once
    after it."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"a rate cap must be positive, got {rate}")
        self.spacing_ms = 1000 / rate
        self._next_ms = float("-inf")

    def due(self, scheduled_ms: float) -> float:
        """When a send scheduled for `scheduled_ms` may go: never before the next slot."""
        return max(scheduled_ms, self._next_ms)

    def sent(self, at_ms: float) -> None:
        """A send was handed over at `at_ms`: the next slot is one spacing later."""
        self._next_ms = at_ms + self.spacing_ms


async def produce(
    producer: AIOKafkaProducer,
    topic: str,
    schedule: Schedule,
    clock: Clock,
    *,
    start_ms: int,
    max_rate: float | None = None,
    on_sent: Callable[[int], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Send each event when its time comes (real time); returns how many were sent.

    With `max_rate` (events/s) sending never goes faster (`RateCap`: a stall of the loop
    or of the producer skips the slots it missed, never sends them in a burst); an event
    sent later than its schedule gets the actual send time as `occurred_at`, so a cap
    never makes it stale. `sleep` waits that many seconds (a test's follows its clock).
    Raises `TrafficError` as soon as the broker failed to take one: the events after it
    are not sent, and what it acknowledged is counted.
    """
    sent = 0
    acknowledged = 0
    failures: list[BaseException] = []
    pending: list[asyncio.Future[Any]] = []
    cap = RateCap(max_rate) if max_rate else None

    def settled(future: asyncio.Future[Any]) -> None:
        nonlocal acknowledged
        if future.cancelled():
            return
        failure = future.exception()
        if failure is None:
            acknowledged += 1
        else:
            failures.append(failure)

    def failed(reason: BaseException) -> TrafficError:
        return TrafficError(acknowledged, len(schedule.events), reason)

    try:
        for item in schedule.events:
            due = start_ms + item.at_ms if cap is None else cap.due(start_ms + item.at_ms)
            delay = due - clock.now_ms()
            if delay > 0:
                await sleep(delay / 1000)  # pacing real traffic, not synchronisation
            if failures:
                raise failed(failures[0])
            event = item.event
            now = clock.now_ms()
            if cap is not None and now > event.occurred_at + cap.spacing_ms:
                event = event.model_copy(update={"occurred_at": now})
            future = await producer.send(topic, event.to_bytes(), key=event.session_id.encode())
            if cap is not None:
                cap.sent(clock.now_ms())
            future.add_done_callback(settled)
            pending.append(future)
            sent += 1
            if on_sent is not None:
                on_sent(sent)
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
        if pending:
            await asyncio.gather(*pending)
    except KafkaError as exc:
        raise failed(exc) from None
    return sent


async def run_loadgen(
    kafka: KafkaSettings,
    typing: TypingSettings,
    profile: LoadProfile,
    *,
    max_rate: float | None = None,
    clock: Clock | None = None,
) -> int:
    """`typing-processor loadgen`: generate `profile` into the input topic in real time.

    TLS that the cluster does not speak raises `ConfigError` (`check_tls`) before any event.
    """
    await check_tls(kafka)
    clock = clock or SystemClock()
    producer = AIOKafkaProducer(
        **client_options(kafka), client_id=f"{kafka.client_id}-loadgen", linger_ms=5, acks="all"
    )
    try:
        await producer.start()
        start_ms = clock.now_ms() + 100
        schedule = TrafficModel(profile).schedule(start_ms)
        return await produce(
            producer, typing.input_topic, schedule, clock, start_ms=start_ms, max_rate=max_rate
        )
    except TrafficError:
        # What is still buffered would be retried until it expires (the client's request
        # timeout, again): the run has failed, so the broker gets a moment, not that long.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_GIVE_UP_STOP_S):
                await producer.stop()
        raise
    finally:
        await producer.stop()  # at once when already stopped (or given up on)
