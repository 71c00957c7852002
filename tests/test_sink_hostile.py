"""A Genesys that answers outside the contract (DESIGN §2), served over real HTTP: the sink
classifies every such answer as an outcome, with bounded memory and time, and never lets
the answer break a later call."""

from __future__ import annotations

import asyncio
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from processor.asgi import serve_in_background
from processor.clock import ManualClock
from processor.domain import Indicator, Outcome, SinkResult, Status
from processor.models import TypingEvent
from processor.runtime.reconciler import Reconciler
from processor.sink import GenesysSink, SinkConfig
from processor.sink.auth import MAX_TOKEN_CHARS
from processor.sink.oneshot import apply_once
from processor.state import EngineConfig, PartitionStore

Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Send], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]
SESSION = {"id": "s1", "state": "connected", "etag": "e1", "customAttributes": {}}
LOGIN = {"access_token": "t0k3n", "token_type": "bearer", "expires_in": 3600}
# shown until far beyond any test's clock: a set whose `expiresAt` has passed is not sent
TYPING = Indicator(Status.TYPING, 0, 4_102_444_800_000, 1)


def answer(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Handler:
    """A handler that answers `status` with `body` in one piece."""

    async def handle(send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers or JSON})
        await send({"type": "http.response.body", "body": body})

    return handle


@dataclass
class Genesys:
    """What the API and the login service answer (per method; "token" for the login), and
    the requests they saw."""

    answers: dict[str, Handler] = field(default_factory=dict)
    seen: list[tuple[str, dict[bytes, bytes]]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        key = "token" if scope["path"] == "/oauth/token" else scope["method"]
        self.seen.append((key, dict(scope["headers"])))
        handler = self.answers.get(key)
        if handler is None:
            handler = (
                answer(200, orjson.dumps(LOGIN))
                if key == "token"
                else answer(200, orjson.dumps(SESSION), [*JSON, (b"etag", b"e1")])
            )
        await handler(send)


def config_for(base_url: str, **tuning: Any) -> SinkConfig:
    """The sink's configuration for the Genesys served at `base_url` (API and login)."""
    return SinkConfig(
        api_url=base_url,
        login_url=base_url,
        client_id="id",
        client_secret=SecretStr("secret"),
        **tuning,
    )


@asynccontextmanager
async def sink_against(genesys: Genesys, **tuning: Any) -> AsyncIterator[GenesysSink]:
    """A sink of the real HTTP client against `genesys` served on a local port."""
    async with serve_in_background(genesys) as server:
        config = config_for(server.base_url, backoff_base_s=0.001, backoff_cap_s=0.002, **tuning)
        async with GenesysSink(config, clock=ManualClock()) as sink:
            yield sink


DEEP = b"[" * 100_000
"""JSON nested deeper than Python's recursion limit: `json` raises RecursionError."""


async def test_a_session_nested_too_deep_is_a_failed_read_not_a_crash() -> None:
    genesys = Genesys({"GET": answer(200, DEEP, [*JSON, (b"etag", b"e1")])})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
    assert (result.outcome, result.attempts) == (Outcome.FAILED, 1)
    assert "no JSON" in result.error


async def test_a_patch_answer_nested_too_deep_is_applied_and_re_read_next_time() -> None:
    genesys = Genesys({"PATCH": answer(200, DEEP)})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
        assert sink.cached_etag("s1") is None  # no ETag to trust: the next apply reads
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)


async def test_a_login_answer_nested_too_deep_fails_and_waits_like_any_failed_login() -> None:
    """The RecursionError escaped the login: every call crashed, and since no failed login
    was recorded, every call asked the login service again."""
    genesys = Genesys({"token": answer(200, DEEP)})
    async with sink_against(genesys) as sink:
        first = await sink.apply("s1", None)
        second = await sink.apply("s1", None)
        assert sink.tokens.fetches == 1
    for result in (first, second):
        assert (result.outcome, result.attempts) == (Outcome.FAILED, 0)
        assert "login service sent no access_token" in result.error


UNUSABLE_TOKENS = {
    # UnicodeEncodeError as httpx built the header: every call crashed for the token's life
    "non-ascii": {**LOGIN, "access_token": "t\u00e9k"},
    "non-latin": {**LOGIN, "access_token": "t\u2603k"},
    # no header value: every call failed unsent for the token's life, and no login again
    "line-break": {**LOGIN, "access_token": "t0k3n\r\nX-Injected: 1"},
    "space": {**LOGIN, "access_token": "t0k 3n"},
    # a token the API would refuse as a bearer's: two 401s and the pause, a misconfiguration
    "not-bearer": {**LOGIN, "token_type": "mac"},
    # sent on every call for the token's life, each refused (no server takes a header line
    # that long), or each carrying up to the 1 MiB a login answer may take
    "huge": {**LOGIN, "access_token": "t" * (MAX_TOKEN_CHARS + 1)},
}


@pytest.mark.parametrize("login", sorted(UNUSABLE_TOKENS))
async def test_a_token_no_bearer_header_can_carry_is_refused_at_login(login: str) -> None:
    genesys = Genesys({"token": answer(200, orjson.dumps(UNUSABLE_TOKENS[login]))})
    async with sink_against(genesys) as sink:
        first = await sink.apply("s1", None)
        second = await sink.apply("s1", None)
        assert sink.tokens.fetches == 1  # the next login waits, as after any failure
    assert [key for key, _ in genesys.seen] == ["token"]  # nothing sent with it
    for result in (first, second):
        assert (result.outcome, result.attempts) == (Outcome.FAILED, 0)
        assert "unusable token" in result.error


async def test_a_token_as_long_as_a_bearer_header_may_carry_is_sent() -> None:
    token = "t" * MAX_TOKEN_CHARS
    genesys = Genesys({"token": answer(200, orjson.dumps({**LOGIN, "access_token": token}))})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", None)
    assert result.outcome is Outcome.APPLIED
    assert genesys.seen[-1][1][b"authorization"] == f"Bearer {token}".encode()


UNSENDABLE_ETAGS = {
    "non-ascii": "e\u00e9",  # UnicodeEncodeError as httpx built If-Match: a crash
    "line-break": "e1\r\nX-Injected: 1",  # cached, then every PATCH failed unsent
    "huge": "e" * 100_000,  # cached for every session: no bound on the cache's memory
    "empty": "",
}


@pytest.mark.parametrize("etag", sorted(UNSENDABLE_ETAGS))
async def test_a_session_whose_etag_no_if_match_can_carry_is_a_failed_read(etag: str) -> None:
    session = orjson.dumps({**SESSION, "etag": UNSENDABLE_ETAGS[etag]})
    genesys = Genesys({"GET": answer(200, session)})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
        assert sink.cached_etag("s1") is None
    assert (result.outcome, result.attempts) == (Outcome.FAILED, 1)
    assert "no ETag" in result.error
    assert "PATCH" not in [key for key, _ in genesys.seen]


async def test_an_unsendable_etag_header_gives_way_to_the_body_s() -> None:
    headers = [*JSON, (b"etag", "\u00e9".encode())]
    genesys = Genesys({"GET": answer(200, orjson.dumps(SESSION), headers)})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
    assert result.outcome is Outcome.APPLIED
    patch = next(headers for key, headers in genesys.seen if key == "PATCH")
    assert patch[b"if-match"] == b"e1"


@pytest.mark.parametrize("etag", sorted(UNSENDABLE_ETAGS))
async def test_a_patch_answered_with_an_unsendable_etag_caches_none(etag: str) -> None:
    body = orjson.dumps({**SESSION, "etag": UNSENDABLE_ETAGS[etag]})
    genesys = Genesys({"PATCH": answer(200, body)})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
        assert sink.cached_etag("s1") is None  # the next apply reads the session first
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)


SHOWN = {"status": "typing", "originatedAt": 0, "expiresAt": TYPING.expires_at, "version": 1}


@pytest.mark.parametrize("other", ["s2", "", None, 1])
async def test_a_session_read_of_another_session_is_a_failed_read(other: object) -> None:
    """A misrouted answer, or one a cache kept for another URL: its indicator was taken
    as this session's (here the change looked made, and no PATCH went out), and its ETag
    was cached for this session."""
    session = {**SESSION, "id": other, "customAttributes": {"typingIndicator": SHOWN}}
    genesys = Genesys({"GET": answer(200, orjson.dumps(session), [*JSON, (b"etag", b"e2")])})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
        assert sink.cached_etag("s1") is None
        read_back = await sink.read_back("s1")
    for failed in (result, read_back):
        assert (failed.outcome, failed.attempts) == (Outcome.FAILED, 1)
        assert "another session" in failed.error
        assert failed.remote_indicator is None
    assert "PATCH" not in [key for key, _ in genesys.seen]


@pytest.mark.parametrize("same", ["s1", "S1", "absent"])
async def test_a_session_read_naming_this_session_or_none_is_read(same: str) -> None:
    """Ids are compared as Genesys routes them (a UUID in either case); an answer that
    names no session is taken as the one asked for."""
    session: dict[str, Any] = {**SESSION, "customAttributes": {"typingIndicator": SHOWN}}
    if same == "absent":
        del session["id"]
    else:
        session["id"] = same
    genesys = Genesys({"GET": answer(200, orjson.dumps(session), [*JSON, (b"etag", b"e2")])})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
        assert sink.cached_etag("s1") == "e2"
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 1)  # already there


def gzip_bomb(expanded: int) -> bytes:
    """A gzip body of `expanded` zero bytes (about a thousandth of that on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(expanded >> 20)) + packer.flush()


def streamed(status: int, chunk: bytes, times: int, headers: list[tuple[bytes, bytes]]) -> Handler:
    """A handler that answers `chunk` `times` times over (no more in memory than one)."""

    async def handle(send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for _ in range(times):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return handle


HUGE = {
    # 64 MiB that say nothing: read whole into memory, then parsed as JSON
    "huge": streamed(200, b" " * (1 << 20), 64, [*JSON, (b"etag", b"e1")]),
    # 256 MiB decompressed from 256 KiB: read whole into memory, whatever its size
    "gzip-bomb": answer(
        200, gzip_bomb(256 << 20), [*JSON, (b"etag", b"e1"), (b"content-encoding", b"gzip")]
    ),
}


@pytest.mark.parametrize("kind", sorted(HUGE))
@pytest.mark.parametrize("method", ["GET", "PATCH", "token"])
async def test_an_answer_too_large_to_read_is_not_read_whole(kind: str, method: str) -> None:
    genesys = Genesys({method: HUGE[kind]})
    async with sink_against(genesys) as sink:
        tracemalloc.start()
        try:
            result = await sink.apply("s1", TYPING)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # the most read (1 MiB), and the pieces of the connection
    assert peak < 16 << 20, peak
    assert result.outcome is Outcome.FAILED
    assert "too large" in result.error
    # a PATCH's answer unread may have applied it: the next call reads the session first
    assert result.ambiguous is (method == "PATCH")


def packed(wbits: int, data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


ENCODED = {
    "gzip": (b"gzip", 31),
    "deflate": (b"deflate", 15),  # zlib-wrapped, as RFC 9110 says
    "raw-deflate": (b"deflate", -15),  # as some servers send it
    "identity": (b"identity", 0),
}


@pytest.mark.parametrize("encoding", sorted(ENCODED))
async def test_an_encoded_answer_of_a_usual_size_is_read(encoding: str) -> None:
    name, wbits = ENCODED[encoding]
    body = orjson.dumps(SESSION)
    if wbits:
        body = packed(wbits, body)
    headers = [*JSON, (b"content-encoding", name)]
    genesys = Genesys({"GET": answer(200, body, headers), "PATCH": answer(200, body, headers)})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
        assert sink.cached_etag("s1") == "e1"  # from the PATCH's body
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)
    assert all(headers[b"accept-encoding"] == b"gzip, deflate" for _, headers in genesys.seen)


async def test_an_answer_whose_encoding_cannot_be_decoded_is_an_unreadable_answer() -> None:
    headers = [*JSON, (b"etag", b"e1"), (b"content-encoding", b"gzip")]
    genesys = Genesys({"GET": answer(200, orjson.dumps(SESSION), headers)})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
    assert result.outcome is Outcome.FAILED
    assert "GET failed (DecodingError)" in result.error


@pytest.mark.parametrize("status", [201, 202, 204])
async def test_a_patch_answered_with_another_success_is_applied(status: int) -> None:
    """It was a failure the sink knew the outcome of: the store took the change as not
    made, and a clear planned next found nothing to take down (an indicator shown for
    good). A success says it was made (or will be); with no ETag the next call reads."""
    genesys = Genesys({"PATCH": answer(status, b"")})
    async with sink_against(genesys) as sink:
        result = await sink.apply("s1", TYPING)
        assert sink.cached_etag("s1") is None
    assert (result.outcome, result.attempts, result.http_status) == (
        Outcome.APPLIED,
        2,
        status,
    )


def trickling(stop: asyncio.Event, every_s: float = 0.05, most_s: float = 20.0) -> Handler:
    """A handler that answers a session a byte at a time, each well within the read
    timeout, until `stop` is set (`most_s` at most)."""

    async def handle(send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": JSON})
        for _ in range(int(most_s / every_s)):
            if stop.is_set():
                return
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            await asyncio.sleep(every_s)
        await send({"type": "http.response.body", "body": orjson.dumps(SESSION)})

    return handle


@pytest.mark.parametrize("method", ["GET", "PATCH", "token"])
async def test_an_answer_that_trickles_in_times_out_as_one_that_stalls(method: str) -> None:
    """Each read waited less than the read timeout, and nothing bounded their sum: the
    call, its session's lock and a connection were held for as long as the answer came."""
    stop = asyncio.Event()
    # the whole answer after 5 s of trickling at the soonest (later on a slow machine): a
    # call bounded by the four timeouts' sum (0.6 s) has given up on it before
    genesys = Genesys({method: trickling(stop, most_s=5.0)})
    tuning = {"pool_timeout_s": 0.1, "connect_timeout_s": 0.1, "write_timeout_s": 0.1}
    async with sink_against(
        genesys, read_timeout_s=0.3, max_transient_attempts=1, **tuning
    ) as sink:
        result = await sink.apply("s1", TYPING)
        stop.set()
    assert result.outcome is Outcome.FAILED
    assert "timed out" in result.error
    assert result.ambiguous is (method == "PATCH")


@pytest.mark.parametrize("version", [2**63, 10**20])
async def test_an_indicator_with_a_version_no_processor_writes_is_foreign(version: int) -> None:
    """It was taken as another writer's, newer than ours: the store adopted its version,
    which no changelog record can hold, and the partition's next flush failed."""
    clock = ManualClock(start_ms=1_700_000_000_000)
    store = PartitionStore(0, EngineConfig(), clock)
    now = clock.now_ms()
    event = {"event_id": "e1", "session_id": "s1", "status": "typing", "occurred_at": now}
    store.on_event(TypingEvent.model_validate(event), 1)
    [work] = store.take_work(1)
    shown = {"status": "typing", "originatedAt": now, "expiresAt": now + 1000, "version": 0}
    session = orjson.dumps({**SESSION, "customAttributes": {"typingIndicator": shown}})
    session = session.replace(b'"version":0', b'"version":%d' % version)
    genesys = Genesys({"GET": answer(200, session, [*JSON, (b"etag", b"e1")])})
    results: list[SinkResult] = []
    async with sink_against(genesys) as sink:
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        recorded.set_result(None)
        await Reconciler(sink, 1).launch(work, 0, recorded, results.append)
        assert (await sink.read_back("s1")).remote_indicator is None
    [result] = results
    assert result.outcome is Outcome.APPLIED  # written over, as any foreign indicator
    store.on_result(work, result)
    assert store.drain().changelog


@pytest.mark.parametrize("method", ["GET", "PATCH", "token"])
async def test_a_redirect_is_not_followed_and_the_token_stays_home(method: str) -> None:
    elsewhere = Genesys()
    async with serve_in_background(elsewhere) as other:
        location = f"{other.base_url}/collect".encode()
        genesys = Genesys({method: answer(307, b"", [(b"location", location)])})
        async with sink_against(genesys) as sink:
            result = await sink.apply("s1", TYPING)
    assert elsewhere.seen == []
    assert result.outcome is Outcome.FAILED
    assert "307" in result.error


async def test_apply_once_after_an_indicator_with_a_version_no_processor_writes_starts_at_1() -> (
    None
):
    """The command sent that version + 1: beyond 64 bits, encoding the PATCH crashed it."""
    shown = {"status": "typing", "originatedAt": 1, "expiresAt": 2, "version": 0}
    session = orjson.dumps({**SESSION, "customAttributes": {"typingIndicator": shown}})
    session = session.replace(b'"version":0', b'"version":%d' % (2**64 - 1))
    genesys = Genesys({"GET": answer(200, session, [*JSON, (b"etag", b"e1")])})
    async with serve_in_background(genesys) as server:
        result, desired = await apply_once(config_for(server.base_url), "s1", Status.TYPING, 5000)
    assert result.outcome is Outcome.APPLIED
    assert desired is not None
    assert desired.version == 1
