"""`GenesysSink`: one desired indicator state → the fewest conditional calls that make it so."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from types import TracebackType
from typing import Any, Self, TypeGuard

import httpx
import orjson

from processor import USER_AGENT
from processor.budget import MAX_PAUSE_S, ApiBudget
from processor.clock import Clock, SystemClock
from processor.domain import (
    MESSAGING_MIN_DURATION_MS,
    Indicator,
    Outcome,
    SessionState,
    SinkResult,
    Status,
    is_uuid,
    is_valid_session_id,
)
from processor.retryafter import retry_after_s
from processor.sink.auth import TokenManager
from processor.sink.backoff import Backoff
from processor.sink.bounded import send_bounded
from processor.sink.breaker import CircuitBreaker, Permit
from processor.sink.config import SinkConfig
from processor.sink.errors import (
    AnswerTooLargeError,
    AuthConfigError,
    ProtocolError,
    SinkClosedError,
    TokenUnavailableError,
)
from processor.sink.etags import ETagCache

log = logging.getLogger(__name__)

# A 429 without a usable Retry-After still pauses the client this long.
_DEFAULT_RETRY_AFTER_S = 1.0
# An ETag an `If-Match` header can carry: visible ASCII (spaces inside), of a sane length.
# Any other would fail every PATCH of the session (httpx cannot encode it, or h11 refuses
# the header) while it stays cached, and the cache holds one per session.
_SENDABLE_ETAG = re.compile(r"[!-~](?:[ !-~]{0,1022}[!-~])?")
# The largest integer of an indicator the processor writes: what JSON keeps exactly
# everywhere, far above any epoch ms or version of ours. Beyond it, a version taken as
# ours would not fit the changelog's 64-bit fields, or could not be incremented.
_MAX_WRITTEN_INT = 2**53
# Why a request was held back by `GenesysSink.hold_while`.
_NOT_CONFIRMED = "the group has not confirmed this member lately"


@dataclass(frozen=True, slots=True)
class RemoteSession:
    """A web-messaging session as the GET returned it."""

    session_id: str
    state: SessionState | None
    etag: str
    indicator: Mapping[str, Any] | None

    @property
    def indicator_version(self) -> int:
        """`version` of the current typing indicator; 0 when there is none, or it is no
        version the processor writes."""
        if self.indicator is None:
            return 0
        version = self.indicator.get("version")
        return version if _is_written_int(version) else 0

    @property
    def typing_indicator(self) -> Indicator | None:
        """The typing indicator as the processor writes it; None when absent or foreign."""
        found = self.indicator
        if found is None:
            return None
        status = found.get("status")
        originated, expires, version = (
            found.get(name) for name in ("originatedAt", "expiresAt", "version")
        )
        if (
            status not in (Status.TYPING.value, Status.PAUSED.value)
            or not _is_written_int(originated)
            or not _is_written_int(expires)
            or not _is_written_int(version)
        ):
            return None
        return Indicator(Status(status), originated, expires, version)


@dataclass(slots=True)
class _Ledger:
    """Cost of one logical call: every HTTP attempt and its latency.

    `prepaid`: budget tokens the caller spent already, used by the first requests.
    `unanswered`: a change-making request went out without a definitive answer.
    `shown_until_ms`: for a typing request, when the indicator the last body built shows
    lapses (see `GenesysSink._typing_body`).
    """

    monotonic: Callable[[], float]
    started: float
    prepaid: int = 0
    attempts: int = 0
    http_status: int | None = None
    unanswered: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    shown_until_ms: int | None = None

    def result(
        self,
        outcome: Outcome,
        error: str = "",
        remote_state: SessionState | None = None,
        remote_indicator: Indicator | None = None,
    ) -> SinkResult:
        return SinkResult(
            outcome=outcome,
            http_status=self.http_status,
            attempts=self.attempts,
            latency_ms=(self.monotonic() - self.started) * 1000.0,
            call_latencies_ms=tuple(self.latencies_ms),
            error=error,
            remote_state=remote_state,
            ambiguous=self.unanswered and outcome is not Outcome.APPLIED,
            remote_indicator=remote_indicator,
            shown_until_ms=self.shown_until_ms,
        )


@dataclass(frozen=True, slots=True)
class _Sent:
    """A non-5xx answer, the token that was sent with it, and when it went out (the
    budget's clock)."""

    response: httpx.Response
    token: str = field(repr=False)
    sent_at: float


@dataclass(frozen=True, slots=True)
class _Failed:
    """Why an attempt failed transiently, and the least wait before the next one (a 5xx's
    `Retry-After`, believed up to `MAX_PAUSE_S`)."""

    reason: str
    retry_after_s: float = 0.0


class _Lost(Enum):
    """Where a request that got no answer was lost, as far as can be told."""

    LOCAL = "local"
    """Never left this process, for a reason of its own (no pooled connection free in
    time, a request the HTTP library would not write): nothing was sent, and nothing
    was learnt about the API."""
    ON_THE_WAY = "on_the_way"
    """Never reached the API: the way there failed (no connection, a proxy that would
    not tunnel)."""
    MAYBE_SENT = "maybe_sent"
    """It may have reached the API (a timeout or a connection lost after writing)."""


@dataclass(frozen=True, slots=True)
class _Unanswered:
    """A request that got no answer: why, and where it was lost."""

    reason: str
    lost: _Lost


class _Wire:
    """Whether a request's headers were written, from httpcore's `trace` extension."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = False

    async def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        if event.endswith(".send_request_headers.complete"):
            self.written = True


@dataclass(slots=True)
class _SessionLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    # `forget` calls while it was in use: a call that began before one caches no ETag
    forgets: int = 0


class GenesysSink:
    """Async client of the Genesys web-messaging session API for one OAuth client.

    One shared `httpx.AsyncClient` (keep-alive, bounded pool, explicit timeouts), one token
    manager, one call budget and one circuit breaker serve every session. Calls for one
    session never overlap (DESIGN I4); different sessions proceed concurrently.

    Use as `async with GenesysSink(config) as sink: ...`, or call `aclose()`.
    """

    def __init__(
        self,
        config: SinkConfig,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """`http` is for tests and embedding (the caller then owns and closes it)."""
        self._config = config
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=config.connect_timeout_s,
                read=config.read_timeout_s,
                write=config.write_timeout_s,
                pool=config.pool_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_keepalive_connections,
                keepalive_expiry=config.keepalive_expiry_s,
            ),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            http2=config.http2,
        )
        self._clock = clock or SystemClock()
        self._now = monotonic
        self._tokens = TokenManager(
            self._http,
            config.token_url,
            config.client_id,
            config.client_secret,
            scope=config.scope,
            refresh_margin_s=config.token_refresh_margin_s,
            deadline_s=config.request_deadline_s,
            monotonic=monotonic,
        )
        self._budget = ApiBudget(config.rate_per_minute, monotonic=monotonic)
        self._breaker = CircuitBreaker(
            config.breaker_failure_threshold, config.breaker_reset_timeout_s, monotonic
        )
        self._backoff = Backoff(config.backoff_base_s, config.backoff_cap_s, rng)
        self._etags = ETagCache(config.etag_cache_size)
        self._locks: dict[str, _SessionLock] = {}
        self._auth_error_reported = False
        self._closed = False
        self._held: Callable[[], bool] = lambda: False

    def __repr__(self) -> str:
        return f"GenesysSink(api_url={self._config.api_url!r}, cached_etags={len(self._etags)})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared HTTP client (for instrumentation; do not close it)."""
        return self._http

    @property
    def tokens(self) -> TokenManager:
        """The token manager (for metrics: `tokens.fetches`)."""
        return self._tokens

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker (for metrics and health: `breaker.state`)."""
        return self._breaker

    @property
    def budget(self) -> ApiBudget:
        """The OAuth client's call budget, as this replica may spend it (DESIGN §4b)."""
        return self._budget

    def cached_etag(self, session_id: str) -> str | None:
        """The ETag the next PATCH of this session would send, if any (a look that does
        not count as use of the cache entry)."""
        return self._etags.peek(session_id)

    def forget(self, session_id: str) -> None:
        """Drop what is cached about a session (closed, or its partition moved away),
        also what a call of it in flight would cache when its answer comes."""
        self._etags.drop(session_id)
        entry = self._locks.get(session_id)
        if entry is not None:
            entry.forgets += 1

    def hold_while(self, held: Callable[[], bool]) -> None:
        """Send no request while `held()` says so (the processor's membership lease has
        lapsed: its partitions may be another replica's). A call that meets it ends as
        failed, unsent, or of unknown outcome when an earlier request of it may have
        landed; checked before every request, retries included."""
        self._held = held

    async def aclose(self) -> None:
        """Release the connection pool (if the sink created it) and the token."""
        if self._closed:
            return
        self._closed = True
        await self._tokens.aclose()
        if self._owns_http:
            await self._http.aclose()

    async def apply(
        self,
        session_id: str,
        desired: Indicator | None,
        *,
        version: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        """Make `desired` the session's typing indicator; `None` clears it.

        Sends `If-Match` with the cached ETag; GETs only when none is cached or after a
        412 (then re-reads and retries, up to `max_conflict_attempts` PATCHes). A read
        that shows the change already there ends the call without a PATCH. One that
        shows an indicator of this change's `version` (default: `desired`'s) or later
        ends it as `overtaken`: another writer got there first, and the version must
        not repeat. Never waits for budget: each request that goes out spends a token
        (the first `prepaid` were paid by the caller), and a 429 pauses the budget and
        ends the call (`rate_limited`), as does a pause that another call's 429 began.
        """
        ledger = _Ledger(self._now, self._now(), prepaid)
        if not is_valid_session_id(session_id):
            return self._settle(ledger, Outcome.REJECTED, "session id is not URL-safe")
        self._check_open()
        indicator = None if desired is None else desired.to_genesys()
        body = orjson.dumps({"customAttributes": {"typingIndicator": indicator}})
        try:
            async with self._exclusive(session_id) as since:
                if version is None and desired is not None:
                    version = desired.version
                return await self._apply(session_id, desired, version, body, ledger, since)
        finally:
            self._budget.refund(ledger.prepaid)

    async def get_session(
        self, session_id: str, *, prepaid: int = 0
    ) -> tuple[SinkResult, RemoteSession | None]:
        """Read a session (one GET); caches its ETag when it is connected.

        The result's outcome is `applied` when the read succeeded (whatever the state),
        else why not; the session is None unless the read succeeded.
        """
        ledger = _Ledger(self._now, self._now(), prepaid)
        if not is_valid_session_id(session_id):
            return self._settle(ledger, Outcome.REJECTED, "session id is not URL-safe"), None
        self._check_open()
        try:
            async with self._exclusive(session_id) as since:
                read = await self._read(session_id, ledger, since)
        finally:
            self._budget.refund(ledger.prepaid)
        if isinstance(read, SinkResult):
            return read, None
        return ledger.result(Outcome.APPLIED, remote_state=read.state), read

    async def read_back(self, session_id: str, *, prepaid: int = 0) -> SinkResult:
        """Read the session's indicator back (to resolve a call whose outcome is unknown).

        `applied` with `remote_state` and `remote_indicator` (None: no indicator) when the
        read succeeded; else why not.
        """
        result, session = await self.get_session(session_id, prepaid=prepaid)
        if session is None:
            return result
        return replace(result, remote_indicator=session.typing_indicator)

    async def agent_typing(
        self,
        conversation_id: str,
        communication_id: str,
        duration_ms: int,
        *,
        until_ms: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        """Show agent (or bot) typing to the customer for `duration_ms` (DESIGN §2b), and
        not past `until_ms` (epoch ms) when given (see `_typing_body`)."""
        ledger = _Ledger(self._now, self._now(), prepaid)
        if not (is_uuid(conversation_id) and is_uuid(communication_id)):
            return self._settle(ledger, Outcome.REJECTED, "conversation ids must be UUIDs")
        self._check_open()
        body = self._typing_body(
            duration_ms,
            until_ms,
            lambda duration: orjson.dumps({"typing": {"type": "On", "duration": duration}}),
            ledger,
        )
        url = self._config.agent_typing_url(conversation_id, communication_id)
        try:
            async with self._exclusive(f"agent_typing/{conversation_id}/{communication_id}"):
                return await self._post_typing(url, body, ledger)
        finally:
            self._budget.refund(ledger.prepaid)

    async def open_messaging_typing(
        self,
        integration_id: str,
        from_id: str,
        from_id_type: str,
        nickname: str | None,
        duration_ms: int,
        *,
        until_ms: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        """Show the customer's typing to the agent for `duration_ms` (DESIGN §2b), and not
        past `until_ms` (epoch ms) when given (see `_typing_body`)."""
        ledger = _Ledger(self._now, self._now(), prepaid)
        if not is_uuid(integration_id):
            return self._settle(ledger, Outcome.REJECTED, "integration id must be a UUID")
        self._check_open()
        sender: dict[str, str] = {"id": from_id, "idType": from_id_type}
        if nickname is not None:
            sender["nickname"] = nickname

        def build(duration: int) -> bytes:
            now = datetime.fromtimestamp(self._clock.now_ms() / 1000, tz=UTC)
            return orjson.dumps(
                {
                    "channel": {
                        "from": sender,
                        "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    },
                    "events": [
                        {"eventType": "Typing", "typing": {"type": "On", "duration": duration}}
                    ],
                }
            )

        body = self._typing_body(duration_ms, until_ms, build, ledger)
        url = self._config.open_event_url(integration_id)
        try:
            async with self._exclusive(f"open_messaging/{integration_id}/{from_id}"):
                return await self._post_typing(url, body, ledger)
        finally:
            self._budget.refund(ledger.prepaid)

    def _typing_body(
        self,
        duration_ms: int,
        until_ms: int | None,
        build: Callable[[int], bytes],
        ledger: _Ledger,
    ) -> Callable[[], bytes | None]:
        """The body of each attempt of a typing request, built (`build`) with the `duration`
        it carries when it goes out: what is left until `until_ms` (epoch ms; when None,
        `duration_ms` after the first attempt), at most `duration_ms`, at least
        `MESSAGING_MIN_DURATION_MS`; None once nothing is left. `ledger.shown_until_ms`
        says until when the body built last shows typing.

        Genesys shows typing from when a request arrives: a retry after a 5xx or a timeout,
        or a request that waited for its token, with the duration fixed when the work was
        taken would show it past the deadline by as long as the wait (a phantom the store
        never knew of). With less than the shortest duration left, it still shows past
        `until_ms` (by less than that duration): the result says so."""
        end = until_ms

        def body() -> bytes | None:
            nonlocal end
            now = self._clock.now_ms()
            if end is None:
                end = now + duration_ms
            left = min(duration_ms, end - now)
            if left <= 0:
                return None
            duration = max(MESSAGING_MIN_DURATION_MS, left)
            ledger.shown_until_ms = now + duration
            return build(duration)

        return body

    async def _post_typing(
        self, url: str, body: Callable[[], bytes | None], ledger: _Ledger
    ) -> SinkResult:
        answer = await self._call("POST", url, ledger, body)
        if isinstance(answer, SinkResult):
            return answer
        status = answer.status_code
        if 200 <= status < 300:
            return ledger.result(Outcome.APPLIED)
        if status == 404:
            return ledger.result(
                Outcome.SESSION_NOT_FOUND,
                error="conversation, communication or integration not found",
            )
        if status == 409:
            # an ended (read-only) conversation: typing into it again is refused again
            return ledger.result(
                Outcome.SESSION_NOT_CONNECTED, error="conversation has ended (HTTP 409)"
            )
        if status == 400:
            return ledger.result(Outcome.REJECTED, error="typing event rejected (HTTP 400)")
        if status == 403:
            return self._auth_failure(
                ledger,
                "API refused the token: scope missing (HTTP 403; agent typing needs"
                " `conversations`, Open Messaging `messaging`)",
            )
        return ledger.result(Outcome.FAILED, error=f"unexpected HTTP {status}")

    def _settle(self, ledger: _Ledger, outcome: Outcome, error: str) -> SinkResult:
        """A result reached without a request (nothing sent, nothing spent)."""
        self._budget.refund(ledger.prepaid)
        ledger.prepaid = 0
        return ledger.result(outcome, error=error)

    async def _apply(
        self,
        session_id: str,
        desired: Indicator | None,
        version: int | None,
        body: bytes,
        ledger: _Ledger,
        since: int,
    ) -> SinkResult:
        """`since`: the session's `forgets` when the call began (see `_remember`)."""
        conflicts = 0
        etag = self._etags.get(session_id)
        while True:
            if etag is None:
                read = await self._read(session_id, ledger, since)
                if isinstance(read, SinkResult):
                    return read
                if read.state is not SessionState.CONNECTED:
                    return ledger.result(
                        Outcome.SESSION_NOT_CONNECTED,
                        error=f"session is {read.state or 'in an unknown state'}",
                        remote_state=read.state,
                    )
                if _already_there(desired, read):
                    # an attempt whose answer was lost did land, or another writer made
                    # the same change: do not repeat it
                    return ledger.result(Outcome.APPLIED, remote_state=SessionState.CONNECTED)
                shown = read.typing_indicator
                if version is not None and shown is not None and shown.version >= version:
                    # A change this processor has not recorded (a partition's previous
                    # owner still at work during a rebalance): versions must not repeat.
                    return ledger.result(
                        Outcome.OVERTAKEN,
                        error=f"the session already shows version {shown.version}",
                        remote_state=SessionState.CONNECTED,
                        remote_indicator=shown,
                    )
                etag = read.etag
            answer = await self._call(
                "PATCH",
                self._config.session_url(session_id),
                ledger,
                self._unless_past(desired, body),
                etag,
            )
            if isinstance(answer, SinkResult):
                return answer
            if 200 <= answer.status_code < 300:
                # 200 as the contract says; any other success made the change (or will),
                # and taken as a failure its clear would be planned as needless
                new_etag = _etag_of(answer)
                if new_etag is None:
                    self._etags.drop(session_id)  # next apply re-reads
                else:
                    self._remember(session_id, new_etag, since)
                return ledger.result(Outcome.APPLIED, remote_state=SessionState.CONNECTED)
            if answer.status_code == 412:
                conflicts += 1
                self._etags.drop(session_id)
                etag = None
                if conflicts >= self._config.max_conflict_attempts:
                    return ledger.result(
                        Outcome.CONFLICT, error=f"ETag still stale after {conflicts} PATCHes"
                    )
                log.debug("412 on %s: re-reading (conflict %d)", session_id, conflicts)
                continue
            return self._refusal(session_id, answer, ledger)

    def _unless_past(self, desired: Indicator | None, body: bytes) -> Callable[[], bytes | None]:
        """The PATCH body for each attempt, or None once a set's `expiresAt` has passed
        (DESIGN I1: a set that would expire before it is sent is dropped; a 412's re-read,
        a 5xx's backoff or a slow login can outlast it). A clear is always sent."""

        def attempt() -> bytes | None:
            if desired is not None and desired.expires_at <= self._clock.now_ms():
                return None
            return body

        return attempt

    async def _read(
        self, session_id: str, ledger: _Ledger, since: int
    ) -> RemoteSession | SinkResult:
        answer = await self._call("GET", self._config.session_url(session_id), ledger)
        if isinstance(answer, SinkResult):
            return answer
        if answer.status_code != 200:
            return self._refusal(session_id, answer, ledger)
        try:
            session = _parse_session(session_id, answer)
        except ProtocolError as exc:
            return ledger.result(Outcome.FAILED, error=str(exc))
        if session.state is SessionState.CONNECTED:
            self._remember(session_id, session.etag, since)
        else:
            self._etags.drop(session_id)  # the next apply must validate the state again
        return session

    def _remember(self, session_id: str, etag: str, since: int) -> None:
        """Cache `etag` from the answer of a call that began when the session's `forgets`
        was `since`, unless it was forgotten meanwhile: the ETag would outlive the forget
        (a partition moved away and back), and its next PATCH would meet a 412."""
        entry = self._locks.get(session_id)
        if entry is not None and entry.forgets != since:
            return
        self._etags.put(session_id, etag)

    def _refusal(self, session_id: str, answer: httpx.Response, ledger: _Ledger) -> SinkResult:
        """Outcome of a final non-2xx answer that is not a 412, 429, 401 or 5xx."""
        status = answer.status_code
        if status == 404:
            self._etags.drop(session_id)
            return ledger.result(Outcome.SESSION_NOT_FOUND, error="session not found")
        if status == 409:
            self._etags.drop(session_id)
            return ledger.result(Outcome.SESSION_NOT_CONNECTED, error="session is not connected")
        if status == 403:
            return self._auth_failure(ledger, "API refused the token: scope missing (HTTP 403)")
        # Whatever went wrong, the next apply re-reads rather than trusting the cache.
        self._etags.drop(session_id)
        return ledger.result(Outcome.FAILED, error=f"unexpected HTTP {status}")

    async def _call(
        self,
        method: str,
        url: str,
        ledger: _Ledger,
        body: bytes | Callable[[], bytes | None] | None = None,
        if_match: str | None = None,
    ) -> httpx.Response | SinkResult:
        """One logical call: breaker, budget, token, 401/429/5xx handling, bounded retries.

        A callable `body` is built again for each attempt (None: nothing is worth sending
        any more). Returns the response to interpret, or the final result when the call
        gave up.
        """
        failures = 0
        reauthenticated = False
        give_up_at = self._now() + self._config.max_retry_s
        while True:
            # Built before the breaker is asked: a half-open breaker's permit is its probe,
            # which must not be taken by a call that then sends nothing.
            payload = body() if callable(body) else body
            if callable(body) and payload is None:
                return ledger.result(
                    Outcome.FAILED, error="its time passed before it could be sent"
                )
            permit = self._breaker.allow()
            if permit is None:
                return ledger.result(
                    Outcome.FAILED,
                    error=f"circuit open; next probe in {self._breaker.retry_in():.1f} s",
                )
            try:
                sent = await self._attempt(method, url, payload, if_match, ledger, permit)
                if isinstance(sent, SinkResult):
                    return sent
                if isinstance(sent, _Sent):
                    status = sent.response.status_code
                    if status == 401 and not reauthenticated:
                        reauthenticated = True
                        await self._tokens.invalidate(sent.token)
                        continue
                    if status == 401:
                        self._tokens.refused(sent.token)
                        return self._auth_failure(ledger, "API rejected a fresh token (HTTP 401)")
                    self._tokens.accepted()
                    if status == 429:
                        # The budget waits, not this call: what to send after the pause is
                        # decided then, from the state at that moment.
                        pause = retry_after_s(sent.response.headers, self._clock.now_ms())
                        if pause is None:
                            pause = _DEFAULT_RETRY_AFTER_S
                        self._budget.throttled(pause, sent.sent_at)
                        # what the budget believed (a minute at most), not the raw header
                        pause = self._budget.paused_for()
                        log.warning("429 from Genesys: pausing all calls for %.1f s", pause)
                        return ledger.result(
                            Outcome.RATE_LIMITED, error=f"429; retry after {pause:.1f} s"
                        )
                    return sent.response
                failure = sent
            except AuthConfigError as exc:
                return self._auth_failure(ledger, str(exc))
            except TokenUnavailableError as exc:
                if exc.retry_after_s:
                    # No call goes out before the login service answers again: the budget
                    # waits as for a 429 of the API, so that no work is taken meanwhile
                    # only to fail at once, each session's backoff growing beyond the wait.
                    self._budget.pause(exc.retry_after_s)
                failure = _Failed(str(exc))
            except ProtocolError as exc:
                failure = _Failed(str(exc))
            failures += 1
            if failures >= self._config.max_transient_attempts:
                return ledger.result(
                    Outcome.FAILED, error=f"{failure.reason} (gave up after {failures} tries)"
                )
            delay = max(self._backoff.delay(failures - 1), failure.retry_after_s)
            if self._now() + delay > give_up_at:
                return ledger.result(
                    Outcome.FAILED, error=f"{failure.reason} (no time left to retry)"
                )
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        method: str,
        url: str,
        body: bytes | None,
        if_match: str | None,
        ledger: _Ledger,
        permit: Permit,
    ) -> _Sent | SinkResult | _Failed:
        """One request under the breaker's `permit`: a non-5xx answer, a final result
        (the budget is paused), or why it failed transiently. Token errors propagate.

        The request spends a budget token (a prepaid one first) only once it can go out,
        and gets it back when it provably did not (DESIGN §4b: unsent work costs nothing).
        """
        settled = False
        try:
            token = await self._tokens.token()
            # Checked with the token in hand (fetching it may take a while), for prepaid
            # requests too: a 429 met by another call since they were planned pauses them.
            if self._budget.paused_for() > 0:
                return ledger.result(
                    Outcome.RATE_LIMITED,
                    error=f"API budget paused for {self._budget.paused_for():.1f} s after a 429",
                )
            if self._held():
                # a retry too: its backoff may have slept through a stall
                return ledger.result(Outcome.FAILED, error=f"not sent: {_NOT_CONFIRMED}")
            prepaid = ledger.prepaid > 0
            if prepaid:
                ledger.prepaid -= 1
            else:
                # unplanned, into debt if need be: the scheduler waits it out
                self._budget.spend(planned=False)
            sent_at = self._now()
            response = await self._send(method, url, token, body, if_match, ledger)
            settled = True
            changes = method != "GET"
            if isinstance(response, _Unanswered):
                lost = response.lost
                if lost is not _Lost.MAYBE_SENT:
                    if prepaid:
                        ledger.prepaid += 1  # for the retry, or refunded when the call ends
                    else:
                        self._budget.refund(1, planned=False)
                if lost is _Lost.LOCAL:
                    # no evidence that the API fails: a half-open breaker's probe is freed
                    self._breaker.abandon(permit)
                else:
                    self._breaker.record_failure(sent_at)
                ledger.unanswered = ledger.unanswered or (changes and lost is _Lost.MAYBE_SENT)
                return _Failed(response.reason)
            self._budget.observe(response.headers)
            if response.status_code >= 500:
                self._breaker.record_failure(sent_at)
                ledger.unanswered = ledger.unanswered or changes
                wait = retry_after_s(response.headers, self._clock.now_ms())
                return _Failed(
                    f"{method} answered HTTP {response.status_code}",
                    min(MAX_PAUSE_S, wait or 0.0),
                )
            # Any other answer (even 4xx or 429) shows the API is up.
            self._breaker.record_success()
            return _Sent(response, token, sent_at)
        finally:
            if not settled:
                # No request went out (paused, no token, cancelled): free a probe slot.
                self._breaker.abandon(permit)

    async def _send(
        self,
        method: str,
        url: str,
        token: str,
        body: bytes | None,
        if_match: str | None,
        ledger: _Ledger,
    ) -> httpx.Response | _Unanswered:
        """One HTTP request: the response, or why there is none and where it was lost."""
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        if if_match is not None:
            headers["If-Match"] = if_match
        wire = _Wire()
        started = self._now()
        try:
            request = self._http.build_request(
                method, url, content=body, headers=headers, extensions={"trace": wire}
            )
            response = await send_bounded(self._http, request, self._config.request_deadline_s)
        except (httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
            # waited for a pooled connection in vain; a URL no transport serves
            return _Unanswered(f"{method} not sent ({type(exc).__name__})", _Lost.LOCAL)
        except httpx.LocalProtocolError as exc:
            # HTTP/1.1 raises it only as it builds the headers, before writing; HTTP/2 also
            # for its state machine's complaints while the answer is read
            if wire.written:
                return _Unanswered(f"{method} failed ({type(exc).__name__})", _Lost.MAYBE_SENT)
            return _Unanswered(f"{method} not sent ({type(exc).__name__})", _Lost.LOCAL)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
            # a proxy raises it only while it sets up the tunnel, before the request
            return _Unanswered(f"{method} not sent ({type(exc).__name__})", _Lost.ON_THE_WAY)
        except httpx.TimeoutException:
            return _Unanswered(f"{method} timed out", _Lost.MAYBE_SENT)
        except httpx.RequestError as exc:
            # (a transport failure, or an answer that cannot be read: a gzip error page)
            return _Unanswered(f"{method} failed ({type(exc).__name__})", _Lost.MAYBE_SENT)
        except AnswerTooLargeError:
            # an answer, but one not read: as if it could not be
            return _Unanswered(f"{method} answer too large to read", _Lost.MAYBE_SENT)
        finally:
            ledger.attempts += 1
            ledger.latencies_ms.append((self._now() - started) * 1000.0)
        ledger.http_status = response.status_code
        return response

    def _auth_failure(self, ledger: _Ledger, error: str) -> SinkResult:
        # Loud once: a misconfigured client fails every call the same way.
        if not self._auth_error_reported:
            self._auth_error_reported = True
            log.error("Genesys OAuth client is misconfigured: %s", error)
        else:
            log.debug("Genesys OAuth client is misconfigured: %s", error)
        return ledger.result(Outcome.AUTH_CONFIG_ERROR, error=error)

    def _check_open(self) -> None:
        if self._closed:
            raise SinkClosedError("GenesysSink is closed")

    @asynccontextmanager
    async def _exclusive(self, session_id: str) -> AsyncIterator[int]:
        """Serialise calls of one session; the lock lives only while someone uses it.

        Yields the session's `forgets` as the call begins (see `_remember`)."""
        entry = self._locks.get(session_id)
        if entry is None:
            entry = self._locks[session_id] = _SessionLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield entry.forgets
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[session_id]


def _is_written_int(value: object) -> TypeGuard[int]:
    """An integer as the processor writes one into an indicator (epoch ms, a version)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_WRITTEN_INT


def _already_there(desired: Indicator | None, read: RemoteSession) -> bool:
    """True when the session already shows `desired` (same version, same status), or
    shows no indicator at all when `desired` is a clear."""
    if desired is None:
        return read.indicator is None
    remote = read.typing_indicator
    return remote is not None and (remote.version, remote.status) == (
        desired.version,
        desired.status,
    )


def _etag_of(response: httpx.Response, body: object = None) -> str | None:
    """The answer's ETag (its header's, else its JSON body's), if one `If-Match` can carry.
    `body`: the body as the caller parsed it already; else it is parsed here if need be."""
    etag = response.headers.get("ETag")
    if etag and _SENDABLE_ETAG.fullmatch(etag):
        return str(etag)
    if body is None:
        try:
            body = response.json()
        except (ValueError, RecursionError):  # (nested deeper than the parser goes)
            return None
    value = body.get("etag") if isinstance(body, dict) else None
    return value if isinstance(value, str) and _SENDABLE_ETAG.fullmatch(value) else None


def _names(found: object, session_id: str) -> bool:
    """Whether a session body's `id` is `session_id`. Case aside: Genesys ids are UUIDs,
    which a producer may spell in capitals while the API answers in small letters."""
    return isinstance(found, str) and found.casefold() == session_id.casefold()


def _parse_session(session_id: str, response: httpx.Response) -> RemoteSession:
    try:
        body = response.json()
    except (ValueError, RecursionError):  # (nested deeper than the parser goes)
        raise ProtocolError("session GET returned no JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError("session GET returned no JSON object")
    if "id" in body and not _names(body["id"], session_id):
        # misrouted, or a cache's answer for another URL: its indicator and ETag are not
        # this session's, and taken as such they would end the call as already done
        raise ProtocolError("session GET answered for another session")
    etag = _etag_of(response, body)
    if etag is None:
        raise ProtocolError("session GET returned no ETag")
    try:
        state: SessionState | None = SessionState(str(body.get("state")))
    except ValueError:
        state = None
    attributes = body.get("customAttributes")
    indicator = attributes.get("typingIndicator") if isinstance(attributes, dict) else None
    return RemoteSession(
        session_id=session_id,
        state=state,
        etag=etag,
        indicator=indicator if isinstance(indicator, dict) else None,
    )
