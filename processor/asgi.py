"""An ASGI app served by uvicorn on the caller's event loop, for the length of a block.

The host program keeps its signal handlers (SIGTERM/SIGINT stop the processor, which then
leaves the block and stops the server). `port=0` picks a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, MutableMapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# How long a stop waits for requests in flight before it cancels their handlers, and how
# much longer for uvicorn to close down after that.
STOP_GRACE_S = 2.0
_CLOSE_MARGIN_S = 1.0


# How long a connection may take to send a request's head, from its opening or from the
# previous response; then it is closed. Probes and scrapers send theirs at once.
HEAD_TIMEOUT_S = 10.0


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head has not come in
    whole within `HEAD_TIMEOUT_S`.

    uvicorn's keep-alive timeout runs only between a response and the next byte: a
    connection that sends nothing, or a head a byte at a time (slowloris), held its socket
    for ever, and enough of them took every file descriptor of the process.
    """

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept the connection; its first head is due within `HEAD_TIMEOUT_S`."""
        super().connection_made(transport)  # type: ignore[arg-type]
        self._await_head()

    def on_headers_complete(self) -> None:
        """A head came in whole: no more deadline until its response is sent."""
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """A response went out: the next head is due, unless one came in already."""
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle: no pipelined request runs
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended: no deadline left."""
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_overdue)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AnswersStop:
    """An ASGI app whose HTTP handlers, cancelled by the server's stop before they answered,
    answer 503 and end.

    uvicorn logs any exception out of a handler, its cancellation included, as an ERROR
    "Exception in ASGI application" with its traceback: a `/readyz` still asking a cluster
    that does not answer when the process stops is expected, not an application error. Any
    other exception, and a cancellation that is not the stop's (one raised from inside the
    handler, or once the answer has started), goes to uvicorn as before.
    """

    def __init__(self, app: Any) -> None:
        """Wrap `app`; set `stopping` once the server is told to stop."""
        self.app = app
        self.stopping = False

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        """Run `app`; a stop's cancellation of an unanswered HTTP request answers 503."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answering = False

        async def tracked(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if answering or not self.stopping or task is None or not task.cancelling():
                raise
            task.uncancel()  # the cancellation is handled here: the handler ends now
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"stopping\n"})


class ServerStartError(Exception):
    """The server did not start listening."""


@dataclass(frozen=True, slots=True)
class Listening:
    """Where an embedded server listens."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        """`http://host:port` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the host program's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The embedding program owns SIGINT/SIGTERM and stops us through `should_exit`.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:
            # uvicorn ends a failed start-up (the app's lifespan start-up failed) with
            # `sys.exit`: raised in a task, that would stop the host's event loop
            raise ServerStartError("start-up failed") from None


def bind(host: str, port: int) -> socket.socket:
    """A bound, inheritable TCP socket (IPv6 when `host` is an IPv6 address; `::` takes
    IPv4 as well)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto`
    # says TCP, and accepted connections inherit it. Without it Nagle holds a response's
    # body until the client's delayed ACK, 40 ms for every request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if host == "::":  # every interface: IPv4 too, whatever the system's default
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def serve_in_background(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    name: str = "http",
    start_timeout_s: float = 10.0,
    stop_grace_s: float = STOP_GRACE_S,
    **config: Any,
) -> AsyncIterator[Listening]:
    """Serve `app` on the running loop; listening when the block starts, stopped after.

    Stopping waits `stop_grace_s` for the requests in flight, then cancels their
    handlers (one that had not answered answers 503, see `AnswersStop`), and ends once
    they have ended (a handler that ignores its cancellation is left after another
    `stop_grace_s`). Raises `OSError` when the address cannot be
    bound. Extra keyword arguments go to `uvicorn.Config` (defaults: no access log, no
    lifespan, uvicorn's loggers left to the host's logging set-up).
    """
    sock = bind(host, port)
    bound_port = int(sock.getsockname()[1])
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "server_header": False,
        "log_config": None,
        "http": HeadTimeoutProtocol,
        # uvicorn cancels the handlers still running this long after the stop
        "timeout_graceful_shutdown": stop_grace_s,
        **config,
    }
    answering = AnswersStop(app)
    server = EmbeddedServer(uvicorn.Config(answering, host=host, port=bound_port, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"{name}:{bound_port}")
    failed_start = False
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout_s
        # uvicorn exposes no start event; watch its flag (and the task, which ends on failure)
        while not server.started:
            if task.done():
                failed_start = True
                try:
                    task.result()
                except ServerStartError:
                    raise ServerStartError(f"{name} server failed during start-up") from None
                raise ServerStartError(f"{name} server stopped during start-up")
            if loop.time() > deadline:
                raise ServerStartError(f"{name} server did not start within {start_timeout_s} s")
            await asyncio.sleep(0.005)
        yield Listening(host, bound_port)
    finally:
        answering.stopping = True
        server.should_exit = True
        try:
            # a failed start's outcome was read and raised above
            if not failed_start:
                await asyncio.wait_for(asyncio.shield(task), timeout=stop_grace_s + _CLOSE_MARGIN_S)
        except TimeoutError:
            server.force_exit = True
            await task
        finally:
            sock.close()
            await _end_handlers(server.server_state.tasks, stop_grace_s)


async def _end_handlers(handlers: set[asyncio.Task[None]], timeout_s: float) -> None:
    """Cancel the request handlers still running and wait, at most `timeout_s`, for them
    to end: uvicorn's shutdown cancels them but returns without waiting, and one it
    forced out (`force_exit`) it leaves running."""
    running = set(handlers)
    for handler in running:
        handler.cancel()
    if running:
        await asyncio.wait(running, timeout=timeout_s)
