"""The Genesys API budget of one OAuth client, as one replica may spend it (DESIGN §4b).

Genesys allows about `TYPING_API_RATE_PER_MINUTE` calls per minute per OAuth client, shared
by every replica that uses the client. A replica spends its share: the rate times its
assigned input partitions over all input partitions (`set_share`, on every rebalance).

When the cluster's metadata does not name the input's partitions (yet), `partition_share`
takes them to be as many as configured, or more when the partitions owned say so: a
replica that guessed too few would spend the whole client's rate.

A token bucket that never makes anyone wait: the scheduler asks how many tokens there are
and decides what to send; a request spends one token when it goes out, into debt if need
be (a 412's re-read, a retry), and debt delays what the scheduler sends next.

The bucket alone would allow its burst on top of a minute's rate within one minute; a
rolling one-minute count of what went out caps it, so that spending only what `level`
offers never puts more than the minute's allowance into any sixty seconds, whatever
window the service counts in. A replica (re)starts with little in the bucket, not a full
burst: it cannot know what the client spent in the current minute. A new share (a
rebalance) starts the count afresh, so that a scale-out never stalls a replica.

Requests the scheduler did not plan (a 412's re-read and retried PATCH, a retried 5xx, a
re-authenticated call) spend too, into debt if need be; `overhead` tells how many of them
come, recently, per planned one, so that the planner keeps room for them.

The service overrules both: `Retry-After` pauses all spending, and the `inin-ratelimit-*`
headers (calls counted in the current window, calls allowed, seconds to its reset) cap
the rate until the window resets, so the replicas together never outrun the window; each
for a minute at most (`MAX_PAUSE_S`). The headers count the whole OAuth client's calls:
the cap is kept as the client's, and this replica takes its share of it, the share of the
moment (a rebalance within the window moves the cap with it).

A 429 says the service admits fewer calls back to back than this replica drew (its own
bucket is smaller, or other clients spent it): `throttled` shrinks the burst to half of
what it had drawn beyond the rate when refused (and at least by half), leaving the other
half for the requests that go out into debt; it grows back by `BURST_RECOVERY_S` per
`BURST_RECOVERY_PERIOD_S` without a 429, up to the configured one. Against a service
bucket smaller than ours, that is one 429 to learn it, not one per burst.

Pure: time comes from the injected `monotonic` function (seconds).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Set

DEFAULT_BURST_S = 3.0
"""Seconds of budget that may go back to back (the bucket's capacity): after a quiet spell,
a few conversations starting at once are all shown without waiting for the rate. The
rolling window keeps the minute's total whatever the burst."""
MIN_CAPACITY = 2.0
"""The bucket holds at least the dearest call (a GET then a PATCH), however low the rate."""
START_LEVEL = 3.0
"""What a (re)started replica holds: the dearest call and one token more, which the planner
keeps in hand for a stop's clear once an indicator is shown (never more than the bucket)."""
WINDOW_S = 60.0
"""The rolling window over which spending never exceeds a minute's allowance."""
MAX_PAUSE_S = WINDOW_S
"""The longest the service's word stops all spending at once. Its limit is per minute, so a
longer `Retry-After` or window reset (an epoch time sent as seconds, `inf`) is not believed
as it stands: it would hold every call, clears included, until a restart. After a minute a
call goes out, and the service may say again."""
MIN_BURST_S = 0.25
"""The smallest burst a 429 shrinks the bucket to (it still holds `MIN_CAPACITY`)."""
BURST_RECOVERY_S = 0.5
"""Seconds of burst won back per `BURST_RECOVERY_PERIOD_S` without a 429, after one shrank it."""
BURST_RECOVERY_PERIOD_S = 300.0
"""How long without a 429 wins back `BURST_RECOVERY_S`: slowly, since each step back
towards a burst the service refused may cost another 429 (and a pause of every call)."""
OVERHEAD_HALF_LIFE_S = 30.0
"""How fast `overhead` forgets: the weight of a request halves every this many seconds."""
OVERHEAD_PRIOR = 10.0
"""Planned requests `overhead` assumes before any (so that the first 412 is not 200%)."""
OVERHEAD_MAX = 2.0
"""The most unplanned requests per planned one that `overhead` reports (two 412s each)."""
_SLOT_S = 0.1
# Spending is counted in slots of this length; a slot leaves the window only once all of
# it has, so the count errs on the side of too much.


class ApiBudget:
    """Tokens for Genesys API calls: `rate_per_minute` x share, `burst_s` of them at once."""

    def __init__(
        self,
        rate_per_minute: int,
        *,
        burst_s: float = DEFAULT_BURST_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")
        if burst_s <= 0:
            raise ValueError("burst_s must be positive")
        self._now = monotonic
        self._client_rate = rate_per_minute / 60.0
        self._burst_s = burst_s
        # the burst a 429 left (at `_throttled_at`); it grows back with quiet periods
        self._throttled_burst_s = burst_s
        self._throttled_at: float | None = None
        self._share = 1.0
        self._level = min(self.capacity, START_LEVEL)  # see the module docstring
        self._since = monotonic()
        self._paused_until = 0.0
        # The service's window says the whole client may spend at most this rate until
        # then; this replica's part of it is taken with its share of the moment.
        self._cap_client_rate = math.inf
        self._cap_until = 0.0
        self._slots: deque[list[float]] = deque()  # [slot start, tokens], oldest first
        self._in_window = 0.0
        # decayed counts of planned and unplanned requests, as of `_counted_at`
        self._planned = 0.0
        self._unplanned = 0.0
        self._counted_at = self._since
        self.spent = 0
        """Tokens spent so far (requests that went out)."""

    @property
    def _share_rate(self) -> float:
        """Tokens per second of this replica's share of the client's rate (no window cap)."""
        return self._client_rate * self._share

    @property
    def _cap_rate(self) -> float:
        """Tokens per second of this replica's share of the service's window cap."""
        return self._cap_client_rate * self._share if self._share else 0.0

    @property
    def rate_per_s(self) -> float:
        """Tokens per second this replica accrues now (its share, any window cap)."""
        rate = self._share_rate
        if self._now() < self._cap_until:
            rate = min(rate, self._cap_rate)
        return rate

    @property
    def burst_s(self) -> float:
        """Seconds of the rate the bucket holds now: the configured burst, less what 429s
        took (see `throttled`), won back by `BURST_RECOVERY_S` per `BURST_RECOVERY_PERIOD_S`
        without one."""
        if self._throttled_at is None:
            return self._burst_s
        quiet = (self._now() - self._throttled_at) // BURST_RECOVERY_PERIOD_S
        return min(self._burst_s, self._throttled_burst_s + BURST_RECOVERY_S * quiet)

    @property
    def capacity(self) -> float:
        """Most tokens that can be held at once (`MIN_CAPACITY` at least)."""
        return max(MIN_CAPACITY, self._share_rate * self.burst_s)

    @property
    def share(self) -> float:
        """This replica's share of the client's budget."""
        return self._share

    def set_share(self, assigned: int, total: int) -> None:
        """Spend `assigned / total` of the client's budget (partitions of the input)."""
        if total < 1 or not 0 <= assigned <= total:
            raise ValueError(f"share {assigned}/{total} is not a fraction of partitions")
        self._refill()
        share = max(assigned, 1) / total if assigned else 0.0
        if share != self._share:
            # The rolling count starts afresh: held against a smaller share, what went out
            # under the larger one would stop this replica's clears for up to a minute
            # after every scale-out. The other replicas' spending is unknown anyway; the
            # bucket keeps at most the new share's burst.
            self._slots.clear()
            self._in_window = 0.0
        self._share = share
        self._level = min(self._level, self.capacity)
        left_s = self._cap_until - self._now()
        if left_s > 0:
            # the new share's part of what the window leaves the client (at its capped rate)
            self._level = min(self._level, self._cap_rate * left_s)

    @property
    def allowance(self) -> float:
        """Most tokens this replica may spend in any `WINDOW_S`: its share of a minute, but
        `MIN_CAPACITY` at least, so that the dearest call (a GET then a PATCH) goes out
        however low the rate; below two calls a minute the floor is what goes out at most
        (a cold replica's start level included)."""
        return max(MIN_CAPACITY, self._share_rate * WINDOW_S)

    def window_room(self) -> float:
        """Tokens the rolling window lets go out now (`level` is never more)."""
        return self.allowance - self._window_spent()

    def window_releases(self) -> list[tuple[float, float]]:
        """When what went out within the last minute leaves the window: (seconds from
        now, tokens), soonest first."""
        now = self._now()
        self._window_spent()
        return [(max(0.0, start + WINDOW_S + _SLOT_S - now), n) for start, n in self._slots]

    def level(self) -> float:
        """Tokens available now (negative while in debt; 0 while paused)."""
        self._refill()
        level = min(self._level, self.window_room())
        if self.paused_for() > 0:
            return min(0.0, level)
        return level

    def peek(self) -> float:
        """`level` as a metrics reader on another thread may see it: computed from the
        state as it stands, changing nothing (`level` brings the bucket and the window up
        to date, which only the event loop may do). What left the window since the loop
        last looked still counts: it reads low by at most that."""
        now = self._now()
        level = min(self._refilled(max(now, self._since)), self.allowance - self._in_window)
        return min(0.0, level) if self._paused_until > now else level

    def wait_s(self, tokens: float = 1.0) -> float:
        """Seconds until `tokens` are available (`inf` when nothing accrues)."""
        now = self._now()
        self._refill()
        paused = max(0.0, self._paused_until - now)
        missing = tokens - self._level
        rate = self.rate_per_s
        if missing <= 0:
            bucket = paused
        elif rate <= 0:
            return math.inf
        else:
            bucket = paused + missing / rate
        return max(bucket, self._window_wait(tokens))

    @property
    def overhead(self) -> float:
        """Unplanned requests per planned one, recently (0 to `OVERHEAD_MAX`)."""
        self._decay()
        return min(OVERHEAD_MAX, self._unplanned / (self._planned + OVERHEAD_PRIOR))

    def spend(self, tokens: float = 1.0, *, planned: bool = True) -> None:
        """Take `tokens` for requests going out now (into debt when there are too few).

        `planned`: the scheduler chose them; the sink's own extra requests are not.
        """
        self._refill()
        self._decay()
        if planned:
            self._planned += tokens
        else:
            self._unplanned += tokens
        self._level -= tokens
        self.spent += math.ceil(tokens)
        slot = math.floor(self._now() / _SLOT_S) * _SLOT_S
        if self._slots and self._slots[-1][0] == slot:
            self._slots[-1][1] += tokens
        else:
            self._slots.append([slot, tokens])
        self._in_window += tokens

    def refund(self, tokens: float, *, planned: bool = True) -> None:
        """Give back tokens that were spent for requests that did not go out.

        `planned`: as they were spent (`spend`), so that `overhead` forgets them.
        """
        if tokens <= 0:
            return
        self._refill()
        # A pause restarts from empty: what comes back during it must not be a burst
        # ready to go out the moment it ends.
        ceiling = 0.0 if self.paused_for() > 0 else self.capacity
        self._level = min(max(ceiling, self._level), self._level + tokens)
        self._decay()
        if planned:
            self._planned = max(0.0, self._planned - tokens)
        else:
            self._unplanned = max(0.0, self._unplanned - tokens)
        self.spent -= math.ceil(tokens)
        left = tokens
        while left > 0 and self._slots:  # they went out last: take them from the newest
            taken = min(left, self._slots[-1][1])
            self._slots[-1][1] -= taken
            self._in_window -= taken
            left -= taken
            if self._slots[-1][1] <= 0:
                self._slots.pop()

    def paused_for(self) -> float:
        """Seconds left of a pause the service asked for (0 when not paused)."""
        return max(0.0, self._paused_until - self._now())

    def pause(self, seconds: float) -> None:
        """Spend nothing for `seconds` (a 429's `Retry-After`, or the login service's while
        no token is valid; at most `MAX_PAUSE_S`, and none for a value that is no number);
        restart from empty."""
        if not math.isfinite(seconds):
            seconds = MAX_PAUSE_S if seconds > 0 else 0.0
        until = self._now() + min(MAX_PAUSE_S, max(0.0, seconds))
        if until > self._paused_until:
            self._refill()
            self._paused_until = until
            self._level = min(self._level, 0.0)
            self._since = max(self._since, until)

    def throttled(self, retry_after_s: float, sent_at: float | None = None) -> None:
        """The service refused a call (429): pause for `retry_after_s` and shrink the burst.

        Spending only what the bucket offers, a 429 means the service counts calls in a
        smaller bucket than ours (or other clients spent it): it refused once this
        replica had drawn `drawn_beyond_rate` from it back to back. Hold half of that
        from now on (at most half the burst), so that a full bucket spent at once and the
        requests that go out into debt (a 412's re-read and retry) both fit in what the
        service admits.

        `sent_at` (the `monotonic` clock): when the refused request went out. More 429s
        within the pause, or for requests sent before the last one was taken in, answer
        calls sent with the first: the burst they drew is halved once, not once per call
        in flight (a `Retry-After` of 0 or shorter than the answers' latency ends the
        pause before they come).
        """
        answered = (
            sent_at is not None and self._throttled_at is not None and sent_at <= self._throttled_at
        )
        if self.paused_for() <= 0 and not answered:
            self._refill()
            rate = self._share_rate
            drawn_s = self.drawn_beyond_rate() / rate if rate > 0 else self.burst_s
            self._throttled_burst_s = max(MIN_BURST_S, min(self.burst_s, drawn_s) / 2)
            self._throttled_at = self._now()
            self._level = min(self._level, self.capacity)
        self.pause(retry_after_s)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Follow the service's `inin-ratelimit-*` headers when they say less than we think.

        `count` calls of the client are counted in a window that resets in `reset`
        seconds and allows `allowed`: this replica's part of what is left is all it may
        spend until then. The cap is kept as the client's (`set_share` rescales this
        replica's part of it).
        """
        try:
            count = int(headers["inin-ratelimit-count"])
            allowed = int(headers["inin-ratelimit-allowed"])
            reset_s = float(headers["inin-ratelimit-reset"])
        except (KeyError, ValueError):
            return
        if allowed <= 0 or not 0 < reset_s <= MAX_PAUSE_S:
            return  # not a window this replica can follow (`MAX_PAUSE_S`; NaN too)
        remaining = allowed - count
        if remaining <= 0:
            self.pause(reset_s)
            return
        try:
            mine = remaining * self._share
            client_rate = remaining / reset_s
        except OverflowError:
            return  # more left than a float holds: nothing to cap
        self._refill()
        self._level = min(self._level, mine)
        self._cap_client_rate = client_rate
        self._cap_until = self._now() + reset_s

    def drawn_beyond_rate(self) -> float:
        """The most tokens spent beyond what the rate accrued, over any recent stretch up
        to now: what a service bucket of the same rate had to hold back to back."""
        now = self._now()
        rate = self._share_rate
        spent = most = 0.0
        for start, tokens in reversed(self._slots):  # stretches ending now, longer and longer
            spent += tokens
            most = max(most, spent - rate * (now - start))
        return most

    def _window_spent(self) -> float:
        """Tokens spent within the last `WINDOW_S` (counted by whole slots)."""
        horizon = self._now() - WINDOW_S - _SLOT_S
        while self._slots and self._slots[0][0] <= horizon:
            self._in_window -= self._slots.popleft()[1]
        if not self._slots:
            self._in_window = 0.0  # no float residue once nothing is counted
        return self._in_window

    def _window_wait(self, tokens: float) -> float:
        """Seconds until the rolling window has room for `tokens`."""
        missing = tokens - self.window_room()
        if missing <= 0:
            return 0.0
        for after, spent in self.window_releases():  # soonest first
            missing -= spent
            if missing <= 0:
                return after
        return math.inf  # more than a window's allowance at once

    def _decay(self) -> None:
        now = self._now()
        if now > self._counted_at:
            factor = 0.5 ** ((now - self._counted_at) / OVERHEAD_HALF_LIFE_S)
            self._planned *= factor
            self._unplanned *= factor
            self._counted_at = now

    def _refill(self) -> None:
        now = self._now()
        if now > self._since:
            self._level = self._refilled(now)
            self._since = now

    def _refilled(self, now: float) -> float:
        """The bucket's level at `now` (not before `_since`), without changing it."""
        rate = self._share_rate
        level, since = self._level, self._since
        if since < self._cap_until:
            capped_to = min(now, self._cap_until)
            level += (capped_to - since) * min(rate, self._cap_rate)
            since = capped_to
        return min(self.capacity, level + (now - since) * rate)


def partition_share(
    owned: Set[int], partitions: Set[int] | None, configured: int
) -> tuple[int, int]:
    """(owned, all): the input partitions this replica owns, out of all of them, for
    `ApiBudget.set_share`. `partitions`: the input topic's partitions as the cluster's
    metadata names them (None or empty: unknown); then all are taken to be the most of
    `configured` (TYPING_TOPIC_PARTITIONS), the highest owned partition + 1, and the number
    owned: the fewest the configuration and the ownership allow, not the whole rate."""
    if partitions:
        return len(owned & partitions), len(partitions)
    return len(owned), max(configured, max(owned, default=-1) + 1, len(owned))
