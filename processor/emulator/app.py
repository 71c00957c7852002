"""The emulator's HTTP surface: Genesys' API (DESIGN §2) and the admin API (DESIGN §7).

`create_app(config)` returns a Starlette application whose whole state lives in one
`Emulator` object (`app.state.emulator`); nothing is global, so several emulators can
run side by side in one process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from processor.clock import Clock, SystemClock
from processor.domain import SESSION_ID_PATTERN, SessionState, Status
from processor.emulator.auth import (
    MESSAGING_SCOPES,
    READ_SESSION_SCOPES,
    TYPING_SCOPES,
    WRITE_SESSION_SCOPES,
    Authenticator,
    AuthError,
    Grant,
)
from processor.emulator.config import EmulatorConfig
from processor.emulator.faults import FaultInjector, Faults, FaultsUpdate
from processor.emulator.messaging import (
    ConversationBody,
    ConversationPatchBody,
    IntegrationBody,
    MessagingStore,
    OpenEventBody,
    TypingBody,
    is_genesys_id,
    normalized_message,
)
from processor.emulator.ratelimit import RateLimiter
from processor.emulator.store import (
    TYPING_INDICATOR,
    PreconditionFailed,
    PreconditionRequired,
    SessionExists,
    SessionNotConnected,
    SessionNotFound,
    SessionStore,
)

log = logging.getLogger(__name__)

SESSION_PATH = "/api/v2/webchat/sessions/{sessionId}"
CLIENT_CLOSED = 499
"""What the stats count for a request its client closed before it was read."""
TYPING_PATH = (
    "/api/v2/conversations/messages/{conversationId}/communications/{communicationId}/typing"
)
OPEN_EVENT_PATH = "/api/v2/conversations/messages/{integrationId}/inbound/open/event"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a password

CORRELATION_HEADER = "inin-correlation-id"
_CORRELATION_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_PATH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_JSON = "application/json"
_SERVER_ERROR_CODES = {
    500: "internal.server.error",
    502: "bad.gateway",
    503: "service.unavailable",
    504: "gateway.timeout",
}

Handler = Callable[[Request, str], Awaitable[Response]]
ApiHandler = Callable[[Request, str, Grant], Awaitable[Response]]


# --- request bodies -------------------------------------------------------------------


class TypingIndicatorBody(BaseModel):
    """`customAttributes.typingIndicator` as the processor writes it (epoch ms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Status
    originatedAt: Annotated[StrictInt, Field(ge=0)]
    expiresAt: Annotated[StrictInt, Field(ge=0)]
    version: Annotated[StrictInt, Field(ge=0)]


class SessionPatchBody(BaseModel):
    """Body of `PATCH /api/v2/webchat/sessions/{id}`: a merge of custom attributes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Parsed from JSON, so every value already is JSON; `Any` skips a costly re-validation.
    customAttributes: dict[str, Any]


class CreateSessionBody(BaseModel):
    """Body of `POST /emulator/sessions`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    session_id: Annotated[str, Field(pattern=SESSION_ID_PATTERN)]
    state: SessionState = SessionState.CONNECTED
    custom_attributes: dict[str, JsonValue] | None = None


class AdminSessionPatchBody(BaseModel):
    """Body of `PATCH /emulator/sessions/{id}`: a new state and/or another writer's merge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: SessionState | None = None
    custom_attributes: dict[str, JsonValue] | None = None


# --- responses --------------------------------------------------------------------------


def _json(
    status: int, body: Any, correlation_id: str, headers: dict[str, str] | None = None
) -> Response:
    all_headers = {CORRELATION_HEADER: correlation_id}
    if headers:
        all_headers.update(headers)
    content = b"" if body is None else orjson.dumps(body)
    media_type = None if body is None else _JSON
    return Response(content, status_code=status, headers=all_headers, media_type=media_type)


def _error(
    status: int,
    code: str,
    message: str,
    correlation_id: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """A Genesys-style error body; messages never carry secrets or tokens."""
    body: dict[str, Any] = {
        "message": message,
        "code": code,
        "status": status,
        "contextId": correlation_id,
        "details": [],
        "errors": [],
    }
    if extra:
        body.update(extra)
    return _json(status, body, correlation_id, headers)


def _validation_message(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    location = ".".join(str(part) for part in error["loc"]) or "body"
    return f"Invalid request body: {location}: {error['msg']}"


def _correlation_id(request: Request) -> str:
    # Echo a caller's correlation id (as Genesys does) when it is harmless to reflect.
    given = request.headers.get(CORRELATION_HEADER)
    if given is not None and _CORRELATION_RE.fullmatch(given):
        return given
    return str(uuid.uuid4())


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if authorization is None:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


# --- the emulator -------------------------------------------------------------------------


class Emulator:
    """All state of one emulator and the request handlers that act on it."""

    def __init__(self, config: EmulatorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.auth = Authenticator(config.clients, self.clock)
        self.injector = FaultInjector(config.faults)
        self.limiter = RateLimiter(
            config.faults.rate_limit_per_minute, config.faults.rate_limit_burst, self.clock
        )
        self.store = SessionStore(self.clock, config.history_kept)
        self.calls: Counter[tuple[str, str, int]] = Counter()
        self.messaging = MessagingStore(config.typing_events_kept)

    def reset(self) -> None:
        """Back to the start-up configuration: no sessions, stats, tokens or usage."""
        self.auth.forget_tokens()
        self.injector.update(self.config.faults, reseed=True)
        faults = self.config.faults
        self.limiter.configure(faults.rate_limit_per_minute, faults.rate_limit_burst)
        self.limiter.reset()
        self.store = SessionStore(self.clock, self.config.history_kept)
        self.calls.clear()
        self.messaging.clear()

    def set_faults(self, update: FaultsUpdate) -> Faults:
        """Change faults at run time; giving a seed replays the RNG from it."""
        faults = update.apply_to(self.injector.faults)
        self.injector.update(faults, reseed="seed" in update.model_fields_set)
        self.limiter.configure(faults.rate_limit_per_minute, faults.rate_limit_burst)
        return faults

    def stats(self) -> dict[str, Any]:
        """Call counts by method, path template and status."""
        calls = [
            {"method": method, "path": path, "status": status, "count": count}
            for (method, path, status), count in sorted(self.calls.items())
        ]
        by_route: dict[str, dict[str, int]] = {}
        for (method, path, status), count in sorted(self.calls.items()):
            by_route.setdefault(f"{method} {path}", {})[str(status)] = count
        return {"total": sum(self.calls.values()), "calls": calls, "by_route": by_route}

    # --- wrappers ---------------------------------------------------------------------

    def counted(self, template: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint that counts its calls in the stats and never leaks a traceback."""

        async def endpoint(request: Request) -> Response:
            correlation_id = _correlation_id(request)
            try:
                response = await handler(request, correlation_id)
            except ClientDisconnect:
                # The caller gave up before its request was read (a timeout): nothing went
                # wrong here, and no answer will be read. Counted as 499, "client closed".
                log.info("emulator: %s %s: the client went away", request.method, template)
                response = Response(status_code=CLIENT_CLOSED)
            except Exception:
                log.exception("emulator: unexpected error on %s %s", request.method, template)
                response = _error(500, "internal.server.error", "Internal error", correlation_id)
            self.calls[(request.method, template, response.status_code)] += 1
            return response

        return endpoint

    def api(self, scopes: frozenset[str], handler: ApiHandler) -> Handler:
        """The gauntlet of an API call: latency, 401, 403, 429, injected 5xx, then work."""

        async def guarded(request: Request, correlation_id: str) -> Response:
            delay = self.injector.delay_s()
            if delay > 0:
                await asyncio.sleep(delay)
            grant = self.auth.grant_for(request.headers.get("authorization"))
            if grant is None:
                return _error(
                    401,
                    "bad.credentials",
                    "Invalid login credentials.",
                    correlation_id,
                    {"WWW-Authenticate": "Bearer"},
                )
            if not grant.allows(scopes):
                wanted = " or ".join(sorted(scopes))
                return _error(
                    403,
                    "missing.any.scopes",
                    f"Unable to perform the requested action. You need one of the scopes: {wanted}",
                    correlation_id,
                )
            decision = self.limiter.check(grant.client_id)
            rate_headers = decision.headers() if decision is not None else None
            if decision is not None and not decision.allowed:
                return _error(
                    429,
                    "too.many.requests",
                    f"Rate limit exceeded the maximum. Retry the request in "
                    f"[{decision.retry_after_s}] seconds",
                    correlation_id,
                    rate_headers,
                )
            failure = self.injector.error_status()
            if failure is not None:
                code = _SERVER_ERROR_CODES.get(failure, "internal.server.error")
                return _error(failure, code, "Injected fault", correlation_id, rate_headers)
            response = await handler(request, correlation_id, grant)
            if rate_headers:
                response.headers.update(rate_headers)
            return response

        return guarded

    # --- OAuth ------------------------------------------------------------------------

    async def token(self, request: Request, correlation_id: str) -> Response:
        """`POST /oauth/token`: client credentials by HTTP Basic or form fields."""
        form = parse_qs((await request.body()).decode("utf-8", "replace"))

        def field(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        if field("grant_type") != "client_credentials":
            return _error(
                400,
                "unsupported_grant_type",
                "Only grant_type=client_credentials is supported",
                correlation_id,
                extra={"error": "unsupported_grant_type"},
            )
        credentials = _basic_credentials(request.headers.get("authorization"))
        if credentials is None:
            client_id, client_secret = field("client_id"), field("client_secret")
            if client_id is None or client_secret is None:
                return self._bad_client(correlation_id)
            credentials = (client_id, client_secret)
        try:
            issued = self.auth.issue(
                credentials[0],
                credentials[1],
                field("scope"),
                self.injector.faults.token_lifetime_s,
            )
        except AuthError as exc:
            if exc.status == 401:
                return self._bad_client(correlation_id)
            return _error(
                exc.status, exc.code, exc.message, correlation_id, extra={"error": exc.code}
            )
        body = {
            "access_token": issued.access_token,
            "token_type": "bearer",
            "expires_in": issued.expires_in,
            "scope": " ".join(issued.scopes),
        }
        return _json(200, body, correlation_id, {"Cache-Control": "no-store"})

    @staticmethod
    def _bad_client(correlation_id: str) -> Response:
        return _error(
            401,
            "bad.credentials",
            "Invalid client credentials",
            correlation_id,
            {"WWW-Authenticate": 'Basic realm="genesys-emulator"'},
            extra={"error": "invalid_client"},
        )

    # --- web-chat sessions --------------------------------------------------------------

    async def get_session(self, request: Request, correlation_id: str, grant: Grant) -> Response:
        """`GET /api/v2/webchat/sessions/{id}`."""
        session_id: str = request.path_params["sessionId"]
        try:
            session = self.store.get(session_id)
        except SessionNotFound:
            return self._not_found(session_id, correlation_id)
        return _json(200, session.to_genesys(), correlation_id, {"ETag": session.etag})

    async def patch_session(self, request: Request, correlation_id: str, grant: Grant) -> Response:
        """`PATCH /api/v2/webchat/sessions/{id}`: conditional merge of custom attributes."""
        session_id: str = request.path_params["sessionId"]
        raw = await request.body()
        # Nothing below awaits: the precondition check and the write are one atomic step.
        try:
            self.store.get(session_id)
        except SessionNotFound:
            return self._not_found(session_id, correlation_id)
        try:
            body = SessionPatchBody.model_validate_json(raw)
            changes = dict(body.customAttributes)
            indicator = changes.get(TYPING_INDICATOR)
            if indicator is not None:
                changes[TYPING_INDICATOR] = TypingIndicatorBody.model_validate(
                    indicator
                ).model_dump(mode="json")
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        if_match = request.headers.get("if-match")
        try:
            self.store.check_write(session_id, if_match)
            if self.injector.conflict():
                # Another writer got there first: its change bumps the ETag, ours loses.
                self.store.bump(session_id)
                raise PreconditionFailed(session_id)
            session = self.store.patch(session_id, if_match, changes)
        except PreconditionRequired:
            return _error(
                428,
                "precondition.required",
                "This request must be conditional: send If-Match with the session's ETag",
                correlation_id,
            )
        except PreconditionFailed:
            return _error(
                412,
                "precondition.failed",
                "The session has changed; If-Match does not match its current ETag",
                correlation_id,
            )
        except SessionNotConnected as exc:
            return _error(
                409,
                "conflict",
                f"Typing indicators apply only to connected sessions; this one is "
                f"{exc.state.value}",
                correlation_id,
            )
        return _json(200, session.to_genesys(), correlation_id, {"ETag": session.etag})

    @staticmethod
    def _not_found(session_id: str, correlation_id: str) -> Response:
        return _error(404, "not.found", f"Session {session_id} not found", correlation_id)

    # --- conversations typing -------------------------------------------------------------

    async def post_typing(self, request: Request, correlation_id: str, grant: Grant) -> Response:
        """`POST .../communications/{communicationId}/typing` → 202 (DESIGN §2b)."""
        conversation_id: str = request.path_params["conversationId"]
        communication_id: str = request.path_params["communicationId"]
        if not (is_genesys_id(conversation_id) and is_genesys_id(communication_id)):
            return _error(
                400, "bad.request", "Invalid conversation or communication id", correlation_id
            )
        try:
            body = TypingBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        if not self.messaging.has_communication(conversation_id, communication_id):
            return _error(
                404, "not.found", "Conversation or communication not found", correlation_id
            )
        if self.messaging.has_ended(conversation_id):
            message = "The conversation has ended: it is read-only"
            return _error(409, "conversation.ended", message, correlation_id)
        self.messaging.record(
            self.clock.now_ms(),
            body.typing.duration,
            kind="agent_typing",
            conversation_id=conversation_id.lower(),
            communication_id=communication_id.lower(),
            type=body.typing.type,
            client_id=grant.client_id,
        )
        return _json(202, None, correlation_id)

    async def post_open_event(
        self, request: Request, correlation_id: str, grant: Grant
    ) -> Response:
        """`POST .../{integrationId}/inbound/open/event` → 202 with the normalized message."""
        integration_id: str = request.path_params["integrationId"]
        if not is_genesys_id(integration_id):
            return _error(400, "bad.request", "Invalid integration id", correlation_id)
        try:
            body = OpenEventBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        if not self.messaging.has_integration(integration_id):
            return _error(404, "not.found", "Integration not found", correlation_id)
        sender = body.channel.sender
        now = self.clock.now_ms()
        for event in body.events:
            self.messaging.record(
                now,
                event.typing.duration,
                kind="open_messaging",
                integration_id=integration_id.lower(),
                from_id=sender.id,
                from_id_type=sender.id_type,
                nickname=sender.nickname,
                type=event.typing.type,
                client_id=grant.client_id,
            )
        return _json(202, normalized_message(integration_id.lower(), body), correlation_id)

    # --- admin API ------------------------------------------------------------------------

    async def admin_create_session(self, request: Request) -> Response:
        """`POST /emulator/sessions` → 201 with the session."""
        correlation_id = _correlation_id(request)
        try:
            body = CreateSessionBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        try:
            session = self.store.create(
                body.session_id, body.state, dict(body.custom_attributes or {})
            )
        except SessionExists:
            return _error(
                409, "conflict", f"Session {body.session_id} already exists", correlation_id
            )
        return _json(201, session.to_genesys(), correlation_id, {"ETag": session.etag})

    async def admin_get_session(self, request: Request) -> Response:
        """`GET /emulator/sessions/{id}`: the session, without auth or stats."""
        correlation_id = _correlation_id(request)
        session_id: str = request.path_params["sessionId"]
        try:
            session = self.store.get(session_id)
        except SessionNotFound:
            return self._not_found(session_id, correlation_id)
        return _json(200, session.to_genesys(), correlation_id, {"ETag": session.etag})

    async def admin_patch_session(self, request: Request) -> Response:
        """`PATCH /emulator/sessions/{id}`: new state and/or another writer's merge."""
        correlation_id = _correlation_id(request)
        session_id: str = request.path_params["sessionId"]
        try:
            body = AdminSessionPatchBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        try:
            if body.state is not None:
                self.store.set_state(session_id, body.state)
            if body.custom_attributes is not None:
                self.store.admin_merge(session_id, dict(body.custom_attributes))
            session = self.store.get(session_id)
        except SessionNotFound:
            return self._not_found(session_id, correlation_id)
        return _json(200, session.to_genesys(), correlation_id, {"ETag": session.etag})

    async def admin_history(self, request: Request) -> Response:
        """`GET /emulator/sessions/{id}/history`: the changes of the typing indicator the
        session keeps (its latest `history_kept`), and how many older ones it `dropped`."""
        correlation_id = _correlation_id(request)
        session_id: str = request.path_params["sessionId"]
        try:
            session = self.store.get(session_id)
        except SessionNotFound:
            return self._not_found(session_id, correlation_id)
        body = {
            "session_id": session.id,
            "history": [change.to_json() for change in session.history],
            "dropped": session.history_dropped,
        }
        return _json(200, body, correlation_id)

    async def admin_get_faults(self, request: Request) -> Response:
        """`GET /emulator/faults`."""
        return _json(200, self.injector.faults.model_dump(mode="json"), _correlation_id(request))

    async def admin_put_faults(self, request: Request) -> Response:
        """`PUT /emulator/faults`: change the named fault fields."""
        correlation_id = _correlation_id(request)
        try:
            update = FaultsUpdate.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        return _json(200, self.set_faults(update).model_dump(mode="json"), correlation_id)

    async def admin_stats(self, request: Request) -> Response:
        """`GET /emulator/stats`."""
        return _json(200, self.stats(), _correlation_id(request))

    async def admin_typing_events(self, request: Request) -> Response:
        """`GET /emulator/typing-events`: the typing calls accepted that are kept (the latest
        `typing_events_kept`), oldest first."""
        body = {"typing_events": list(self.messaging.calls)}
        return _json(200, body, _correlation_id(request))

    async def admin_typing(self, request: Request) -> Response:
        """`GET /emulator/typing?conversation_id=` or `?integration_id=&from_id=`: the
        accepted typing calls of one target, with `at_ms`, `duration` and `shown_until`."""
        correlation_id = _correlation_id(request)
        query = request.query_params
        conversation_id = query.get("conversation_id")
        integration_id = query.get("integration_id")
        if (conversation_id is None) == (integration_id is None):
            return _error(
                400,
                "bad.request",
                "give either conversation_id, or integration_id (and from_id)",
                correlation_id,
            )
        calls = self.messaging.query(
            conversation_id=None if conversation_id is None else conversation_id.lower(),
            integration_id=None if integration_id is None else integration_id.lower(),
            from_id=query.get("from_id"),
        )
        return _json(200, {"typing": calls}, correlation_id)

    async def admin_create_conversation(self, request: Request) -> Response:
        """`POST /emulator/conversations` `{"conversation_id", "communication_ids"}` → 201."""
        correlation_id = _correlation_id(request)
        try:
            body = ConversationBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        self.messaging.add_conversation(body.conversation_id, body.communication_ids)
        return _json(201, body.model_dump(), correlation_id)

    async def admin_patch_conversation(self, request: Request) -> Response:
        """`PATCH /emulator/conversations/{conversationId}` `{"state"}`: `disconnected`
        ends it (its typing calls are answered 409), `connected` takes it back."""
        correlation_id = _correlation_id(request)
        conversation_id: str = request.path_params["conversationId"]
        try:
            body = ConversationPatchBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        if not self.messaging.set_ended(conversation_id, body.state == "disconnected"):
            return _error(404, "not.found", "Conversation not found", correlation_id)
        return _json(200, {"conversation_id": conversation_id, "state": body.state}, correlation_id)

    async def admin_create_integration(self, request: Request) -> Response:
        """`POST /emulator/integrations` `{"integration_id"}` → 201."""
        correlation_id = _correlation_id(request)
        try:
            body = IntegrationBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "bad.request", _validation_message(exc), correlation_id)
        self.messaging.add_integration(body.integration_id)
        return _json(201, body.model_dump(), correlation_id)

    async def admin_reset(self, request: Request) -> Response:
        """`POST /emulator/reset` → 204."""
        self.reset()
        return _json(204, None, _correlation_id(request))

    async def health(self, request: Request) -> Response:
        """`GET /emulator/health`: liveness for scripts waiting on start-up."""
        return _json(200, {"status": "ok"}, _correlation_id(request))

    def routes(self) -> list[Route]:
        """Every route of the emulator."""
        return [
            Route(TOKEN_PATH, self.counted(TOKEN_PATH, self.token), methods=["POST"]),
            Route(
                SESSION_PATH,
                self.counted(SESSION_PATH, self.api(READ_SESSION_SCOPES, self.get_session)),
                methods=["GET"],
            ),
            Route(
                SESSION_PATH,
                self.counted(SESSION_PATH, self.api(WRITE_SESSION_SCOPES, self.patch_session)),
                methods=["PATCH"],
            ),
            Route(
                TYPING_PATH,
                self.counted(TYPING_PATH, self.api(TYPING_SCOPES, self.post_typing)),
                methods=["POST"],
            ),
            Route(
                OPEN_EVENT_PATH,
                self.counted(OPEN_EVENT_PATH, self.api(MESSAGING_SCOPES, self.post_open_event)),
                methods=["POST"],
            ),
            Route("/emulator/conversations", self.admin_create_conversation, methods=["POST"]),
            Route(
                "/emulator/conversations/{conversationId}",
                self.admin_patch_conversation,
                methods=["PATCH"],
            ),
            Route("/emulator/integrations", self.admin_create_integration, methods=["POST"]),
            Route("/emulator/typing", self.admin_typing, methods=["GET"]),
            Route("/emulator/sessions", self.admin_create_session, methods=["POST"]),
            Route("/emulator/sessions/{sessionId}", self.admin_get_session, methods=["GET"]),
            Route("/emulator/sessions/{sessionId}", self.admin_patch_session, methods=["PATCH"]),
            Route("/emulator/sessions/{sessionId}/history", self.admin_history, methods=["GET"]),
            Route("/emulator/faults", self.admin_get_faults, methods=["GET"]),
            Route("/emulator/faults", self.admin_put_faults, methods=["PUT"]),
            Route("/emulator/stats", self.admin_stats, methods=["GET"]),
            Route("/emulator/typing-events", self.admin_typing_events, methods=["GET"]),
            Route("/emulator/reset", self.admin_reset, methods=["POST"]),
            Route("/emulator/health", self.health, methods=["GET"]),
        ]


def create_app(config: EmulatorConfig | None = None, clock: Clock | None = None) -> Starlette:
    """A Starlette app emulating Genesys Cloud; its state is `app.state.emulator`."""
    emulator = Emulator(config or EmulatorConfig(), clock)
    app = Starlette(routes=emulator.routes())
    app.state.emulator = emulator
    return app
