"""The per-partition state engine: events, clock ticks and sink results in; work out.

Pure and synchronous: no I/O, no wall clock (only the injected `Clock`), deterministic for
a given sequence of inputs and clock readings. The Kafka and HTTP edges drive it:

    store.on_event(event, offset)   # for each valid input record, in offset order
    store.on_tick()                 # at next_wakeup_ms() (or periodically)
    work = store.take_work(n)       # hand to the sink; later store.on_result(w, result)
    out = store.drain()             # produce out.changelog, then audits/changes; then commit

Rules (DESIGN §4):
- Ordering: an event older (by raw `occurred_at`) than the newest accepted event of its
  session is out of order and never overrides it (audited `stale`). Equal times are
  accepted in offset order.
- Staleness (I5): an event whose `occurred_at + timeout` is past never sets an indicator;
  if it is the newest word on the session and names another status, it clears instead.
- Deadline: `min(occurred_at, now) + timeout`, moved later (never earlier) by later events
  of the same status. Genesys' `expiresAt` is the deadline known when the call is made.
- Suppression (I3): a repeat of the wanted status within `suppression_window_ms` of the
  last event that asked for it only extends the deadline. Repeats never cause a call by
  themselves; keeping `expiresAt` ahead is the refresh timer's job (I2): once the remote
  `expiresAt` is within `refresh_fraction * timeout` of now while the deadline lies beyond
  it, one refresh carries the deadline known then. Refreshing late carries a later
  deadline, so refreshes stay sparse (spacing in `EngineConfig.refresh_fraction`).
- Latest wins: work is computed when taken, from the session's state at that moment, so a
  session never has more than one queued item and a burst during a call collapses into one
  follow-up. Clears are taken before sets; a set with too little life left is dropped.
- Failures keep the wanted state and retry after an exponential backoff; what is retried
  is recomputed then, so a stale set is never re-sent while a clear always is.
- Idle sessions (nothing wanted, shown, pending or uncertain) are forgotten after
  `idle_evict_ms`; so are sessions Genesys reports closed, unknown or invalid.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from processor.domain import (
    ChangeReason,
    Decision,
    Indicator,
    Outcome,
    Role,
    SinkResult,
    Status,
)
from processor.models import CrmStatus
from processor.state.changelog import encode, tombstone
from processor.state.config import EngineConfig
from processor.state.dedupe import EventIdMemory
from processor.state.recovery import latest_sessions
from processor.state.session import PersistedSession, Session
from processor.state.timers import TimerWheel
from processor.state.work import (
    AppliedChange,
    AuditDecision,
    Emitted,
    Work,
    WorkKind,
    crm_event_id,
)

if TYPE_CHECKING:
    from processor.clock import Clock
    from processor.models import TypingEvent

# The event that asked for a session's pending change: (event_id, offset, its status).
Cause = tuple[str, int, Status]

_FORGET = {
    Outcome.SESSION_NOT_FOUND: Decision.SESSION_NOT_FOUND,
    Outcome.SESSION_NOT_CONNECTED: Decision.SESSION_NOT_CONNECTED,
    Outcome.REJECTED: Decision.REJECTED,
}
_RETRY = {
    Outcome.CONFLICT: Decision.CONFLICT,
    Outcome.RATE_LIMITED: Decision.RATE_LIMITED,
    Outcome.FAILED: Decision.FAILED,
    Outcome.AUTH_CONFIG_ERROR: Decision.AUTH_CONFIG_ERROR,
}
_CLEARED = "cleared"
# Enum members bound once for the hot paths: `Status.TYPING` goes through the enum
# metaclass on every read (about 60 ns, ten times a global).
_STOPPED = Status.STOPPED
_CUSTOMER = Role.CUSTOMER
_DUPLICATE = Decision.DUPLICATE
_STALE = Decision.STALE
_SUPPRESSED = Decision.SUPPRESSED


class PartitionStore:
    """State of every session of one input partition, and the work it implies."""

    def __init__(self, partition: int, config: EngineConfig, clock: Clock) -> None:
        self.partition = partition
        self._config = config
        self._clock = clock
        self._window = config.suppression_window_ms
        self._sessions: dict[str, Session] = {}
        self._dedupe = EventIdMemory(config.dedupe_capacity)
        self._timers = TimerWheel(config.timer_resolution_ms)
        # Ready work, by session id; clears are always taken first.
        self._clears: OrderedDict[str, None] = OrderedDict()
        self._sets: OrderedDict[str, None] = OrderedDict()
        # Calls in flight: the work and whether the remote state was uncertain before it.
        self._in_flight: dict[str, tuple[Work, bool]] = {}
        # Failed sessions: (retry_at, consecutive failures).
        self._backoff: dict[str, tuple[int, int]] = {}
        self._causes: dict[str, Cause] = {}
        self._dirty: dict[str, None] = {}
        self._audits: list[AuditDecision] = []
        self._changes: list[AppliedChange] = []
        # Timeouts interned: one int object shared by every session with the same value.
        self._ints: dict[int, int] = {}
        self._leads: dict[int, int] = {}  # refresh lead by timeout (few distinct values)
        self._default_timeouts = {
            status: {role: config.default_timeout_ms(status, role) for role in Role}
            for status in (Status.TYPING, Status.PAUSED)
        }

    # ------------------------------------------------------------------ inputs

    def on_event(self, event: TypingEvent, offset: int) -> None:
        """Decide what a valid input event changes; may queue work and emit audits."""
        now = self._clock.now_ms()
        eid = event.event_id
        status = event.status
        sid = event.session_id
        if not self._dedupe.add(eid):
            self._audit(sid, status, _DUPLICATE, eid, offset)
            return
        s = self._sessions.get(sid)
        if s is None:
            s = self._sessions[sid] = Session(sid, now)
        occurred = event.occurred_at
        if occurred < s.latest:
            self._audit(sid, status, _STALE, eid, offset, "out of order: a newer event applies")
            return
        s.latest = occurred
        s.touched = now
        self._dirty[sid] = None
        if s.status is not None and s.deadline <= now:
            self._expire(s)  # lapsed, the tick has not run yet
        if status is _STOPPED:
            self._want_none(s, ChangeReason.STOPPED, (eid, offset, status), now)
            return
        timeout = event.timeout_ms
        if timeout is None:
            participant = event.participant
            role = _CUSTOMER if participant is None else participant.role
            timeout = self._default_timeouts[status][role]
        else:
            timeout = self._ints.setdefault(timeout, timeout)
        start = occurred if occurred < now else now  # a producer clock ahead is clamped
        deadline = start + timeout
        if deadline <= now:
            if s.status is not status:
                # the newest word on this session says its indicator has already lapsed
                self._want_none(s, ChangeReason.EXPIRED, None, now)
            self._audit(sid, status, _STALE, eid, offset, "expired before processing")
            return
        if s.status is status:
            # a repeat: extends the deadline, never a call by itself (refreshes are timed)
            refresh_due = deadline > s.deadline and self._extend(s, deadline, timeout, now)
            if now - s.window_at >= self._window:
                s.window_at = now
                self._settle(s, now)
            elif refresh_due:
                self._settle(s, now)  # the I2 refresh is not blocked by the window
            # inlined _audit: this is the hottest line of the engine
            self._audits.append(
                AuditDecision(sid, status, _SUPPRESSED, self.partition, eid, offset)
            )
            return
        s.status = status
        s.originated = start
        s.deadline = deadline
        s.timeout = timeout
        s.reason = ChangeReason.EVENT
        s.window_at = now
        self._ask(s, (eid, offset, status), now)

    def on_tick(self) -> None:
        """Time-driven work: expiries, I2 refreshes, retries after backoff, eviction.

        Costs O(timers due), whatever the number of sessions.
        """
        now = self._clock.now_ms()
        sessions = self._sessions
        for bucket, sids in self._timers.pop_due(now):
            for sid in sids:
                s = sessions.get(sid)
                if s is None or s.wake != bucket:
                    continue  # cancelled lazily: forgotten, or rescheduled earlier
                s.wake = 0
                self._settle(s, now)

    def take_work(self, limit: int, set_limit: int | None = None) -> list[Work]:
        """Up to `limit` ready pieces of work, clears first; their sessions become in flight.

        `set_limit` caps the sets and refreshes among them, so that a caller can keep
        capacity for clears when sets are slow to go out (I1: clears go before sets).
        """
        now = self._clock.now_ms()
        out: list[Work] = []
        sets_taken = 0
        for queue in (self._clears, self._sets):
            while queue and len(out) < limit:
                if queue is self._sets and set_limit is not None and sets_taken >= set_limit:
                    break
                sid, _ = queue.popitem(last=False)
                s = self._sessions[sid]
                if (
                    s.status is not None
                    and (s.remote is not s.status or s.unsure)
                    and s.deadline - now < self._config.min_set_lifetime_ms
                ):
                    # a set that would lapse before Genesys shows it: drop it (clear if shown)
                    self._expire(s)
                kind = self._needed(s, now)
                if kind is None:
                    self._settle(s, now)
                    continue
                work = self._make_work(s, kind)
                self._in_flight[sid] = (work, s.unsure)
                s.unsure = True  # until the result says otherwise
                self._dirty[sid] = None
                out.append(work)
                if kind is not WorkKind.CLEAR:
                    sets_taken += 1
        return out

    def on_result(self, work: Work, result: SinkResult) -> None:
        """Record what happened to a call and decide what follows."""
        sid = work.session_id
        flight = self._in_flight.get(sid)
        if flight is None or flight[0] is not work:
            return  # not a call of this store (e.g. issued before a restore)
        del self._in_flight[sid]
        now = self._clock.now_ms()
        s = self._sessions[sid]
        s.touched = now
        self._dirty[sid] = None
        desired = work.desired
        text = desired.status.value if desired is not None else _CLEARED
        outcome = result.outcome
        if outcome is Outcome.APPLIED:
            self._backoff.pop(sid, None)
            s.unsure = False
            s.version = work.version
            if desired is None:
                s.remote = None
                s.remote_expires = 0
                decision = (
                    Decision.EXPIRED if work.reason is ChangeReason.EXPIRED else (Decision.CLEARED)
                )
                self._change(s, CrmStatus.CLEARED, work.reason, None, now)
            else:
                s.remote = desired.status
                s.remote_expires = desired.expires_at
                decision = Decision.APPLIED
                self._change(
                    s, CrmStatus(desired.status.value), work.reason, desired.expires_at, now
                )
            self._audit_result(work, text, decision, result)
            self._settle(s, now)
            return
        forget = _FORGET.get(outcome)
        if forget is not None:
            self._audit_result(work, text, forget, result)
            if s.remote is not None:
                # the indicator the CRM last heard of is gone with the session
                s.version += 1
                self._change(s, CrmStatus.CLEARED, ChangeReason.SESSION_CLOSED, None, now)
            self._forget(s, forget)
            return
        # Retry later. A FAILED call may have reached Genesys (timeout): state unknown.
        s.unsure = flight[1] or outcome is Outcome.FAILED
        failures = self._backoff.get(sid, (0, 0))[1] + 1
        self._backoff[sid] = (now + self._retry_delay(sid, failures), failures)
        self._audit_result(work, text, _RETRY.get(outcome, Decision.FAILED), result)
        self._settle(s, now)

    def drain(self) -> Emitted:
        """Audits, applied changes and changelog records produced since the last drain.

        The changelog holds one record per session changed since then (its latest state,
        or a tombstone): produce and acknowledge it before committing the input offsets of
        the events drained (I6).
        """
        sessions = self._sessions
        changelog: list[tuple[bytes, bytes | None]] = []
        for sid in self._dirty:
            s = sessions.get(sid)
            changelog.append(encode(s) if s is not None else tombstone(sid))
        self._dirty.clear()
        out = Emitted(self._audits, self._changes, changelog)
        self._audits = []
        self._changes = []
        return out

    def next_wakeup_ms(self) -> int | None:
        """When `on_tick` next has something to do (possibly a cancelled timer), or None."""
        return self._timers.next_due()

    @classmethod
    def restore(
        cls,
        partition: int,
        config: EngineConfig,
        clock: Clock,
        records: Iterable[tuple[bytes, bytes | None]],
    ) -> PartitionStore:
        """A store equal to the one that wrote `records`; pending work queued right away.

        Calls that were in flight when the records were written are treated as uncertain:
        their session is reconciled again (I1, I6).
        """
        store = cls(partition, config, clock)
        store._sessions = latest_sessions(records)
        now = clock.now_ms()
        for s in store._sessions.values():
            # resume without changing persisted state, so the store equals its changelog
            store._settle(s, now, resume=True)
        return store

    # ------------------------------------------------------------------ views

    @property
    def tracked_sessions(self) -> int:
        """Number of sessions held."""
        return len(self._sessions)

    @property
    def queued_work(self) -> int:
        """Number of sessions with work ready to take."""
        return len(self._clears) + len(self._sets)

    @property
    def in_flight(self) -> int:
        """Number of calls taken and not yet resulted."""
        return len(self._in_flight)

    def session(self, session_id: str) -> Session | None:
        """The record of `session_id` (read only), or None when not tracked."""
        return self._sessions.get(session_id)

    def is_queued(self, session_id: str) -> bool:
        """True when `session_id` has work ready to take."""
        return session_id in self._clears or session_id in self._sets

    def is_in_flight(self, session_id: str) -> bool:
        """True when a call for `session_id` is out."""
        return session_id in self._in_flight

    def is_backing_off(self, session_id: str) -> bool:
        """True when `session_id` waits for a retry after a failure."""
        entry = self._backoff.get(session_id)
        return entry is not None and entry[0] > self._clock.now_ms()

    def desired(self, session_id: str) -> Status | None:
        """The indicator status wanted now (None = none), taking lapsed deadlines into account."""
        s = self._sessions.get(session_id)
        if s is None or s.status is None or s.deadline <= self._clock.now_ms():
            return None
        return s.status

    def snapshot(self) -> dict[str, PersistedSession]:
        """Every session's persisted fields: what a restore from the changelog reproduces."""
        return {sid: s.persisted() for sid, s in self._sessions.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionStore):
            return NotImplemented
        return self.partition == other.partition and self.snapshot() == other.snapshot()

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ internals

    def _want_none(self, s: Session, reason: ChangeReason, cause: Cause | None, now: int) -> None:
        """An event asks for no indicator (stopped, or lapsed before we saw it)."""
        if s.status is not None:
            s.status = None
            s.originated = 0
            s.deadline = 0
            s.timeout = 0
            s.reason = reason
        elif s.remote is not None or s.unsure:
            s.reason = reason  # a clear is pending: say why it is wanted now
        self._ask(s, cause, now)

    def _ask(self, s: Session, cause: Cause | None, now: int) -> None:
        """An event changed what is wanted: it becomes the pending change's cause."""
        previous = self._causes.pop(s.sid, None)
        if previous is not None:
            # superseded before any call carried it: latest wins
            self._audit(s.sid, previous[2], Decision.COALESCED, previous[0], previous[1])
        if cause is not None:
            self._causes[s.sid] = cause
        self._settle(s, now)

    def _extend(self, s: Session, deadline: int, timeout: int, now: int) -> bool:
        """Move the deadline later; True when a refresh is due right now.

        Otherwise makes sure a timer fires at the refresh point: the timer pending for the
        old deadline would fire only when Genesys' `expiresAt` lapses (I2).
        """
        s.deadline = deadline
        s.timeout = timeout
        if s.remote is not s.status or s.unsure:
            return False  # the pending set carries the new deadline
        refresh_at = s.remote_expires - self._lead(s)
        if refresh_at <= now:
            return True
        wake = s.wake
        # a live timer at or before the refresh point already covers it (the usual case
        # for a repeat: no bucket arithmetic)
        if wake == 0 or (wake > refresh_at and self._timers.slot(refresh_at) < wake):
            s.wake = self._timers.schedule(s.sid, refresh_at)
        return False

    def _expire(self, s: Session) -> None:
        """The wanted indicator's deadline has come: nothing is wanted any more."""
        cause = self._causes.pop(s.sid, None)
        if cause is not None:
            self._audit(s.sid, cause[2], Decision.EXPIRED, cause[0], cause[1], "lapsed before sent")
        s.status = None
        s.originated = 0
        s.deadline = 0
        s.timeout = 0
        s.reason = ChangeReason.EXPIRED
        self._dirty[s.sid] = None

    def _lead(self, s: Session) -> int:
        """How long before Genesys' `expiresAt` a refresh is due (see `EngineConfig`)."""
        lead = self._leads.get(s.timeout)
        if lead is None:
            lead = self._leads[s.timeout] = int(s.timeout * self._config.refresh_fraction)
        return lead

    def _needed(self, s: Session, now: int) -> WorkKind | None:
        """What call, if any, would bring Genesys to the wanted state (no mutation)."""
        status = s.status if s.status is not None and s.deadline > now else None
        if status is None:
            return WorkKind.CLEAR if s.remote is not None or s.unsure else None
        if s.unsure or s.remote is not status:
            return WorkKind.SET
        if (
            s.deadline > s.remote_expires
            and now >= s.remote_expires - self._lead(s)
            and s.deadline - now >= self._config.min_set_lifetime_ms
        ):
            return WorkKind.REFRESH
        return None

    def _settle(self, s: Session, now: int, *, resume: bool = False) -> None:
        """Bring a session's queue membership and timer in line with its state.

        `resume` (restore) only queues and schedules: persisted fields stay untouched.
        """
        sid = s.sid
        if not resume and s.status is not None and s.deadline <= now:
            self._expire(s)
        backoff = self._backoff.get(sid)
        waiting = backoff is not None and backoff[0] > now
        flying = sid in self._in_flight
        kind = None if flying or waiting else self._needed(s, now)
        clears, sets = self._clears, self._sets
        if kind is None:
            clears.pop(sid, None)
            sets.pop(sid, None)
            if not flying and not waiting:
                if backoff is not None:
                    del self._backoff[sid]  # nothing left to retry
                    backoff = None
                cause = self._causes.pop(sid, None)
                if cause is not None:
                    # Genesys already shows what the event asks for
                    self._audit(sid, cause[2], Decision.SUPPRESSED, cause[0], cause[1])
        elif kind is WorkKind.CLEAR:
            sets.pop(sid, None)
            clears[sid] = None
        else:
            clears.pop(sid, None)
            sets[sid] = None
        wake = self._next_wake(s, now, kind, flying, backoff)
        if wake is None and resume:
            wake = now + 1  # the first tick after a restore settles it for real
        elif wake is None:
            if kind is not None or flying or backoff is not None:
                return
            # idle: nothing wanted, shown, pending or uncertain
            evict_at = s.touched + self._config.idle_evict_ms
            if evict_at <= now:
                self._forget(s, None)
                return
            wake = evict_at
        bucket = self._timers.slot(wake)
        if s.wake == 0 or bucket < s.wake:
            s.wake = self._timers.schedule(sid, wake)

    def _next_wake(
        self,
        s: Session,
        now: int,
        kind: WorkKind | None,
        flying: bool,
        backoff: tuple[int, int] | None,
    ) -> int | None:
        """Earliest future time something may change for `s` (None = only eviction)."""
        wake: int | None = None
        if s.status is not None and s.deadline > now:
            wake = s.deadline
            if (
                not flying
                and kind is None
                and s.remote is s.status
                and s.deadline > s.remote_expires
            ):
                refresh_at = s.remote_expires - self._lead(s)
                if now < refresh_at < wake:
                    wake = refresh_at
        if backoff is not None and backoff[0] > now and (wake is None or backoff[0] < wake):
            wake = backoff[0]
        if wake is None and s.status is None and (s.remote is not None or s.unsure):
            # a clear is pending in flight or in backoff: its result or retry wakes us
            return None
        return wake

    def _make_work(self, s: Session, kind: WorkKind) -> Work:
        version = s.version + 1
        cause = self._causes.pop(s.sid, None)
        eid, offset = (cause[0], cause[1]) if cause is not None else (None, None)
        if kind is WorkKind.CLEAR:
            reason = s.reason if s.reason is not ChangeReason.EVENT else ChangeReason.EXPIRED
            return Work(s.sid, None, reason, kind, version, eid, offset)
        assert s.status is not None  # a set or refresh always has a wanted status
        desired = Indicator(s.status, s.originated, s.deadline, version)
        return Work(s.sid, desired, ChangeReason.EVENT, kind, version, eid, offset)

    def _retry_delay(self, sid: str, failures: int) -> int:
        """Exponential backoff with deterministic per-session jitter (spreads retries)."""
        cfg = self._config
        delay = min(cfg.retry_max_ms, cfg.retry_base_ms << min(failures - 1, 30))
        spread = zlib.crc32(sid.encode()) % 1024
        return max(1, delay - delay * spread // 4096)  # up to 25 % earlier

    def _forget(self, s: Session, decision: Decision | None) -> None:
        sid = s.sid
        del self._sessions[sid]
        self._clears.pop(sid, None)
        self._sets.pop(sid, None)
        self._in_flight.pop(sid, None)
        self._backoff.pop(sid, None)
        cause = self._causes.pop(sid, None)
        if cause is not None and decision is not None:
            self._audit(sid, cause[2], decision, cause[0], cause[1])
        self._dirty[sid] = None

    def _audit(
        self,
        sid: str,
        status: str,
        decision: Decision,
        event_id: str | None,
        offset: int | None,
        error: str = "",
    ) -> None:
        self._audits.append(
            AuditDecision(sid, status, decision, self.partition, event_id, offset, 0.0, error)
        )

    def _audit_result(self, work: Work, text: str, decision: Decision, result: SinkResult) -> None:
        self._audits.append(
            AuditDecision(
                work.session_id,
                text,
                decision,
                self.partition,
                work.event_id,
                work.offset,
                result.latency_ms,
                result.error,
                result.http_status,
                result.attempts,
            )
        )

    def _change(
        self,
        s: Session,
        status: CrmStatus,
        reason: ChangeReason,
        expires_at: int | None,
        now: int,
    ) -> None:
        self._changes.append(
            AppliedChange(
                s.sid,
                status,
                s.version,
                reason,
                expires_at,
                now,
                crm_event_id(s.sid, s.epoch, s.version, status),
            )
        )
