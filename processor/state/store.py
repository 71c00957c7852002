"""The per-partition state engine: events, clock ticks and sink results in; work out.

Pure and synchronous: no I/O, no wall clock (only the injected `Clock`), deterministic for
a given sequence of inputs and clock readings. The Kafka and HTTP edges drive it:

    store.on_event(event, offset)   # for each valid input record, in offset order
    store.on_tick()                 # at next_wakeup_ms() (or periodically)
    work = store.take(session_id)   # (or take_work(n)) hand to the sink once the intent is
    out = store.drain()             # on the changelog; later store.on_result(work, result)

Rules (DESIGN §4, §2b):
- Ordering: an event older (by `occurred_at`, clamped to now) than the newest accepted
  event of its session is out of order and never overrides it (audited `stale`). Equal
  times are accepted in offset order. The clamp never goes below the newest time
  accepted, so a wall clock stepped back (or a new owner's clock behind the previous
  owner's) does not make newer events look older.
- Staleness (I5): an event whose `occurred_at + timeout` is past never sets an indicator;
  if it is the newest word on the session and names another status, it clears instead.
- Deadline: `min(occurred_at, now) + timeout`, moved later (never earlier) by later events
  of the same status. Genesys' `expiresAt` is the deadline known when the call is made.
  A shown webchat indicator stops being wanted one clear lead before its deadline (the
  median PATCH latency, bounded; see `lead`), so that its clear lands as it passes.
- Suppression (I3): a repeat of the wanted status within `suppression_window_ms` of the
  last event that asked for it only extends the deadline. Repeats never cause a call by
  themselves; keeping `expiresAt` ahead is the refresh timer's job (I2): once the remote
  `expiresAt` is within the lead of now while the deadline lies beyond it, one refresh
  carries the deadline known then (spacing in `EngineConfig.refresh_fraction`).
- Latest wins: work is computed when taken, from the session's state at that moment, so a
  session never has more than one queued item and a burst during a call collapses into one
  follow-up. A set with too little life left is dropped.
- Intent (I6): taking work makes it the session's persisted intent; its result resolves
  it. An intent whose outcome is unknown (restored after a crash, or a webchat change
  whose call failed ambiguously) is resolved by reading the session back before anything
  else (`WorkKind.RESOLVE`): if it landed, its CRM and audit records follow, and versions
  never repeat. A messaging intent cannot be read back: restored, or its call failed
  ambiguously, it counts as landed (its CRM record, and its lapse's, follow); as it may
  not have, a live one is sent again while still wanted, after the failure's backoff
  (which a session wanted on another target by then does not wait for).
  A call that finds the session overtaken (a change of its version or later that this
  store never recorded: a previous owner still at work during a rebalance) adopts what
  the session shows and plans again with the next version.
- Messaging targets (§2b): there is no "Off". A set or refresh sends `duration` = deadline
  minus now, clamped; the indicator is shown until `issued_at + duration` (or, sent late,
  until what the result says). `stopped` costs no call; when the indicator lapses, the CRM
  gets a `cleared` record and the audit says `lapsed`. The latest event's target wins; a
  shown webchat indicator is cleared before the session moves to a messaging target.
- Failures keep the wanted state and retry after an exponential backoff (a 429 waits for
  the budget instead); what is retried is recomputed then, so a stale set is never
  re-sent while a clear always is.
- Idle sessions (nothing wanted, shown, pending or uncertain) are forgotten after
  `idle_evict_ms`; so are sessions Genesys reports closed, unknown or invalid (unless the
  session has moved to another target meanwhile: then only the indicator shown on the old
  one is gone, and the new target gets what is wanted there). A forgotten
  session that had changed something leaves its version behind (a floor, kept
  `version_memory_ms` on the changelog as an idle record), so that if it comes back its
  versions go on where they stopped instead of starting again at 1.
- A session forgotten because Genesys said it is unknown, not connected or unusable is
  remembered for a quiet period (`gone_quiet_base_ms`, doubling with each such answer in
  a row, at most `gone_quiet_max_ms`): its events are taken as ever, but its calls to
  the target Genesys said it of wait for the period to end, so a producer typing into a
  session that is not there costs a call now and then, not one per keystroke (another
  target is another resource: not kept quiet). Not persisted: after a restore the first
  call learns it again.
- Replay hold: a restored store wants what its changelog says, while the input since the
  last commit (processed before the crash, not committed) may already say otherwise (a
  `stopped`). Until that input is processed again, or a short bound passes, new sets and
  refreshes wait (`hold_for_replay`): sent at once, they would show typing that is over
  for as long as the replay lasts, and on a messaging target (no "Off") for up to its
  duration. Clears and read-backs never wait (I1). A refresh waits no longer than half its
  lead before the indicator's expiry, so that it still lands in time (I2). The lapse of a
  messaging indicator (no call) is decided after the replay too: its CRM record may have
  gone out before the crash, and the record again must say the same: `stopped` when a
  stop came no later than the indicator ran out (by the stop's time, not by when it was
  processed). Not persisted.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from processor import models
from processor.domain import (
    MESSAGING_MIN_DURATION_MS,
    AgentTypingTarget,
    ChangeReason,
    Decision,
    Indicator,
    MessagingTarget,
    OpenMessagingTarget,
    Outcome,
    Role,
    SessionState,
    SinkResult,
    Status,
)
from processor.models import CrmStatus
from processor.state.bursts import BurstLengths
from processor.state.changelog import encode, floor_record, tombstone
from processor.state.config import EngineConfig
from processor.state.dedupe import EventIdMemory
from processor.state.lead import ClearLead
from processor.state.recovery import latest_sessions
from processor.state.session import Cause, PersistedSession, Session
from processor.state.timers import TimerWheel
from processor.state.work import (
    AppliedChange,
    AuditDecision,
    Emitted,
    NextCall,
    Work,
    WorkKind,
    crm_event_id,
)

if TYPE_CHECKING:
    from processor.clock import Clock
    from processor.models import TypingEvent

_FORGET = {
    Outcome.SESSION_NOT_FOUND: Decision.SESSION_NOT_FOUND,
    Outcome.SESSION_NOT_CONNECTED: Decision.SESSION_NOT_CONNECTED,
    Outcome.REJECTED: Decision.REJECTED,
}
_RETRY = {
    Outcome.CONFLICT: Decision.CONFLICT,
    Outcome.OVERTAKEN: Decision.CONFLICT,
    Outcome.RATE_LIMITED: Decision.RATE_LIMITED,
    Outcome.FAILED: Decision.FAILED,
    Outcome.AUTH_CONFIG_ERROR: Decision.AUTH_CONFIG_ERROR,
}
_CLEARED = "cleared"
_FLOOR_RESOLUTION_MS = 60_000
# Enum members bound once for the hot paths: `Status.TYPING` goes through the enum
# metaclass on every read (about 60 ns, ten times a global).
_STOPPED = Status.STOPPED
_TYPING = Status.TYPING
_CUSTOMER = Role.CUSTOMER
_DUPLICATE = Decision.DUPLICATE
_STALE = Decision.STALE
_SUPPRESSED = Decision.SUPPRESSED
_SET = WorkKind.SET
_REFRESH = WorkKind.REFRESH
_CLEAR = WorkKind.CLEAR
_RESOLVE = WorkKind.RESOLVE


def messaging_target(event: TypingEvent) -> MessagingTarget | None:
    """Where `event` wants its indicator shown (`None`: the webchat session)."""
    target = event.target
    if target is None:
        return None
    if isinstance(target, models.AgentTypingTarget):
        return AgentTypingTarget(target.conversation_id, target.communication_id)
    return OpenMessagingTarget(
        target.integration_id, target.from_id, target.from_id_type.value, target.nickname
    )


class PartitionStore:
    """State of every session of one input partition, and the work it implies."""

    def __init__(self, partition: int, config: EngineConfig, clock: Clock) -> None:
        self.partition = partition
        self._config = config
        self._clock = clock
        self._window = config.suppression_window_ms
        self._sessions: dict[str, Session] = {}
        # Forgotten sessions' last versions: (version, idle since); see `_remember`. Their
        # expiry needs no precision: coarse buckets keep a floor to about one list slot.
        self._floors: dict[str, tuple[int, int]] = {}
        self._floor_timers = TimerWheel(_FLOOR_RESOLUTION_MS, self._floor_timer_live)
        self._dedupe = EventIdMemory(config.dedupe_capacity)
        # (a session's live entry is the one in `Session.wake`; the others are cancelled)
        self._timers = TimerWheel(config.timer_resolution_ms, self._timer_live)
        # Ready work by session id, one queue per class: read-backs and clears first
        # (a phantom is worse than a miss), then refreshes (I2), then new sets.
        self._clears: OrderedDict[str, None] = OrderedDict()
        self._refreshes: OrderedDict[str, None] = OrderedDict()
        self._sets: OrderedDict[str, None] = OrderedDict()
        # Calls out now (their intent is on the session too, except read-backs').
        self._in_flight: dict[str, Work] = {}
        # Failed sessions: (retry_at, consecutive failures).
        self._backoff: dict[str, tuple[int, int]] = {}
        # Sessions Genesys said are gone: (no call before, such answers in a row, the
        # target it said it of), oldest first; see `_quieten`.
        self._gone_quiet: OrderedDict[str, tuple[int, int, MessagingTarget | None]] = OrderedDict()
        # Sessions whose webchat indicator is (or may be) shown: each owes a clear.
        self._shown: dict[str, None] = {}
        # Sessions whose messaging indicator is shown: each may owe a refresh (I2).
        self._shown_messaging: dict[str, None] = {}
        self._dirty: dict[str, None] = {}
        self._audits: list[AuditDecision] = []
        self._changes: list[AppliedChange] = []
        # Timeouts interned: one int object shared by every session with the same value.
        self._ints: dict[int, int] = {}
        self._leads: dict[int, int] = {}  # refresh lead by timeout (few distinct values)
        self._clear_lead = ClearLead(config.clear_lead_max_ms)
        self._bursts = BurstLengths()
        # Replay hold (`hold_for_replay`): sets and refreshes wait until then (0: none), or
        # until the input before `_replay_end` is processed; the sessions held meanwhile.
        self._hold_until = 0
        self._replay_end: int | None = None
        self._held: dict[str, None] = {}
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
        s = self._sessions.get(sid)
        # by session and id: producers that number events per session reuse ids across
        # sessions, and a redelivered event is always of its own session (the session's
        # own id string is kept, not each event's copy of it)
        if not self._dedupe.add((sid if s is None else s.sid, eid)):
            self._audit(sid, status, _DUPLICATE, eid, offset)
            return
        if s is None:
            s = self._sessions[sid] = Session(sid, now)
            floor = self._floors.pop(sid, None)
            if floor is not None:
                s.version = floor[0]  # a session back after it was forgotten
                self._floor_timers.cancel()
            if sid in self._gone_quiet:
                self._keep_quiet(s, messaging_target(event), now)
        occurred = event.occurred_at
        if occurred > now:
            # a producer clock ahead is clamped (DESIGN §4), though never below the newest
            # time accepted: our clock may have stepped back, or a previous owner's (whose
            # changelog we restored) may have read later than ours
            ceiling = now if now >= s.latest else s.latest
            if occurred > ceiling:
                occurred = ceiling
        if occurred < s.latest:
            self._audit(sid, status, _STALE, eid, offset, "out of order: a newer event applies")
            return
        before = s.latest
        s.latest = occurred
        s.touched = now
        self._dirty[sid] = None
        if s.status is not None and s.deadline <= now:
            self._expire(s)  # lapsed, the tick has not run yet
        moved = False
        if s.target is not None or event.target is not None:
            target = messaging_target(event)
            if target != s.target:
                self._retarget(s, target, now, before)
                moved = True
            elif target is not None:
                s.target = target  # the same customer, maybe named anew: calls say so
        if status is _STOPPED:
            self._want_none(s, ChangeReason.STOPPED, (eid, offset, status), now, occurred)
            return
        timeout = event.timeout_ms
        if timeout is None:
            participant = event.participant
            role = _CUSTOMER if participant is None else participant.role
            timeout = self._default_timeouts[status][role]
        else:
            timeout = self._ints.setdefault(timeout, timeout)
        deadline = occurred + timeout
        if deadline <= now:
            if s.status is not status:
                # the newest word on this session says its indicator has already lapsed
                self._want_none(s, ChangeReason.EXPIRED, None, now, min(deadline, s.deadline))
            elif moved:
                self._settle(s, now)  # what is still wanted goes where it now says
            self._audit(sid, status, _STALE, eid, offset, "expired before processing")
            return
        if s.status is status and not moved:
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
        if s.status is status:
            # the same indicator, wanted elsewhere now (moved to another target)
            if deadline > s.deadline:
                s.deadline = deadline
        else:
            if s.status is _TYPING:
                self._burst_ended(s, occurred)
            elif status is _TYPING:
                participant = event.participant
                s.role = _CUSTOMER if participant is None else participant.role
            s.status = status
            s.originated = occurred
            s.deadline = deadline
        s.timeout = timeout
        s.reason = ChangeReason.EVENT
        s.window_at = now
        self._ask(s, (eid, offset, status), now)

    def on_tick(self) -> None:
        """Time-driven work: expiries, lapses, I2 refreshes, retries after backoff, eviction.

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
        floor_due = self._floor_timers.next_due()
        if floor_due is not None and floor_due <= now:
            self._drop_floors(now)
        if self._hold_until and self._hold_until <= now:
            self._end_hold(now)

    def hold_for_replay(self, end_offset: int | None, until_ms: int) -> None:
        """The input before `end_offset` (the partition's end when it was assigned) is to be
        processed again before it is committed: hold new sets and refreshes until it is
        (`replayed`), and no later than `until_ms` (the only bound when `end_offset` is
        None: not known). Clears and read-backs go on; a refresh waits no longer than half
        its lead before the indicator's expiry (I2). Work already queued is held too."""
        now = self._clock.now_ms()
        if until_ms <= now:
            return
        self._hold_until = until_ms
        self._replay_end = end_offset
        for sid in [*self._refreshes, *self._sets]:
            # (a restored store's sessions are only resumed: persisted fields stay as read)
            self._settle(self._sessions[sid], now, resume=True)

    def replayed(self, offset: int) -> None:
        """The input before `offset` is processed: a replay hold ends once that reaches the
        end it waits for."""
        end = self._replay_end
        if end is not None and offset >= end:
            self._end_hold(self._clock.now_ms())

    @property
    def replaying(self) -> bool:
        """True while a replay hold keeps new sets and refreshes waiting."""
        return self._hold_until != 0

    def _end_hold(self, now: int) -> None:
        """The replay hold is over: what it held is queued (or found no longer needed)."""
        self._hold_until = 0
        self._replay_end = None
        held, self._held = self._held, {}
        sessions = self._sessions
        for sid in held:
            s = sessions.get(sid)
            if s is not None:
                self._settle(s, now)

    def take(self, session_id: str) -> Work | None:
        """The work `session_id` needs now, if any; the session then has a call out.

        The work is recomputed from the session's state at this moment (latest wins), and
        it becomes the session's intent: put the changelog on the wire, and wait for its
        acknowledgement, before the call goes out (I6).
        """
        self._clears.pop(session_id, None)
        self._refreshes.pop(session_id, None)
        self._sets.pop(session_id, None)
        s = self._sessions.get(session_id)
        if s is None or session_id in self._in_flight:
            return None
        now = self._clock.now_ms()
        backoff = self._backoff.get(session_id)
        if backoff is not None and backoff[0] > now:
            self._settle(s, now)
            return None
        if self._catch_up(s, now, flying=False):
            self._settle(s, now)  # its lapse, and what follows it, wait for the replay
            return None
        if (
            s.status is not None
            and s.deadline - now < self._config.min_set_lifetime_ms
            and self._needed(s, now) is _SET
        ):
            # a set that would lapse before Genesys shows it: drop it
            self._expire(s)
        kind = self._needed(s, now)
        if kind is None or (self._hold_until and self._held_until(s, kind, now)):
            self._settle(s, now)
            return None
        work = self._make_work(s, kind, now)
        self._in_flight[session_id] = work
        if kind is not _RESOLVE:
            s.intent = work
            if work.target is None:
                self._shown[session_id] = None  # unknown until the result: may be shown
            self._dirty[session_id] = None
        return work

    def take_work(self, limit: int, set_limit: int | None = None) -> list[Work]:
        """Up to `limit` ready pieces of work, read-backs and clears first, then refreshes,
        then sets (each queue in order); see `take`.

        `set_limit` caps the sets and refreshes among them, so that a caller can keep
        capacity for clears (I1: clears go before sets).
        """
        out: list[Work] = []
        sets_taken = 0
        for queue in (self._clears, self._refreshes, self._sets):
            while queue and len(out) < limit:
                if queue is not self._clears and set_limit is not None and sets_taken >= set_limit:
                    break
                sid = next(iter(queue))
                work = self.take(sid)
                if work is None:
                    continue
                out.append(work)
                if work.kind is _SET or work.kind is _REFRESH:
                    sets_taken += 1
        return out

    def on_result(self, work: Work, result: SinkResult) -> None:
        """Record what happened to a call and decide what follows."""
        sid = work.session_id
        if self._in_flight.get(sid) is not work:
            return  # not a call of this store (e.g. issued before a restore)
        del self._in_flight[sid]
        now = self._clock.now_ms()
        s = self._sessions[sid]
        s.touched = now
        self._dirty[sid] = None
        if work.kind is _RESOLVE:
            self._on_read_back(s, work, result, now)
            return
        outcome = result.outcome
        if outcome is Outcome.APPLIED:
            self._landed(s, work, result, now)
            return
        forget = _FORGET.get(outcome)
        if forget is not None:
            self._gone(s, work, result, forget, now)
            return
        self._audit_result(work, _RETRY.get(outcome, Decision.FAILED), result)
        if outcome is Outcome.OVERTAKEN:
            # Another writer's change is there (nothing was sent): take its version as
            # ours and plan again from what the session shows, at once.
            self._adopt(s, result.remote_indicator)
            self._recause(s, work)
            self._backoff.pop(sid, None)
            self._settle(s, now)
            return
        if result.ambiguous and work.target is None:
            # The change may have landed: read the session back before anything else.
            self._retry_later(s, outcome, now)
            return
        if result.ambiguous:
            # A messaging target cannot be read back: what may be shown is recorded as
            # shown, as a restore does (I6), so that the CRM hears of it and of its lapse;
            # and, as it may not be, sent again while still wanted (after the backoff)
            assumed = f"outcome unknown ({result.error or 'no answer'}): assumed applied"
            self._landed(s, work, _applied_after_all(result, assumed), now, doubt=outcome)
            return
        s.intent = None
        if work.target is None and s.remote is None:
            self._shown.pop(sid, None)
        elif s.remote is not None and s.remote_target is not None and s.remote_target != s.target:
            # moved away while the call was out: the messaging indicator still shown there
            # cannot be taken down, so it counts as lapsed now, as a move with no call out
            # does (`_retarget`); otherwise the new target waits for its "shown until"
            self._lapse(s, self._lapse_reason(s, now, s.latest), now)
        self._recause(s, work)
        self._retry_later(s, outcome, now)

    def drain(self, *, changelog: bool = True) -> Emitted:
        """Audits, applied changes and (unless `changelog` is False) changelog records
        produced since the last drain.

        The changelog holds one record per session changed since it was last drained (its
        latest state, or a tombstone): produce and acknowledge it before committing the
        input offsets of the events drained (I6), and before the calls taken since go out.
        Keeping it for a later drain coalesces repeated changes of a session.
        """
        records: list[tuple[bytes, bytes | None]] = []
        if changelog:
            sessions = self._sessions
            floors = self._floors
            for sid in self._dirty:
                s = sessions.get(sid)
                if s is not None:
                    records.append(encode(s))
                else:
                    floor = floors.get(sid)
                    records.append(tombstone(sid) if floor is None else floor_record(sid, *floor))
            self._dirty.clear()
        out = Emitted(self._audits, self._changes, records)
        self._audits = []
        self._changes = []
        return out

    def next_wakeup_ms(self) -> int | None:
        """When `on_tick` next has something to do (possibly a cancelled timer), or None."""
        due = self._timers.next_due()
        floor_due = self._floor_timers.next_due()
        if floor_due is not None and (due is None or floor_due < due):
            due = floor_due
        hold = self._hold_until
        if hold and (due is None or hold < due):
            due = hold
        return due

    @classmethod
    def restore(
        cls,
        partition: int,
        config: EngineConfig,
        clock: Clock,
        records: Iterable[tuple[bytes, bytes | None]],
    ) -> PartitionStore:
        """A store equal to the one that wrote `records`; pending work queued right away.

        Calls whose outcome the records leave unknown are resolved first: a webchat
        session is read back before anything else is sent for it; a messaging call,
        which cannot be read back, counts as landed (I6).
        """
        store = cls(partition, config, clock)
        now = clock.now_ms()
        sessions = store._sessions = latest_sessions(records)
        for s in [s for s in sessions.values() if store._idled_out(s, now)]:
            # forgotten by the store that wrote it (or due to be): what it leaves is a floor
            del sessions[s.sid]
            if not store._remember(s.sid, s.version, s.touched, now):
                store._dirty[s.sid] = None  # tombstone it now
        for s in list(sessions.values()):  # a session may be forgotten as it settles
            intent = s.intent
            if intent is not None and intent.target is not None:
                # resumed: a lapse due already is decided after the replay (`hold_for_replay`)
                store._landed(
                    s,
                    intent,
                    SinkResult(Outcome.APPLIED, error="restored: outcome unknown, assumed applied"),
                    now,
                    resume=True,
                )
                if store._idled_out(s, now):
                    # its lapse left nothing wanted or shown, idle long enough: forgotten
                    # now, as a restore of what this one writes would forget it
                    store._forget(s, None, s.touched, now)
                continue
            if s.remote_target is None and (s.remote is not None or intent is not None):
                store._shown[s.sid] = None
            elif s.remote_target is not None and s.remote is not None:
                store._shown_messaging[s.sid] = None
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
        return len(self._clears) + len(self._refreshes) + len(self._sets)

    @property
    def in_flight(self) -> int:
        """Number of calls taken and not yet resulted."""
        return len(self._in_flight)

    def queued_clears(self) -> Iterator[Session]:
        """Sessions waiting for a read-back or a clear, oldest first."""
        sessions = self._sessions
        return (sessions[sid] for sid in self._clears)

    def queued_refreshes(self) -> Iterator[Session]:
        """Sessions waiting for a refresh that keeps a shown indicator alive (I2)."""
        sessions = self._sessions
        return (sessions[sid] for sid in self._refreshes)

    def queued_sets(self) -> Iterator[Session]:
        """Sessions waiting for a new indicator to be set, oldest first."""
        sessions = self._sessions
        return (sessions[sid] for sid in self._sets)

    def newest_sets(self) -> Iterator[Session]:
        """Sessions waiting for a new indicator to be set, newest first."""
        sessions = self._sessions
        return (sessions[sid] for sid in reversed(self._sets))

    @property
    def queued_set_count(self) -> int:
        """How many sessions wait for a new indicator to be set."""
        return len(self._sets)

    def shown_webchat(self) -> Iterator[Session]:
        """Sessions whose webchat indicator is (or may be) shown: each owes a clear."""
        sessions = self._sessions
        return (sessions[sid] for sid in self._shown)

    @property
    def shown_webchat_count(self) -> int:
        """How many webchat indicators are (or may be) shown."""
        return len(self._shown)

    def shown_messaging(self) -> Iterator[Session]:
        """Sessions whose messaging indicator is shown: no clear is owed (it lapses by
        itself), but a refresh is while typing goes on past its "shown until" (I2)."""
        sessions = self._sessions
        return (sessions[sid] for sid in self._shown_messaging)

    @property
    def shown_messaging_count(self) -> int:
        """How many messaging indicators are shown."""
        return len(self._shown_messaging)

    @property
    def bursts(self) -> BurstLengths:
        """What this store has learned of how long typing lasts (to read, not to feed)."""
        return self._bursts

    def typing_weight(self, session: Session) -> float:
        """How much longer than this partition's average `session`'s typing usually
        lasts (see `bursts`): the planner weighs a set's value by it."""
        return self._bursts.weight(session.role, session.typical)

    def refresh_lead_ms(self, session: Session) -> int:
        """How long before its remote expiry `session` is refreshed (see `EngineConfig`)."""
        return self._lead(session)

    def session(self, session_id: str) -> Session | None:
        """The record of `session_id` (read only), or None when not tracked."""
        return self._sessions.get(session_id)

    def session_ids(self) -> Iterator[str]:
        """Every tracked session id."""
        return iter(self._sessions)

    def is_queued(self, session_id: str) -> bool:
        """True when `session_id` has work ready to take."""
        return (
            session_id in self._clears or session_id in self._refreshes or session_id in self._sets
        )

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

    def version_floor(self, session_id: str) -> int | None:
        """The last version of a forgotten session, while it is remembered (else None)."""
        floor = self._floors.get(session_id)
        return None if floor is None else floor[0]

    def snapshot(self) -> dict[str, PersistedSession]:
        """Every session's persisted fields: what a restore from the changelog reproduces."""
        return {sid: s.persisted() for sid, s in self._sessions.items()}

    def floors(self) -> dict[str, tuple[int, int]]:
        """Every remembered version floor, `(version, idle since)`: restored with the rest."""
        return dict(self._floors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionStore):
            return NotImplemented
        return (
            self.partition == other.partition
            and self.snapshot() == other.snapshot()
            and self._floors == other._floors
        )

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ internals

    def _want_none(
        self, s: Session, reason: ChangeReason, cause: Cause | None, now: int, ended: int
    ) -> None:
        """An event asks for no indicator (stopped, or lapsed before we saw it at `ended`)."""
        if s.status is not None:
            if s.status is _TYPING:
                self._burst_ended(s, ended)
            s.status = None
            s.originated = 0
            s.deadline = 0
            s.timeout = 0
            s.reason = reason
        elif s.remote is not None or s.intent is not None:
            s.reason = reason  # a clear (or lapse) is pending: say why it is wanted now
        self._ask(s, cause, now)

    def _ask(self, s: Session, cause: Cause | None, now: int) -> None:
        """An event changed what is wanted: it becomes the pending change's cause."""
        previous = s.cause
        if previous is not None:
            # superseded before any call carried it: latest wins
            self._audit(s.sid, previous[2], Decision.COALESCED, previous[0], previous[1])
        s.cause = cause
        self._settle(s, now)

    def _retarget(self, s: Session, target: MessagingTarget | None, now: int, before: int) -> None:
        """The latest event names another target: the wanted indicator moves there.

        A messaging indicator shown elsewhere cannot be taken down (no "Off"): it is
        recorded as lapsed now, for what ended it (`_lapse_reason`; `before` is the
        newest event's time before the moving one's). A shown webchat indicator is
        cleared first (`_needed`).
        """
        if s.remote is not None and s.remote_target is not None and s.intent is None:
            if s.unconfirmed:
                # its backoff waits to send it again there, where it is no longer wanted
                self._backoff.pop(s.sid, None)
            self._lapse(s, self._lapse_reason(s, now, before), now)
        s.target = target
        self._keep_quiet(s, target, now)

    def _extend(self, s: Session, deadline: int, timeout: int, now: int) -> bool:
        """Move the deadline later; True when a refresh is due right now.

        Otherwise makes sure a timer fires at the refresh point: the timer pending for the
        old deadline would fire only when Genesys' `expiresAt` lapses (I2).
        """
        s.deadline = deadline
        s.timeout = timeout
        if s.remote is None or s.intent is not None or s.remote_target != s.target:
            return False  # the pending set carries the new deadline
        if s.target is None and s.remote is not s.status:
            return False
        refresh_at = s.remote_expires - self._lead(s)
        if refresh_at <= now:
            return True
        wake = s.wake
        # a live timer at or before the refresh point already covers it (the usual case
        # for a repeat: no bucket arithmetic)
        if wake == 0 or (wake > refresh_at and self._timers.slot(refresh_at) < wake):
            self._wake_at(s, refresh_at)
        return False

    def _expire(self, s: Session) -> None:
        """The wanted indicator's deadline has come: nothing is wanted any more."""
        cause = s.cause
        if cause is not None:
            s.cause = None
            self._audit(s.sid, cause[2], Decision.EXPIRED, cause[0], cause[1], "lapsed before sent")
        if s.status is _TYPING:
            self._burst_ended(s, s.deadline)
        s.status = None
        s.originated = 0
        s.deadline = 0
        s.timeout = 0
        s.reason = ChangeReason.EXPIRED
        self._dirty[s.sid] = None

    def _burst_ended(self, s: Session, ended: int) -> None:
        """The session's typing ends at `ended` (it paused, stopped or lapsed): learn how
        long it lasted."""
        if s.role is not None:
            s.typical = self._bursts.record(s.role, ended - s.originated, s.typical)

    def _lapse_reason(self, s: Session, now: int, last_event_at: int) -> ChangeReason:
        """What ends the messaging indicator shown for `s` as of `now`: `stopped` when a
        stop (the newest event, at `last_event_at`) came no later than it ran out,
        `expired` when it ran out by itself, else `event` (a move to another target while
        typing goes on). Decided by the stop's time, not by when it was processed, so
        that a replay decides alike."""
        stopped = s.status is None and s.reason is ChangeReason.STOPPED
        if s.remote_expires > now:
            return ChangeReason.STOPPED if stopped else ChangeReason.EVENT
        if stopped and last_event_at <= s.remote_expires:
            return ChangeReason.STOPPED
        return ChangeReason.EXPIRED

    def _lapse(self, s: Session, reason: ChangeReason, now: int) -> None:
        """A messaging indicator ran out (or moved away): it is no longer shown.

        No call (there is no "Off"); the CRM hears `cleared`, the audit `lapsed`, and the
        pending cause (a `stopped`, typically) is decided by it.
        """
        shown = s.remote
        at = min(now, s.remote_expires)
        s.version += 1
        s.remote = None
        s.remote_expires = 0
        s.remote_target = None
        s.unconfirmed = False
        self._shown_messaging.pop(s.sid, None)
        self._change(s, CrmStatus.CLEARED, reason, None, at)
        cause = s.cause if s.status is None else None
        if cause is not None:
            s.cause = None
            self._audit(s.sid, cause[2], Decision.LAPSED, cause[0], cause[1])
        else:
            self._audit(s.sid, shown.value if shown else _CLEARED, Decision.LAPSED, None, None)
        self._dirty[s.sid] = None

    def _until(self, s: Session) -> int:
        """When the wanted indicator stops being wanted: its deadline, or for one shown
        on the webchat session the clear lead before it (see `lead`), so that its clear
        lands when the deadline passes."""
        if s.remote is not None and s.remote_target is None and s.target is None:
            return s.deadline - self._clear_lead.for_timeout(s.timeout)
        return s.deadline

    def _refresh_due(self, s: Session, now: int) -> bool:
        """True when the indicator Genesys shows for `s` is within its refresh lead of
        expiring while the wanted deadline lies beyond it."""
        return (
            s.remote is not None
            and s.remote_target == s.target
            and s.deadline > s.remote_expires
            and now >= s.remote_expires - self._lead(s)
        )

    def _lead(self, s: Session) -> int:
        """How long before Genesys' `expiresAt` a refresh is due (see `EngineConfig`)."""
        span = s.timeout
        if s.target is not None and span > self._config.messaging_max_duration_ms:
            span = self._config.messaging_max_duration_ms  # one call shows no longer
        lead = self._leads.get(span)
        if lead is None:
            lead = self._leads[span] = int(span * self._config.refresh_fraction)
        return lead

    @staticmethod
    def next_call(s: Session) -> NextCall:
        """Where `s`'s next call goes, when it has one (`take`): an unresolved intent is
        read back first; a change goes to the webchat session when that is the target,
        and also to clear an indicator still shown there after the session moved to a
        messaging target (`_needed`); else to the messaging target."""
        if s.intent is not None:
            return NextCall.READ_BACK
        if s.target is None or (s.remote is not None and s.remote_target is None):
            return NextCall.WEBCHAT
        return NextCall.MESSAGING

    def _needed(self, s: Session, now: int) -> WorkKind | None:
        """What call, if any, would bring Genesys to the wanted state (no mutation)."""
        if self.next_call(s) is NextCall.READ_BACK:
            return _RESOLVE  # an unknown outcome is read back before anything else
        remote = s.remote
        if remote is not None and s.remote_target != s.target:
            # shown where the session no longer wants it: a webchat indicator is cleared
            # (a messaging one lapses by itself)
            return _CLEAR if s.remote_target is None else None
        status = s.status if s.status is not None and self._until(s) > now else None
        if s.target is None:
            if status is None:
                return _CLEAR if remote is not None else None
            if remote is not status:
                return _SET
        else:
            if status is None:
                return None  # nothing to send: a shown indicator lapses by itself
            if remote is None or s.remote_expires <= now:
                return _SET
            if s.unconfirmed and s.deadline - now >= self._config.min_set_lifetime_ms:
                return _REFRESH  # the call recorded as shown may not have landed: again
        if (
            s.deadline > s.remote_expires
            and now >= s.remote_expires - self._lead(s)
            and s.deadline - now >= self._config.min_set_lifetime_ms
        ):
            return _REFRESH
        return None

    def _settle(self, s: Session, now: int, *, resume: bool = False) -> None:
        """Bring a session's queue membership and timer in line with its state.

        `resume` (restore) only queues and schedules: persisted fields stay untouched.
        """
        sid = s.sid
        flying = sid in self._in_flight
        lapse_held = False if resume else self._catch_up(s, now, flying=flying)
        backoff = self._backoff.get(sid)
        waiting = backoff is not None and backoff[0] > now
        kind = None if flying or waiting else self._needed(s, now)
        held = 0
        if lapse_held:
            held = self._hold_until  # what follows the lapse waits for it
        elif kind is not None and self._hold_until:
            held = self._held_until(s, kind, now)
        clears, refreshes, sets = self._clears, self._refreshes, self._sets
        if self._held and not held:
            self._held.pop(sid, None)
        if held or kind is None:
            clears.pop(sid, None)
            refreshes.pop(sid, None)
            sets.pop(sid, None)
            if held:
                self._held[sid] = None  # waits for the replay: queued once it is over
            elif not flying and not waiting and not resume:
                if backoff is not None:
                    del self._backoff[sid]  # nothing left to retry
                    backoff = None
                cause = s.cause
                if cause is not None and not (s.status is None and s.remote_target is not None):
                    # Genesys already shows what the event asks for (a messaging
                    # indicator that is to lapse keeps its cause until it does)
                    s.cause = None
                    self._dirty[sid] = None
                    self._audit(sid, cause[2], Decision.SUPPRESSED, cause[0], cause[1])
        else:
            if kind is _CLEAR or kind is _RESOLVE:
                queue = clears
            elif kind is _REFRESH or (kind is _SET and self._refresh_due(s, now)):
                # a status change of a shown indicator about to expire refreshes it (I2)
                queue = refreshes
            else:
                queue = sets
            if sid not in queue:
                clears.pop(sid, None)
                refreshes.pop(sid, None)
                sets.pop(sid, None)
                queue[sid] = None
        wake = self._next_wake(s, now, kind, flying, backoff)
        if held and held < self._hold_until and (wake is None or held < wake):
            wake = held  # a refresh due before the hold ends (the hold's end wakes the rest)
        if lapse_held and wake is None:
            wake = held  # the lapse is decided at the hold's end, not forgotten as idle
        if wake is None and resume:
            wake = now + 1  # the first tick after a restore settles it for real
        elif wake is None:
            if kind is not None or flying or backoff is not None:
                return
            # idle: nothing wanted, shown, pending or uncertain
            evict_at = self._evict_at(s)
            if evict_at <= now:
                self._forget(s, None, s.touched, now)
                return
            wake = evict_at
        if s.wake == 0 or self._timers.slot(wake) < s.wake:
            self._wake_at(s, wake)

    def _held_until(self, s: Session, kind: WorkKind, now: int) -> int:
        """When `kind` of work for `s` may go during a replay hold (0: now). Clears and
        read-backs never wait; a refresh (or a status change queued as one) waits no
        later than half its lead before the indicator shown expires, so that it lands
        before (I2)."""
        if kind is _CLEAR or kind is _RESOLVE:
            return 0
        until = self._hold_until
        if kind is _REFRESH or self._refresh_due(s, now):
            until = min(until, s.remote_expires - self._lead(s) // 2)
        return until if until > now else 0

    def _wake_at(self, s: Session, at: int) -> None:
        """Wake `s` at `at`, earlier than its live timer entry (if any), which is left
        behind: cancelled once `s.wake` no longer names it (`TimerWheel.cancel`)."""
        previous = s.wake
        s.wake = self._timers.schedule(s.sid, at)
        if previous:
            self._timers.cancel()

    def _catch_up(self, s: Session, now: int, *, flying: bool) -> bool:
        """What time alone has changed: a wanted indicator past its deadline is no longer
        wanted; a messaging indicator past its "shown until" has lapsed. True when a lapse
        waits for the replay hold to end: the input replayed may hold the `stopped` that
        its previous owner recorded it for, and its CRM record must say the same (I6)."""
        if s.status is not None and self._until(s) <= now:
            self._expire(s)
        if (
            s.remote is not None
            and s.remote_target is not None
            and s.remote_expires <= now
            and not flying
        ):
            if self._hold_until:
                return True
            # (a stop that came after the indicator ran out did not end it)
            self._lapse(s, self._lapse_reason(s, now, s.latest), now)
        return False

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
        until = self._until(s) if s.status is not None else 0
        if until > now:
            wake = until
            if (
                not flying
                and (
                    kind is _SET  # a status change waiting: urgent at the refresh point
                    or (kind is None and (s.target is not None or s.remote is s.status))
                )
                and s.remote is not None
                and s.remote_target == s.target
                and s.deadline > s.remote_expires
            ):
                refresh_at = s.remote_expires - self._lead(s)
                if now < refresh_at < wake:
                    wake = refresh_at
        if s.remote is not None and s.remote_target is not None:
            lapse_at = s.remote_expires  # a messaging indicator runs out by itself
            if lapse_at > now and (wake is None or lapse_at < wake):
                wake = lapse_at
        if backoff is not None and backoff[0] > now and (wake is None or backoff[0] < wake):
            wake = backoff[0]
        if wake is None and s.status is None and (s.remote is not None or s.intent is not None):
            # a clear or read-back is pending in flight or in backoff: its result or
            # retry wakes us
            return None
        return wake

    def _make_work(self, s: Session, kind: WorkKind, now: int) -> Work:
        sid = s.sid
        if kind is _RESOLVE:
            intent = s.intent
            assert intent is not None  # a read-back always resolves an intent
            return Work(sid, intent.desired, intent.reason, kind, intent.version, issued_at=now)
        version = s.version + 1
        cause = s.cause
        s.cause = None
        eid, offset, cause_status = cause if cause is not None else (None, None, None)
        if kind is _CLEAR:
            reason = s.reason
            if reason is ChangeReason.EVENT and s.status is None:
                reason = ChangeReason.EXPIRED
            return Work(sid, None, reason, kind, version, eid, offset, cause_status, issued_at=now)
        status = s.status
        assert status is not None  # a set or refresh always has a wanted status
        if self.next_call(s) is NextCall.WEBCHAT:
            desired = Indicator(status, s.originated, s.deadline, version)
            return Work(
                sid, desired, ChangeReason.EVENT, kind, version, eid, offset, cause_status,
                issued_at=now,
            )  # fmt: skip
        duration = min(self._config.messaging_max_duration_ms, s.deadline - now)
        duration = max(MESSAGING_MIN_DURATION_MS, duration)
        # `expires_at`: until when a call that goes out now shows it; the deadline when the
        # shortest duration reaches past it
        expires = now + duration if now + duration <= s.deadline else s.deadline
        desired = Indicator(status, s.originated, expires, version)
        return Work(
            sid, desired, ChangeReason.EVENT, kind, version, eid, offset, cause_status,
            s.target, duration, now, s.deadline,
        )  # fmt: skip

    def _landed(
        self,
        s: Session,
        work: Work,
        result: SinkResult,
        now: int,
        *,
        doubt: Outcome | None = None,
        resume: bool = False,
    ) -> None:
        """The intent `work` took effect in Genesys: record it and move on.

        With `doubt` (the outcome of a messaging call that may not have landed), it is
        recorded all the same, and sent again while still wanted once the backoff for
        that outcome has passed (`Session.unconfirmed`). With `resume` (a restore), the
        session is then only queued and scheduled (see `_settle`).
        """
        sid = s.sid
        failures = self._backoff.pop(sid, (0, 0))[1]
        if doubt is None:
            self._unquiet(sid, work.target)  # there after all
        s.intent = None
        s.unconfirmed = doubt is not None
        s.version = work.version
        desired = work.desired
        if work.target is None and result.call_latencies_ms:
            self._clear_lead.observe(result.call_latencies_ms[-1])  # the PATCH that landed
        if desired is None:
            s.remote = None
            s.remote_expires = 0
            s.remote_target = None
            self._shown.pop(sid, None)
            self._shown_messaging.pop(sid, None)
            decision = Decision.EXPIRED if work.reason is ChangeReason.EXPIRED else Decision.CLEARED
            self._change(s, CrmStatus.CLEARED, work.reason, None, now)
        else:
            expires = desired.expires_at
            if work.target is not None:
                # what the request that landed shows: at least the duration from when the
                # work was taken (unknown after a restore), or what the sink says it sent
                shown = result.shown_until_ms
                expires = work.issued_at + work.duration_ms if shown is None else shown
            s.remote = desired.status
            s.remote_expires = expires
            s.remote_target = work.target
            if work.target is None:
                self._shown[sid] = None
                self._shown_messaging.pop(sid, None)
            else:
                self._shown.pop(sid, None)
                self._shown_messaging[sid] = None
            decision = Decision.APPLIED
            self._change(s, CrmStatus(desired.status.value), work.reason, expires, now)
        self._audit_result(work, decision, result)
        if work.target is not None and work.target != s.target:
            # moved away while the call was out
            self._lapse(s, self._lapse_reason(s, now, s.latest), now)
        if doubt is not None and doubt is not Outcome.RATE_LIMITED and work.target == s.target:
            # as for any failure, so that a failing API is not hammered (a 429 waits for
            # the budget instead); moved away, nothing is sent there again to wait for
            failures += 1
            self._backoff[sid] = (now + self._retry_delay(sid, failures), failures)
        self._dirty[sid] = None
        self._settle(s, now, resume=resume)

    def _gone(
        self, s: Session, work: Work, result: SinkResult, decision: Decision, now: int
    ) -> None:
        """Genesys says the session (or conversation) is closed, unknown or unusable."""
        self._audit_result(work, decision, result)
        if s.remote is not None and s.remote_target == work.target:
            # the indicator the CRM last heard of is gone with the session
            s.version += 1
            self._change(s, CrmStatus.CLEARED, ChangeReason.SESSION_CLOSED, None, now)
            s.remote = None
            s.remote_expires = 0
            s.remote_target = None
            s.unconfirmed = False
            self._shown_messaging.pop(s.sid, None)
        if work.target != s.target:
            # Only the target the session has moved away from is gone (the webchat
            # session and a conversation are different resources): what the latest event
            # wants where it is now still stands (I4).
            s.intent = None
            if work.target is None:
                self._shown.pop(s.sid, None)
            self._backoff.pop(s.sid, None)
            self._dirty[s.sid] = None
            self._settle(s, now)
            return
        # dated as if idle long enough: a restore then forgets it as this store did
        self._forget(s, decision, now - self._config.idle_evict_ms, now)
        self._quieten(s.sid, work.target, now, queued=result.remote_state is SessionState.QUEUED)

    def _quieten(self, sid: str, target: MessagingTarget | None, now: int, *, queued: bool) -> None:
        """Genesys said `sid` is gone on `target`: its next call there waits
        `gone_quiet_base_ms`, twice as long after each such answer in a row, at most
        `gone_quiet_max_ms` (for a session still `queued`, about to be answered,
        `queued_quiet_max_ms`). Another target is another resource: not kept quiet."""
        cfg = self._config
        quiet = self._gone_quiet
        previous = quiet.pop(sid, None)
        answers = previous[1] + 1 if previous is not None and previous[2] == target else 1
        longest = cfg.queued_quiet_max_ms if queued else cfg.gone_quiet_max_ms
        until = now + min(longest, cfg.gone_quiet_base_ms << min(answers - 1, 30))
        quiet[sid] = (until, answers, target)
        if len(quiet) > cfg.gone_memory:
            quiet.popitem(last=False)

    def _unquiet(self, sid: str, target: MessagingTarget | None) -> None:
        """Genesys answered for `sid` on `target`: it is there, no longer kept quiet."""
        quiet = self._gone_quiet.get(sid)
        if quiet is not None and quiet[2] == target:
            del self._gone_quiet[sid]

    def _keep_quiet(self, s: Session, target: MessagingTarget | None, now: int) -> None:
        """`s` is wanted on `target` now: its calls wait for the quiet period of that
        target (`_quieten`), and no longer for one of the target it has left (a quiet
        period is the only wait with no failure counted)."""
        sid = s.sid
        backoff = self._backoff.get(sid)
        if backoff is not None and backoff[1] == 0:
            del self._backoff[sid]
            backoff = None
        quiet = self._gone_quiet.get(sid)
        if backoff is None and quiet is not None and quiet[0] > now and quiet[2] == target:
            self._backoff[sid] = (quiet[0], 0)  # gone a moment ago: no call before

    def _on_read_back(self, s: Session, work: Work, result: SinkResult, now: int) -> None:
        """A read-back answered: the unresolved intent landed or it did not."""
        intent = s.intent
        if intent is None:
            self._settle(s, now)
            return
        outcome = result.outcome
        if outcome is Outcome.APPLIED and result.remote_state not in (
            None,
            SessionState.CONNECTED,
        ):
            outcome = Outcome.SESSION_NOT_CONNECTED
        forget = _FORGET.get(outcome)
        if forget is not None:
            self._gone(s, intent, result, forget, now)
            return
        if outcome is not Outcome.APPLIED:
            self._audit_result(work, _RETRY.get(outcome, Decision.FAILED), result)
            self._retry_later(s, outcome, now)
            return
        self._unquiet(s.sid, intent.target)  # read back: it is there
        remote = result.remote_indicator
        desired = intent.desired
        if (
            (remote is None)
            if desired is None
            else (remote is not None and remote.version == intent.version)
        ):
            recovered = "recovered by read-back: the call landed before its result was recorded"
            self._landed(s, intent, _applied_after_all(result, recovered), now)
            return
        # It did not land: Genesys shows what the read says; the cause waits for a call.
        self._adopt(s, remote)
        self._recause(s, intent, decide=True)
        self._backoff.pop(s.sid, None)
        self._settle(s, now)

    def _adopt(self, s: Session, remote: Indicator | None) -> None:
        """Genesys shows `remote` on the webchat session: no call is out, and the next
        change's version follows the one shown (versions never repeat)."""
        s.intent = None
        if remote is None:
            s.remote = None
            s.remote_expires = 0
            self._shown.pop(s.sid, None)
        else:
            s.remote = remote.status
            s.remote_expires = remote.expires_at
            s.version = max(s.version, remote.version)
            self._shown[s.sid] = None
        s.remote_target = None
        s.unconfirmed = False
        self._shown_messaging.pop(s.sid, None)

    def _recause(self, s: Session, work: Work, *, decide: bool = False) -> None:
        """A call that did not land gives its cause back to the next one, while what the
        cause asked for still stands (no newer event, no lapse since).

        With `decide`, a cause that no longer stands gets its audit record here (when the
        call's own result has not given it one): superseded, or lapsed before it was sent.
        """
        status = work.cause_status
        eid, offset = work.event_id, work.offset
        if eid is None or offset is None or status is None:
            return
        if s.cause is None and (s.status is status or (status is _STOPPED and s.status is None)):
            s.cause = (eid, offset, status)
        elif decide and s.cause is not None:
            self._audit(s.sid, status, Decision.COALESCED, eid, offset)
        elif decide:
            self._audit(s.sid, status, Decision.EXPIRED, eid, offset, "lapsed before sent")

    def _retry_later(self, s: Session, outcome: Outcome, now: int) -> None:
        """Back off before the next call; a 429 waits for the API budget instead."""
        sid = s.sid
        if outcome is not Outcome.RATE_LIMITED:
            failures = self._backoff.get(sid, (0, 0))[1] + 1
            self._backoff[sid] = (now + self._retry_delay(sid, failures), failures)
        self._settle(s, now)

    def _retry_delay(self, sid: str, failures: int) -> int:
        """Exponential backoff with deterministic per-session jitter (spreads retries)."""
        cfg = self._config
        delay = min(cfg.retry_max_ms, cfg.retry_base_ms << min(failures - 1, 30))
        spread = zlib.crc32(sid.encode("utf-8", "surrogatepass")) % 1024
        return max(1, delay - delay * spread // 4096)  # up to 25 % earlier

    def _forget(self, s: Session, decision: Decision | None, idle_since: int, now: int) -> None:
        """Stop tracking `s`; its version stays behind as a floor (`_remember`)."""
        sid = s.sid
        del self._sessions[sid]
        if s.wake:
            self._timers.cancel()  # its entry is left behind
        self._remember(sid, s.version, idle_since, now)
        self._clears.pop(sid, None)
        self._refreshes.pop(sid, None)
        self._sets.pop(sid, None)
        self._in_flight.pop(sid, None)
        self._backoff.pop(sid, None)
        self._shown.pop(sid, None)
        self._shown_messaging.pop(sid, None)
        cause = s.cause
        if cause is not None and decision is not None:
            self._audit(sid, cause[2], decision, cause[0], cause[1])
        self._dirty[sid] = None

    def _idled_out(self, s: Session, now: int) -> bool:
        """True when a restored session is one its store forgot, or would have by `now`:
        nothing wanted, shown or uncertain, and idle for `idle_evict_ms`."""
        return (
            s.status is None
            and s.remote is None
            and s.intent is None
            and s.cause is None
            and self._evict_at(s) <= now
        )

    def _evict_at(self, s: Session) -> int:
        """When an idle session is forgotten: as the timer for `idle_evict_ms` after its
        last activity fires (the live store and a restore apply the same rule)."""
        return self._timers.slot(s.touched + self._config.idle_evict_ms)

    def _timer_live(self, sid: str, bucket: int) -> bool:
        """True when the timer entry of `sid` in `bucket` is its session's live one."""
        s = self._sessions.get(sid)
        return s is not None and s.wake == bucket

    def _floor_timer_live(self, sid: str, bucket: int) -> bool:
        """True when the floor timer entry of `sid` in `bucket` is its floor's expiry."""
        floor = self._floors.get(sid)
        return floor is not None and self._floor_expiry(floor[1]) == bucket

    def _floor_expiry(self, idle_since: int) -> int:
        """When a floor is forgotten: as its timer for `version_memory_ms` fires."""
        return self._floor_timers.slot(idle_since + self._config.version_memory_ms)

    def _remember(self, sid: str, version: int, idle_since: int, now: int) -> bool:
        """Keep a forgotten session's last version for `version_memory_ms` after it went
        idle, so that if it comes back its versions go on (DESIGN I6: versions never
        repeat). On the changelog the floor is an idle session's record, so a store that
        does not know floors reads it as an idle session and forgets it. A session that
        never changed anything, or whose floor is already due, is not remembered (False)."""
        expires_at = self._floor_expiry(idle_since)
        if not version or expires_at <= now:
            return False
        if self._floors.get(sid) is not None:
            self._floor_timers.cancel()  # (not expected: a floor is dropped as it comes back)
        self._floors[sid] = (version, idle_since)
        self._floor_timers.schedule(sid, expires_at)
        return True

    def _drop_floors(self, now: int) -> None:
        """Forget the versions remembered for `version_memory_ms`."""
        floors = self._floors
        for bucket, sids in self._floor_timers.pop_due(now):
            for sid in sids:
                floor = floors.get(sid)
                # stale when the session came back (and maybe went again) since
                if floor is not None and self._floor_expiry(floor[1]) == bucket:
                    del floors[sid]
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

    def _audit_result(self, work: Work, decision: Decision, result: SinkResult) -> None:
        desired = work.desired
        self._audits.append(
            AuditDecision(
                work.session_id,
                desired.status.value if desired is not None else _CLEARED,
                decision,
                self.partition,
                work.event_id,
                work.offset,
                # to 0.01 ms, as the tutorial's audit line has it (DESIGN §3)
                round(result.latency_ms, 2),
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


def _applied_after_all(result: SinkResult, why: str) -> SinkResult:
    """`result` (a failure, or a read-back's answer) as the landing it is recorded as,
    `why` saying so in the audit."""
    return SinkResult(
        Outcome.APPLIED,
        http_status=result.http_status,
        attempts=result.attempts,
        latency_ms=result.latency_ms,
        error=why,
        shown_until_ms=result.shown_until_ms,
    )
