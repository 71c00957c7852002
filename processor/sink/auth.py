"""OAuth client-credentials tokens: cached, refreshed early, fetched once for all callers."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import httpx
from pydantic import SecretStr

from processor import USER_AGENT
from processor.retryafter import retry_after_s
from processor.sink.bounded import send_bounded
from processor.sink.errors import (
    AnswerTooLargeError,
    AuthConfigError,
    ProtocolError,
    SinkError,
    TokenUnavailableError,
)

log = logging.getLogger(__name__)

REFRESH_RETRY_S = 5.0
"""After an early refresh failed, the cached token serves this long before the next try
(or the login's longer `Retry-After`, up to `MAX_LOGIN_WAIT_S`, while it is valid)."""
LOGIN_RETRY_S = 1.0
"""After a login failed with no valid token to fall back on, callers fail at once for this
long (or the login's `Retry-After`, up to `MAX_LOGIN_WAIT_S`) instead of each asking the
login service again: a replica's every call and retry would otherwise hammer it."""
MAX_LOGIN_WAIT_S = 60.0
REFUSED_FIRST_RETRY_S = 1.0
"""After the API refused a token fetched for its previous 401, callers fail at once for
this long instead of each fetching a token the API will refuse again (a login per call).
Each refusal after a pause doubles the next pause, up to `REFUSED_MAX_RETRY_S`; a token
the API takes starts again from this one. Short at first: a brief double 401 must not
hold clears back for long (DESIGN I1). The token is kept for the next try: one the API
had not learnt yet may serve by then."""
REFUSED_MAX_RETRY_S = 10.0
# What an `Authorization: Bearer` header can carry as one credential: visible ASCII. Any
# other character fails every request of the token's life (httpx cannot encode it, or h11
# refuses the header), and a space splits it.
_SENDABLE_TOKEN = re.compile(r"[!-~]+")
MAX_TOKEN_CHARS = 8000
"""The longest access token used: its `Authorization` line stays within the 8 KiB a header
field may take at common servers and proxies (nginx, Apache). A longer one would be refused
on every call of its life, or sent with every call at whatever length (up to the 1 MiB a
login answer may take); an OAuth token is a few hundred characters, a JWT a few KiB."""


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    refresh_at: float
    expires_at: float


class TokenManager:
    """Bearer tokens for one OAuth client (DESIGN §2).

    Credentials go in an HTTP Basic header. A token is reused until `refresh_margin_s`
    before it expires (half its lifetime for short-lived tokens). Concurrent callers that
    need a new token share one request to the login service (single flight). When that
    early refresh fails, the cached token serves until it expires, and the refresh is
    tried again `REFRESH_RETRY_S` later; only once it has expired does a failed refresh
    fail the callers. An API that refuses a token fetched for its previous 401 (`refused`)
    makes callers fail at once for a pause that starts at `REFUSED_FIRST_RETRY_S` and
    doubles with each refusal in a row, up to `REFUSED_MAX_RETRY_S`, until the API takes
    a token again (`accepted`).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        *,
        scope: str | None = None,
        refresh_margin_s: float = 30.0,
        deadline_s: float = 18.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`deadline_s`: the most one login request may take, to its answer's last byte."""
        self._http = http
        self._token_url = token_url
        self._auth = httpx.BasicAuth(client_id, client_secret.get_secret_value())
        self._scope = scope
        self._margin = refresh_margin_s
        self._deadline_s = deadline_s
        self._now = monotonic
        self._token: _Token | None = None
        self._inflight: asyncio.Task[_Token] | None = None
        self._fetches = 0
        # the last failed login with no valid token left: (no new login before, its error)
        self._failed: tuple[float, SinkError] | None = None
        self._refused_until = -math.inf  # see `refused`
        self._refused_pause = REFUSED_FIRST_RETRY_S  # the next refusal's pause

    def __repr__(self) -> str:
        return f"TokenManager(token_url={self._token_url!r}, fetches={self._fetches})"

    @property
    def fetches(self) -> int:
        """Token requests made so far (successful or not)."""
        return self._fetches

    async def token(self) -> str:
        """A valid bearer token, fetching a new one only when the cached one is due.

        A token due for its early refresh but not expired is returned at once while the
        new one is fetched in the background: a slow or hanging login service must not
        hold every call (a clear's among them) for its timeouts. Only a caller with no
        valid token waits for the fetch.
        """
        current = self._token
        now = self._now()
        if now < self._refused_until:
            raise AuthConfigError(
                "API rejected a fresh token (HTTP 401);"
                f" the next try in {self._refused_until - now:.1f} s"
            )
        if current is not None and now < current.refresh_at:
            return current.value
        if current is not None and now < current.expires_at:
            self._fetching()
            return current.value
        failed = self._failed
        if failed is not None and now < failed[0] and self._inflight is None:
            error, left = failed[1], failed[0] - now
            message = f"{error}; the next login in {left:.1f} s"
            if isinstance(error, TokenUnavailableError):
                # what is left of the login's `Retry-After`, when it said one
                raise TokenUnavailableError(message, None if error.retry_after_s is None else left)
            raise type(error)(message)
        try:
            # Shielded: one caller giving up must not cancel the fetch the others wait for.
            return (await asyncio.shield(self._fetching())).value
        except SinkError:
            cached = self._token  # None when a 401 rejected it meanwhile
            if cached is None or self._now() >= cached.expires_at:
                raise
            return cached.value

    async def invalidate(self, rejected: str) -> str:
        """The API answered 401 to `rejected`: a fresh token, fetched once for all callers."""
        current = self._token
        if current is not None and current.value == rejected:
            self._token = None
        # Otherwise another caller already replaced it: that one serves (refreshed if due).
        return await self.token()

    def refused(self, rejected: str) -> None:
        """The API answered 401 to `rejected` although it was fetched after an earlier 401:
        it may take none of this client's tokens (another region or organisation, a
        revoked client). Callers fail at once for a while (`REFUSED_FIRST_RETRY_S`, twice
        as long after each refusal in a row, at most `REFUSED_MAX_RETRY_S`); then the
        token is tried again, and replaced once more only if the API refuses it again."""
        current, now = self._token, self._now()
        if current is None or current.value != rejected:
            return  # another caller already replaced it: that one may be taken
        if now < self._refused_until:
            return  # a request sent before this pause began: the same refusal
        self._refused_until = now + self._refused_pause
        self._refused_pause = min(REFUSED_MAX_RETRY_S, 2 * self._refused_pause)

    def accepted(self) -> None:
        """The API answered a request without a 401: the next refusal pauses callers for
        `REFUSED_FIRST_RETRY_S` again."""
        self._refused_pause = REFUSED_FIRST_RETRY_S

    async def aclose(self) -> None:
        """Cancel a fetch in flight and forget the token."""
        task, self._inflight, self._token = self._inflight, None, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _fetching(self) -> asyncio.Task[_Token]:
        """The token fetch in flight, started when there is none (single flight)."""
        if self._inflight is None:
            task = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[_Token]) -> None:
        if self._inflight is task:
            self._inflight = None
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._token = task.result()
            self._failed = None
            return
        if not isinstance(error, SinkError):
            return
        cached, now = self._token, self._now()
        asked = None  # the login's `Retry-After`, if it said one: waited for, up to a point
        if isinstance(error, TokenUnavailableError) and error.retry_after_s is not None:
            asked = min(MAX_LOGIN_WAIT_S, error.retry_after_s)
        if cached is None or now >= cached.expires_at:
            wait = LOGIN_RETRY_S if asked is None else asked
            self._failed = (now + wait, error)
        else:
            # The cached token still works: callers keep it, and the login service is
            # asked again a little later, not on every call (runs once per failed fetch),
            # nor before its `Retry-After` while the cached token serves.
            wait = REFRESH_RETRY_S if asked is None else max(REFRESH_RETRY_S, asked)
            retry_at = min(now + wait, cached.expires_at)
            self._token = replace(cached, refresh_at=retry_at)
            log.warning(
                "bearer token refresh failed (%s); the cached token, valid for %.0f s more,"
                " is used meanwhile",
                error,
                cached.expires_at - now,
            )

    async def _fetch(self) -> _Token:
        self._fetches += 1
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        started = self._now()
        try:
            request = self._http.build_request(
                "POST",
                self._token_url,
                data=form,
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            )
            response = await send_bounded(self._http, request, self._deadline_s, auth=self._auth)
        except AnswerTooLargeError:
            raise TokenUnavailableError("login service answer too large to read") from None
        except httpx.TimeoutException:
            raise TokenUnavailableError("login service timed out") from None
        except httpx.RequestError as exc:  # unreachable, or an answer that cannot be read
            problem = type(exc).__name__
            raise TokenUnavailableError(f"login service unreachable ({problem})") from None
        status = response.status_code
        if status in (400, 401, 403):
            raise AuthConfigError(f"login service rejected the client credentials (HTTP {status})")
        if status == 429 or status >= 500:
            raise TokenUnavailableError(
                f"login service answered HTTP {status}",
                retry_after_s(response.headers, int(time.time() * 1000)),
            )
        if status != 200:
            raise ProtocolError(f"login service answered HTTP {status}")
        try:
            body = response.json()
            value = body["access_token"]
            lifetime = float(body["expires_in"])
        except (ValueError, KeyError, TypeError, RecursionError):  # (or nested too deep)
            raise ProtocolError("login service sent no access_token/expires_in") from None
        except OverflowError:  # an integer no float holds
            lifetime = math.inf
        kind = body.get("token_type", "bearer")
        if isinstance(value, str) and len(value) > MAX_TOKEN_CHARS:
            raise ProtocolError(
                f"login service sent an unusable token (longer than {MAX_TOKEN_CHARS} characters)"
            )
        if (
            not isinstance(value, str)
            or not _SENDABLE_TOKEN.fullmatch(value)
            or not isinstance(kind, str)
            or kind.lower() != "bearer"
            or not 0 < lifetime < math.inf
        ):
            raise ProtocolError("login service sent an unusable token")
        # Refresh early; a token shorter-lived than twice the margin is refreshed at half-life.
        margin = min(self._margin, lifetime / 2)
        log.debug("obtained a bearer token valid for %.0f s", lifetime)
        expires_at = started + lifetime
        return _Token(value=value, refresh_at=expires_at - margin, expires_at=expires_at)
