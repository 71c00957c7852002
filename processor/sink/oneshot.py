"""`typing-processor apply`: one indicator change, what the tutorial's script did, done right."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import orjson

from processor.clock import Clock, SystemClock
from processor.domain import (
    MESSAGING_MIN_DURATION_MS,
    AgentTypingTarget,
    Indicator,
    MessagingTarget,
    Outcome,
    Role,
    SessionState,
    SinkResult,
    Status,
)
from processor.settings import TypingSettings, load_genesys, load_typing
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig


async def apply_once(
    config: SinkConfig,
    session_id: str,
    status: Status,
    timeout_ms: int,
    clock: Clock | None = None,
) -> tuple[SinkResult, Indicator | None]:
    """Set (`typing`/`paused`) or clear (`stopped`) one session's indicator.

    A set reads the session first (one GET, which also yields the ETag) and sends the
    current indicator's version + 1; a clear sends null. Either way: one GET, one PATCH.

    The shown indicator is the only place Genesys keeps a version, and a clear removes
    it: a set after a clear (or on a session never set) starts again at 1. The command
    keeps no store of its own; `run` remembers versions in its changelog instead
    (DESIGN §4, I6), so its versions go on.
    """
    clock = clock or SystemClock()
    async with GenesysSink(config, clock=clock) as sink:
        if status is Status.STOPPED:
            return await sink.apply(session_id, None), None
        read, session = await sink.get_session(session_id)
        if session is None:
            return read, None
        if session.state is not SessionState.CONNECTED:
            error = f"session is {session.state or 'in an unknown state'}"
            return replace(read, outcome=Outcome.SESSION_NOT_CONNECTED, error=error), None
        now = clock.now_ms()
        desired = Indicator(
            status=status,
            originated_at=now,
            expires_at=now + timeout_ms,
            version=session.indicator_version + 1,
        )
        result = await sink.apply(session_id, desired)
        # Report the cost of the whole command: the GET and the PATCH.
        combined = replace(
            result,
            attempts=read.attempts + result.attempts,
            latency_ms=read.latency_ms + result.latency_ms,
            call_latencies_ms=read.call_latencies_ms + result.call_latencies_ms,
        )
        return combined, desired


async def apply_typing_once(
    config: SinkConfig, target: MessagingTarget, duration_ms: int
) -> SinkResult:
    """One messaging typing call (DESIGN §2b): shown from now for `duration_ms`."""
    async with GenesysSink(config) as sink:
        if isinstance(target, AgentTypingTarget):
            return await sink.agent_typing(
                target.conversation_id, target.communication_id, duration_ms
            )
        return await sink.open_messaging_typing(
            target.integration_id, target.from_id, target.from_id_type, target.nickname, duration_ms
        )


def run_apply(
    session_id: str, status: str, timeout_ms: int | None, target: MessagingTarget | None = None
) -> int:
    """The command: settings from the environment, one JSON line out; 0 when applied.

    With a messaging `target`, `typing`/`paused` send one typing call whose duration is
    the timeout clamped to [1000, `TYPING_MESSAGING_MAX_DURATION_MS`], and `stopped`
    sends nothing: there is no "Off", the indicator lapses by itself.
    """
    genesys, typing = load_genesys(), load_typing()
    config = SinkConfig.from_settings(genesys, typing)
    wanted = Status(status)
    timeout = timeout_ms or typing.timeout_matrix.timeout_ms(wanted, Role.CUSTOMER)
    if target is not None:
        return _report_typing(session_id, wanted, timeout, target, config, typing)
    result, desired = asyncio.run(apply_once(config, session_id, wanted, timeout))
    report: dict[str, object] = {
        "outcome": result.outcome.value,
        "session_id": session_id,
        "status": "cleared" if wanted is Status.STOPPED else wanted.value,
        "http_status": result.http_status,
        "attempts": result.attempts,
        "latency_ms": round(result.latency_ms, 2),
    }
    if desired is not None:
        report["version"] = desired.version
        report["expires_at"] = desired.expires_at
    if result.remote_state is not None:
        report["remote_state"] = result.remote_state.value
    if result.error:
        report["error"] = result.error
    print(orjson.dumps(report).decode())
    return 0 if result.outcome is Outcome.APPLIED else 1


def _report_typing(
    session_id: str,
    wanted: Status,
    timeout_ms: int,
    target: MessagingTarget,
    config: SinkConfig,
    typing: TypingSettings,
) -> int:
    kind = "agent_typing" if isinstance(target, AgentTypingTarget) else "open_messaging"
    report: dict[str, object] = {"session_id": session_id, "target": kind}
    if wanted is Status.STOPPED:
        report.update(outcome="lapses", error="no call: the indicator lapses by itself")
        print(orjson.dumps(report).decode())
        return 0
    duration = max(MESSAGING_MIN_DURATION_MS, min(typing.messaging_max_duration_ms, timeout_ms))
    result = asyncio.run(apply_typing_once(config, target, duration))
    report.update(
        outcome=result.outcome.value,
        status=wanted.value,
        duration_ms=duration,
        http_status=result.http_status,
        attempts=result.attempts,
        latency_ms=round(result.latency_ms, 2),
    )
    if result.ok:
        # from when the request that landed went out (a retry, or one that waited for
        # its token, shows typing later than the command began)
        report["shown_until"] = result.shown_until_ms
    if result.error:
        report["error"] = result.error
    print(orjson.dumps(report).decode())
    return 0 if result.outcome is Outcome.APPLIED else 1
