"""Tuning knobs of the state engine (one `EngineConfig` per processor, shared by partitions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from processor.domain import MESSAGING_MIN_DURATION_MS, Role, Status
from processor.models import MAX_TIMEOUT_MS
from processor.settings import TimeoutMatrix, TypingSettings


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine decides with, besides the events and the clock.

    Attributes:
        suppression_window_ms: a repeat of the desired status within this window of the
            last event that asked for it is suppressed on the fast path (I3).
        timeouts: indicator lifetime by status x role when an event has no `timeout_ms`.
        refresh_fraction: refresh Genesys' `expiresAt` once it is closer to now than this
            fraction of the timeout (the lead) while the deadline lies beyond it (I2). The
            lead must cover queueing for budget (clears go first) and one call's latency;
            a late refresh carries a later deadline, so a small lead means few refreshes,
            and refreshes are what keeping a long burst shown costs under a tight budget
            (600 ms of a 5 s timeout by default). A refresh needs an event since the
            previous call, and with live events any two refreshes after a given call come
            at least `timeout - lead` after it, and consecutive calls at least half a
            timeout apart while events come at least every quarter timeout
            (`timeout - lead - gap`).
            No rule with a positive lead does better for arbitrary gaps: an event right
            after a refresh and the next one `timeout - lead` later force two calls.
        min_set_lifetime_ms: a set with less lifetime than this left when it is about to be
            sent is dropped (expired) instead: it would lapse before Genesys shows it.
        clear_slack_ms: the I1 bound: a clear is due no later than deadline + this.
        clear_lead_max_ms: the most a shown webchat indicator's clear goes out before its
            deadline (lead: the median PATCH latency, and at most a twentieth of the
            timeout), so that it lands when the deadline passes; 0 sends it at the
            deadline.
        timer_resolution_ms: granularity of the timer buckets; timers fire at most this
            late, never early. Must be well below `clear_slack_ms`.
        idle_evict_ms: a session with nothing shown, wanted or pending is forgotten after
            this long without activity. At least the longest timeout, so that any event
            older than an eviction is stale anyway (I5) and forgetting loses nothing.
        version_memory_ms: how long a forgotten session's last version is remembered
            after it went idle (a 77-byte changelog record, and about 0.25 KiB in memory
            with its id), so that a session typing again goes on with the next version
            (I6: versions never repeat). Beyond it a session starts again at version 1
            under a new epoch (its CRM event ids stay distinct). A day outlives a
            web-chat session.
        dedupe_capacity: exact duplicates (the same event id of the same session) among
            at least this many recent events are dropped (up to twice as many are held;
            see `EventIdMemory`).
        retry_base_ms / retry_max_ms: exponential backoff for failed calls.
        gone_quiet_base_ms / gone_quiet_max_ms: after Genesys said a session is unknown,
            not connected or unusable (404, 409, 400), an event of it calls again only
            this long later, doubling with each such answer in a row: a producer typing
            into a session that is not there (or still queued) would otherwise spend a
            call of the shared budget per keystroke.
        queued_quiet_max_ms: the longest such wait for a session Genesys says is still
            queued: it is about to be answered, and its first typing after that should
            not wait long for a call.
        gone_memory: how many such sessions are remembered (the oldest goes first).
        messaging_max_duration_ms: the longest `duration` of one messaging typing call
            (DESIGN §2b); a call sends the deadline minus now, clamped to
            [`MESSAGING_MIN_DURATION_MS`, this].
    """

    suppression_window_ms: int = 1500
    timeouts: TimeoutMatrix = field(default_factory=TimeoutMatrix)
    refresh_fraction: float = 0.12
    min_set_lifetime_ms: int = 100
    clear_slack_ms: int = 1000
    clear_lead_max_ms: int = 250
    timer_resolution_ms: int = 2
    idle_evict_ms: int = 300_000
    version_memory_ms: int = 86_400_000
    dedupe_capacity: int = 100_000
    retry_base_ms: int = 250
    retry_max_ms: int = 10_000
    gone_quiet_base_ms: int = 1000
    gone_quiet_max_ms: int = 60_000
    queued_quiet_max_ms: int = 5000
    gone_memory: int = 10_000
    messaging_max_duration_ms: int = 5000

    def __post_init__(self) -> None:
        if self.suppression_window_ms < 0:
            raise ValueError("suppression_window_ms must be >= 0")
        if not 0.0 < self.refresh_fraction <= 0.5:
            # above one half the refresh budget "one per half timeout" no longer holds
            raise ValueError("refresh_fraction must be in (0, 0.5]")
        if not 0 <= self.clear_lead_max_ms < self.clear_slack_ms:
            raise ValueError("clear_lead_max_ms must be in [0, clear_slack_ms)")
        if self.min_set_lifetime_ms < 0:
            raise ValueError("min_set_lifetime_ms must be >= 0")
        if not 1 <= self.timer_resolution_ms <= self.clear_slack_ms // 2:
            raise ValueError("timer_resolution_ms must be in [1, clear_slack_ms / 2]")
        if self.idle_evict_ms < MAX_TIMEOUT_MS:
            raise ValueError(f"idle_evict_ms must be >= {MAX_TIMEOUT_MS} (the longest timeout)")
        if self.version_memory_ms < self.idle_evict_ms + 60_000:
            # a floor must outlive the eviction that leaves it (by its timer's minute)
            raise ValueError("version_memory_ms must be >= idle_evict_ms + 60000")
        if self.dedupe_capacity < 1:
            raise ValueError("dedupe_capacity must be >= 1")
        if not 1 <= self.retry_base_ms <= self.retry_max_ms:
            raise ValueError("retry_base_ms must be in [1, retry_max_ms]")
        if not 1 <= self.gone_quiet_base_ms <= self.gone_quiet_max_ms:
            raise ValueError("gone_quiet_base_ms must be in [1, gone_quiet_max_ms]")
        if not self.gone_quiet_base_ms <= self.queued_quiet_max_ms <= self.gone_quiet_max_ms:
            raise ValueError(
                "queued_quiet_max_ms must be in [gone_quiet_base_ms, gone_quiet_max_ms]"
            )
        if self.gone_memory < 0:
            raise ValueError("gone_memory must be >= 0")
        if not MESSAGING_MIN_DURATION_MS <= self.messaging_max_duration_ms <= MAX_TIMEOUT_MS:
            raise ValueError(
                f"messaging_max_duration_ms must be in [{MESSAGING_MIN_DURATION_MS},"
                f" {MAX_TIMEOUT_MS}]"
            )

    @classmethod
    def from_settings(cls, settings: TypingSettings) -> EngineConfig:
        """The engine configuration implied by the processor's `TYPING_*` settings."""
        return cls(
            suppression_window_ms=settings.suppression_window_ms,
            timeouts=settings.timeout_matrix,
            messaging_max_duration_ms=settings.messaging_max_duration_ms,
        )

    def default_timeout_ms(self, status: Status, role: Role) -> int:
        """Lifetime of an indicator of `status` set by `role` when the event names none."""
        return self.timeouts.timeout_ms(status, role)
