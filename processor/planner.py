"""What to send now, across every partition of the process, with the budget there is.

DESIGN §4b: the budget decides what users see, so the choice is made when a call can go
out, from the state at that moment; nothing waits inside the sink. In order:

1. read-backs and clears of shown indicators (a phantom is worse than a miss);
2. refreshes that keep a shown indicator alive while typing goes on (I2), most urgent
   first;
3. new sets, most valuable first: the value of a set is the typing it can still show,
   at least the time to its deadline, less what its age says (an indicator asked for
   long ago is likely over soon), weighed by how long this participant's typing usually
   lasts against everyone's (learned per role and per session, `state.bursts`). A
   status change (typing <-> paused) of an indicator already shown adds little (it is
   shown either way) unless its `expiresAt` is about to pass: then the store queues it
   with the refreshes. Since the value falls with age, a round ranks only a window of
   the newest sets of each store, so its cost follows the calls it can make, not the backlog.

A set is only made when the budget can also pay for what shown indicators will need in
time: each shown webchat indicator owes a clear by its deadline, and each one that typing
keeps alive owes a refresh before its `expiresAt` (clear debt); a shown messaging
indicator owes no clear (it lapses by itself), but the same refresh before its "shown
until" while typing goes on, or at once while it is wanted and its last call's outcome
is unknown (`Session.unconfirmed`: it is sent again after its backoff). The check is an
earliest-deadline-first feasibility test over those obligations, and the clears due
together must fit in what the bucket holds at once (a clear cannot go out before its
deadline, and the bucket fills no further than its burst meanwhile). A stop makes a clear due
at once, which no plan foresees: a set is made only when every obligation would still be
paid in time after a few such clears came first (`stop_reserve`), and when it leaves a
token in hand for the next one (`stop_hold`). Every call is weighed with the unplanned
requests that come with calls on average (a 412's re-read and retry).

Pure: the stores, the budget's figures and the clock come in; picks come out.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from processor.budget import ApiBudget
from processor.state import PartitionStore, WorkKind
from processor.state.session import Session

# How many of the newest sets per store a round ranks: this many per set it may make, and
# at least _MIN_WINDOW (some fail the clear-debt check).
_WINDOW = 8
_MIN_WINDOW = 64

Cost = Callable[[Session], int]
"""Requests a session's next call takes (a webchat session without a cached ETag: 2)."""


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """Tuning of the planner.

    Attributes:
        clear_slack_ms: when a clear is due, after its deadline, as the clear-debt check
            plans it. A clear planned late shows typing nobody does for as long, so it is
            planned at the deadline; I1's second is left for a 412 or a retry.
        stop_reserve: unforeseen clears the clear-debt check makes room for (at most one
            per shown webchat indicator). A stop makes a shown indicator's clear due at
            once; with the budget spent to the last token, it would wait for one to
            accrue (a fifth of a second at 300/min), showing typing that is over. Two
            cover the stops that come close together for the cost of two calls a run.
        stop_hold: tokens sets leave in hand while an indicator is shown, so that a stop's
            clear goes out at once instead of waiting for the next token: the reserve is
            room at the due times, which the rate fills, and a budget spent to the last
            token has none in hand. Holding costs no rate (the bucket fills all the same)
            and the best set waits for its token rather than a worse one taking it. Not
            held where the bucket cannot hold it beside the dearest set (a small share).
        window_margin_s: seconds of the rate that sets leave within the rolling window,
            on top of the reserve. The bucket refills all the time, so an unforeseen clear
            waits at most a token's time for it; once the window is full, nothing goes out
            until what was spent a minute before leaves it, and a clear would wait as long.
        age_weight: how much a set's value drops per ms of its cause's age.
        status_change_weight: the share of a set's value a status change (typing <->
            paused) of an indicator already shown keeps.
        weigh_typists: weigh a set's value by how long its participant's typing usually
            lasts (`PartitionStore.typing_weight`); off, every participant counts alike.
        typist_exponent: the power of that weight a set's value is multiplied by. What a
            set shows is the rest of the typing and then its tail (the pause's or the
            timeout's lapse after the last keystroke, nothing after a stop), and the tail
            does not grow with how long the participant types: the weight, a ratio of
            typing lengths, overstates the ratio of what sets show. Its square root ranked
            better than the weight itself on every traffic model of `bench_scheduling`.
    """

    clear_slack_ms: int = 0
    stop_reserve: int = 2
    stop_hold: float = 1.0
    window_margin_s: float = 1.0
    age_weight: float = 0.25
    status_change_weight: float = 0.1
    weigh_typists: bool = True
    typist_exponent: float = 0.5


@dataclass(frozen=True, slots=True)
class Pick:
    """Send `session_id`'s next call (of class `kind`) now, prepaying `cost` tokens."""

    store: PartitionStore
    session_id: str
    kind: WorkKind
    cost: int


@dataclass(frozen=True, slots=True)
class Capacity:
    """What may be spent in this round."""

    tokens: float
    """Budget tokens available now (may be fractional; negative in debt)."""
    rate_per_ms: float
    """Tokens that accrue per millisecond from now on."""
    slots: int
    """Calls that may start now (in-flight limit)."""
    set_slots: int
    """Sets and refreshes among them (the rest is kept for clears)."""
    window_room: float = math.inf
    """Tokens the budget's rolling one-minute cap lets go out now, whatever the bucket holds
    (`tokens` is never more)."""
    window_releases: Callable[[], Sequence[tuple[int, float]]] = tuple
    """When tokens spent in the last minute leave that window: (time, tokens), in order.
    Asked for only when the window could bind."""
    overhead: float = 0.0
    """Unplanned requests (a 412's re-read and retry, a retried 5xx) per planned call,
    recently: what each call is expected to cost on top of itself."""
    burst: float = math.inf
    """Most tokens the budget holds at once (its bucket's capacity)."""

    @classmethod
    def of(cls, budget: ApiBudget, now: int, slots: int, set_slots: int) -> Capacity:
        """What `budget` lets a round spend at `now` (ms, the planner's clock)."""
        return cls(
            tokens=budget.level(),
            rate_per_ms=budget.rate_per_s / 1000,
            slots=slots,
            set_slots=set_slots,
            window_room=budget.window_room(),
            window_releases=lambda: [
                (now + round(1000 * after), n) for after, n in budget.window_releases()
            ],
            overhead=budget.overhead,
            burst=budget.capacity,
        )


Supply = Callable[[int], float]
"""Tokens that become available between now and a time."""


class _Obligations:
    """Future calls shown indicators owe, as due times; answers "can one more be paid?".

    With obligations due at d1 <= d2 <= ..., each costing `w` tokens, `L` tokens now and
    `S(d)` more by time d, every one is paid in time iff for each k: k w <= L + S(dk).
    `f(k) = k w - S(dk)` is kept with prefix and suffix maxima, so adding one obligation
    is checked in O(log n). The bucket's supply is its rate times the wait; the rolling
    window's is what leaves it. `w` is a call and the unplanned requests that come with
    one on average (a 412's re-read and retry: `ApiBudget.overhead`).

    A bucket also holds at most its burst `B`, and an obligation cannot be paid before it
    comes due (a clear goes out at its deadline): what accrues beyond `B` while nothing
    is due is lost. With a `rate` (tokens per ms), `peak` tells how many tokens the
    obligations due together would need at once, one more included: the most
    `(j - i + 1) w - rate (dj - di)` over the runs i..j that hold it, which must stay
    within `B` (plus what the rate brings over the slack a due time allows).
    `h(k) = k w - rate dk` is kept with prefix minima and suffix maxima for it.
    """

    def __init__(
        self, dues: list[int], supply: Supply, weight: float = 1.0, rate: float | None = None
    ) -> None:
        self._dues = sorted(dues)
        self._supply = supply
        self._weight = weight
        self._rate = rate
        self._rebuild()

    def _rebuild(self) -> None:
        w = self._weight
        f = [(k + 1) * w - self._supply(due) for k, due in enumerate(self._dues)]
        self._prefix = []
        best = float("-inf")
        for value in f:
            best = max(best, value)
            self._prefix.append(best)
        self._suffix = [float("-inf")] * (len(f) + 1)
        for k in range(len(f) - 1, -1, -1):
            self._suffix[k] = max(f[k], self._suffix[k + 1])
        if self._rate is not None:
            rate = self._rate
            h = [(k + 1) * w - rate * due for k, due in enumerate(self._dues)]
            self._low = list(itertools.accumulate(h, min))
            self._high = [float("-inf")] * (len(h) + 1)
            for k in range(len(h) - 1, -1, -1):
                self._high[k] = max(h[k], self._high[k + 1])

    def peak(self, due: int) -> float:
        """Tokens needed at once by the obligations due together with one more at `due`
        (the runs of consecutive due times that hold it); needs a `rate`."""
        assert self._rate is not None, "peak needs the rate"
        w = self._weight
        p = bisect.bisect_right(self._dues, due)
        own = (p + 1) * w - self._rate * due
        first = min(self._low[p - 1], own) if p else own  # the run starts here or before
        last = max(self._high[p] + w, own)  # (the later ones move one place on)
        return last - first + w

    def need(self, extra: list[int]) -> float:
        """Tokens needed now so that all obligations, plus `extra` ones, are paid in time."""
        if not extra:
            return self._prefix[-1] if self._prefix else float("-inf")
        if len(extra) > 1:
            return _Obligations(self._dues + extra, self._supply, self._weight).need([])
        due = extra[0]
        p = bisect.bisect_right(self._dues, due)
        before = self._prefix[p - 1] if p else float("-inf")
        after = self._suffix[p] + self._weight
        own = (p + 1) * self._weight - self._supply(due)
        return max(before, after, own)

    def add(self, dues: list[int]) -> None:
        for due in dues:
            bisect.insort(self._dues, due)
        self._rebuild()


class Planner:
    """Chooses the calls of one round (see the module docstring)."""

    def __init__(self, config: PlannerConfig | None = None) -> None:
        self._config = config or PlannerConfig()

    def plan(
        self,
        stores: Sequence[PartitionStore],
        capacity: Capacity,
        now: int,
        cost: Cost,
    ) -> list[Pick]:
        """The calls to make now, in the order to make them."""
        picks: list[Pick] = []
        tokens = capacity.tokens
        slots = capacity.slots
        set_slots = capacity.set_slots
        if slots <= 0 or tokens < 1:
            return picks
        taken: set[str] = set()  # read-backs and clears paid this round
        cleared: set[str] = set()  # of which clears (a read-back may find a set landed)
        refreshed: set[str] = set()  # shown indicators kept alive: their clears are owed

        clears = [(s, store) for store in stores for s in store.queued_clears()]
        # read-backs first (they hold everything else of their session), then oldest
        clears.sort(key=lambda item: (item[0].intent is None, item[0].touched))
        for s, store in clears:
            price = cost(s)
            if slots <= 0 or tokens < price:
                return picks  # clears strictly first: nothing overtakes a waiting clear
            kind = WorkKind.RESOLVE if s.intent is not None else WorkKind.CLEAR
            picks.append(Pick(store, s.sid, kind, price))
            taken.add(s.sid)
            if kind is WorkKind.CLEAR:
                cleared.add(s.sid)
            tokens -= price
            slots -= 1

        # (the stores queue a status change of a shown indicator about to expire with
        # the refreshes: it keeps the indicator alive)
        refreshes = [(s, store) for store in stores for s in store.queued_refreshes()]
        refreshes.sort(key=lambda item: item[0].remote_expires)
        for s, store in refreshes:
            price = cost(s)
            if slots <= 0 or set_slots <= 0 or tokens < price:
                return picks
            kind = WorkKind.REFRESH if s.remote is s.status else WorkKind.SET
            picks.append(Pick(store, s.sid, kind, price))
            refreshed.add(s.sid)
            tokens -= price
            slots -= 1
            set_slots -= 1

        room = min(slots, set_slots, int(tokens))
        waiting = sum(store.queued_set_count for store in stores)
        if not waiting or room <= 0:
            return picks
        slack = self._config.clear_slack_ms
        shown = sum(store.shown_webchat_count for store in stores)
        # (a shown messaging indicator owes no clear, and a stop costs it no call: it
        # weighs only in the obligations, by the refresh typing may still need)
        shown_messaging = sum(store.shown_messaging_count for store in stores)
        reserve = min(self._config.stop_reserve, shown)
        hold = self._config.stop_hold if shown else 0.0  # nothing shown, nothing to stop
        if tokens - 1 < hold and tokens + hold <= capacity.burst:
            # whatever set ranks first, it waits for its token (below): skip the ranking,
            # which most rounds under a tight budget would make in vain
            return picks
        window_margin = self._config.window_margin_s * 1000 * capacity.rate_per_ms
        # Each shown indicator owes at most a refresh and a clear (a messaging one only
        # the refresh), each set two calls more: when the tokens in hand cover all that
        # and the reserve, no check is needed (the usual case with an ample budget, and
        # the cheap one with many sessions).
        # Each call is expected to bring `overhead` unplanned requests with it (a 412's
        # re-read and retry): every obligation, set and reserved clear weighs that much more.
        weight = 1.0 + capacity.overhead
        owed_at_most = weight * (
            2 * shown
            + shown_messaging
            + sum(store.queued_work for store in stores)
            + 2 * waiting
            + reserve
        )
        # (the rolling window has let out at least as much as the bucket: `tokens` is
        # the lesser of the two, less what this round spent from both)
        window_left = capacity.window_room - (capacity.tokens - tokens)
        # the clears due together are paid from what the bucket holds at most, and what
        # the rate brings over the slack their due times allow
        bucket_room = capacity.burst + capacity.rate_per_ms * slack
        debt = capped = None
        if tokens < owed_at_most or bucket_room < owed_at_most:
            dues = self._owed(stores, taken, cleared, refreshed, now)
            rate = capacity.rate_per_ms
            debt = _Obligations(dues, lambda due: rate * (due - now), weight, rate)
            if window_left < owed_at_most:
                # what the window lets out by a due time may be less than the bucket's
                # rate would give: a burst spent within the minute must age out first
                capped = _Obligations(dues, _released_by(capacity.window_releases()), weight)
        # Only `room` sets can go out this round, and the newest waiting are the most
        # valuable (youngest bursts; the value falls with age): a window of them per
        # store is ranked, not every set waiting, so a round costs O(room) however large
        # the backlog (a replay after an outage queues a set for every session).
        window = max(_MIN_WINDOW, _WINDOW * room)
        candidates = [
            (s, store) for store in stores for s in itertools.islice(store.newest_sets(), window)
        ]
        if len(candidates) > room or debt is not None:
            # value per call: a set that needs a GET first (no ETag yet) costs more
            # (ties: queue order, hence -n)
            ranked = [
                (self._value(s, store, now) / (cost(s) + 1), -n, s, store)
                for n, (s, store) in enumerate(candidates)
            ]
            if debt is None:
                # only the best `room` can go out this round: no need to order the rest
                ranked = heapq.nlargest(room, ranked)
            else:
                ranked.sort(reverse=True)  # some may be skipped for their debt
            candidates = [(s, store) for _, _, s, store in ranked]
        for s, store in candidates:
            price = cost(s)
            if slots <= 0 or set_slots <= 0 or tokens < price:
                break
            owes = [] if s.target is not None else [s.deadline + slack]
            if tokens - price < hold and price + hold <= capacity.burst:
                break  # the best set waits for its token; the one in hand is for a stop
            keep = weight * (price + reserve)
            if debt is not None and debt.need(owes) > tokens - keep:
                continue  # its clear (or another's) could not be paid in time after stops
            if debt is not None and owes and debt.peak(owes[0]) > bucket_room:
                continue  # due with more clears than the bucket can hold when they are
            if capped is not None and capped.need(owes) > window_left - keep - window_margin:
                continue  # the same, with what the rolling window will let out by then
            picks.append(Pick(store, s.sid, WorkKind.SET, price))
            if debt is not None:
                debt.add(owes)
            if capped is not None:
                capped.add(owes)
            tokens -= price
            window_left -= price
            slots -= 1
            set_slots -= 1
        return picks

    def _owed(
        self,
        stores: Sequence[PartitionStore],
        taken: set[str],
        cleared: set[str],
        refreshed: set[str],
        now: int,
    ) -> list[int]:
        """Due times of the calls shown indicators will need (besides this round's: the
        read-backs and clears `taken`, of which the `cleared` owe nothing more, and the
        refreshes of `refreshed`, whose clears are still owed; a read-back may find its
        set landed, and that indicator's clear is owed as any shown one's)."""
        slack = self._config.clear_slack_ms
        dues: list[int] = []
        for store in stores:
            for s in store.queued_clears():
                if s.sid not in taken:
                    dues.append(now)  # already due
            for s in store.shown_webchat():
                if s.sid in cleared:
                    continue
                wanted = s.status is not None and s.deadline > now
                dues.append((s.deadline if wanted else now) + slack)
                if s.sid in refreshed:
                    continue
                if wanted and s.remote is not None and s.deadline > s.remote_expires:
                    # typing goes on past what Genesys shows: a refresh is owed first
                    dues.append(max(now, s.remote_expires - store.refresh_lead_ms(s)))
            for s in store.shown_messaging():
                # no clear (it lapses by itself), but a refresh while typing goes on past
                # its "shown until" (none owed while a call for it is out: it is paid)
                if (
                    s.sid in refreshed
                    or s.intent is not None
                    or s.status is None
                    or s.remote_target != s.target
                ):
                    continue
                if s.unconfirmed and s.deadline > now:
                    # recorded from a call that may not have landed: sent again as soon
                    # as its backoff ends, whatever its "shown until"
                    dues.append(now)
                elif s.deadline > s.remote_expires > now:
                    dues.append(max(now, s.remote_expires - store.refresh_lead_ms(s)))
        return dues

    def _value(self, s: Session, store: PartitionStore, now: int) -> float:
        """Typing a set can still show: the time to its deadline, less a share of its age
        (a status change of a shown indicator shows nothing new: a small share of that),
        weighed by how long this participant's typing usually lasts against everyone's
        (to the power `typist_exponent`)."""
        value = (s.deadline - now) - self._config.age_weight * (now - s.originated)
        if s.remote is not None:
            value *= self._config.status_change_weight
        if not self._config.weigh_typists:
            return value
        weight = math.pow(store.typing_weight(s), self._config.typist_exponent)
        return value * weight if value > 0 else value / weight


def _released_by(releases: Sequence[tuple[int, float]]) -> Supply:
    """Tokens that leave the rolling window by a time, from its release schedule."""
    times = [at for at, _ in releases]
    totals = list(itertools.accumulate(tokens for _, tokens in releases))

    def supply(due: int) -> float:
        n = bisect.bisect_right(times, due)
        return totals[n - 1] if n else 0.0

    return supply
