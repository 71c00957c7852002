"""Logging set-up: one JSON object per line on stderr, with the current trace when there is one."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from opentelemetry import trace

# Last line of defence: credentials never reach a log line, even if a message or an
# exception text quotes a header, a form body or a URL with them.
_SECRET_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    # `name=value`, `"name": "value"` (JSON) and `'name': 'value'` (a Python repr); a quoted
    # value is masked to its closing quote, spaces and all
    re.compile(
        r"(?i)\b(client_secret|password|passwd|access_token|refresh_token|sasl_plain_password"
        r"|authorization|api[_-]?key|secret)(['\"]?\s*[:=]\s*b?)"
        r"(\"[^\"]*\"|'[^']*'|['\"]?[^\s\"'&,}]+)"
    ),
)
# An unquoted `Authorization` value under any scheme (`Token x`, `SharedKey a:x`): the
# scheme and its credentials.
_AUTHORIZATION_VALUE = re.compile(
    r"(?i)\b((?:proxy-)?authorization['\"]?\s*[:=]\s*)[A-Za-z][\w.-]*\s+[^\s\"'&,}]+"
)
# The userinfo of a URL (`scheme://user:password@host`): greedy up to the authority's last `@`,
# as URL parsers split it, so a password with a raw `@` in it is masked whole.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/?#\"'<>]+)@")
# A query parameter whose name ends like a credential's (`token`, `access_token`, `apiKey`,
# `X-Amz-Signature`, `sig`, OAuth's `code`, ...), in a query or a fragment. Only after `?`, `&`
# or `#`, so prose such as "status code=404" keeps its value.
_SECRET_QUERY = re.compile(
    r"(?i)([?&#][^\s=&#?]*?(?:token|key|secret|password|passwd|pwd|pass|signature|sig|code|auth"
    r"|authorization|credentials?|jwt)=)[^\s&#\"'<>]+"
)

# Loggers whose repeats `RepeatThrottle` holds back, and for how long.
_THROTTLED = ("opentelemetry.",)
# The attribute of a record (set by `throttled`) that names what its repeats share.
_REPEAT_KEY = "repeat_key"
THROTTLE_S = 60.0
# Messages `RepeatThrottle` remembers: templates are few, but one formatted before it is
# logged is a message of its own.
_MAX_THROTTLED = 256

# The HTTP clients' own lines carry what no redaction can mask reliably: httpx logs every
# request's full URL at INFO (a CRM webhook URL may hold a credential), and at DEBUG httpcore,
# h2 and hpack dump HTTP/2 header blocks, Huffman-coded, with the OAuth `Authorization` in them.
_QUIET_HTTP_LOGGERS = ("httpx", "httpcore", "hpack", "h2")


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match.group(2).partition(":")
    # `user:password@`: the user helps to diagnose; a lone `token@` is the credential itself
    return f"{match.group(1)}{user}:[REDACTED]@" if colon else f"{match.group(1)}[REDACTED]@"


def redact(text: str) -> str:
    """`text` with credentials masked: bearer/basic values, `secret=...`-style values, URL
    userinfo and the values of query parameters named like credentials."""
    if not text:
        return text
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}[REDACTED]", text)
    text = _AUTHORIZATION_VALUE.sub(lambda m: f"{m.group(1)}[REDACTED]", text)
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} [REDACTED]", text)
    return _SECRET_PATTERNS[1].sub(_mask_value, text)


def _mask_value(match: re.Match[str]) -> str:
    value = match.group(3)
    quote = value[0] if value[0] in "'\"" else ""
    closing = quote if len(value) > 1 and value.endswith(quote) else ""
    return f"{match.group(1)}{match.group(2)}{quote}[REDACTED]{closing}"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (time, level, logger, message, exception, trace).

    `trace_id`/`span_id` (hex, as OpenTelemetry backends show them) are added when a span is
    current, so a log line can be found from its trace and the other way round.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def throttled(*key: object) -> dict[str, object]:
    """The `extra` of a log call whose repeats (the same logger and `key`) `RepeatThrottle`
    lets through once per interval, as it does the OpenTelemetry SDK's: a line per record
    (a dead letter) is a flood when a producer sends nothing but bad records."""
    return {_REPEAT_KEY: key}


class RepeatThrottle(logging.Filter):
    """Lets each message of the OpenTelemetry SDK and exporters, and each of our own lines
    logged `throttled`, through once per `interval_s`; the next one let through counts
    those held back.

    The SDK logs every failed export (and each retry of it): a collector that is down
    fails one every few seconds for as long as it is down. Its messages are told apart by
    logger and template (not by their arguments, which name each attempt's delay), so few
    are kept; a `throttled` line by logger and its key.
    """

    def __init__(
        self, interval_s: float = THROTTLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`clock`: seconds, monotonic (tests pass their own)."""
        super().__init__()
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()  # the exporters log from threads of their own
        # (logger, template or key) -> when one was last let through, and how many held back since
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a repeat within the interval; a record let through after repeats says
        how many there were."""
        repeat: object = getattr(record, _REPEAT_KEY, None)
        if repeat is None:
            if not record.name.startswith(_THROTTLED):
                return True
            repeat = str(record.msg)
        key = (record.name, repeat)
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self._interval:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            if last is None and len(self._seen) >= _MAX_THROTTLED:
                del self._seen[next(iter(self._seen))]  # a message built with its values
            self._seen[key] = (now, 0)
        held = 0 if last is None else last[1]
        if held:
            # the message is formatted later with its args: nothing of it is changed
            record.msg = f"{record.msg} ({held} more like it in {self._interval:.0f} s not logged)"
        return True


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatThrottle())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every group join; keep it to warnings.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # the HTTP clients' lines leak URLs and headers: warnings only, whatever the level
    for name in _QUIET_HTTP_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # uvicorn (the /metrics and probe endpoint) logs through the root handler, quietly.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_log = logging.getLogger(name)
        uvicorn_log.handlers[:] = []
        uvicorn_log.propagate = True
        uvicorn_log.setLevel(max(logging.WARNING, root.level))
