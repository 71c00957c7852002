"""Logging set-up: one JSON object per line on stderr, with the current trace when there is one."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import orjson
from opentelemetry import trace

# Last line of defence: credentials never reach a log line, even if a message or an
# exception text quotes a header, a form body or a URL with them.
_SECRET_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(
        r"(?i)\b(client_secret|password|passwd|access_token|refresh_token|sasl_plain_password"
        r"|authorization|api[_-]?key|secret)(\"?\s*[:=]\s*\"?)[^\s\"'&,}]+"
    ),
)


def redact(text: str) -> str:
    """`text` with bearer/basic credentials and `secret=...`-style values masked."""
    if not text:
        return text
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} [REDACTED]", text)
    return _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED]", text)


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


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every group join; keep it to warnings.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # uvicorn (the /metrics and probe endpoint) logs through the root handler, quietly.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_log = logging.getLogger(name)
        uvicorn_log.handlers[:] = []
        uvicorn_log.propagate = True
        uvicorn_log.setLevel(max(logging.WARNING, root.level))
