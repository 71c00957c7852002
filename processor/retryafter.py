"""`Retry-After` (RFC 9110 §10.2.3): how long a service asks its caller to wait."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime


def retry_after_s(headers: Mapping[str, str], now_ms: int) -> float | None:
    """Seconds the `Retry-After` header asks for (a delay, or an HTTP date after `now_ms`,
    epoch ms), or None when it is absent or no usable value (`inf`, `nan`, a date that is
    no date). Bounding a long wait is the caller's business."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # (a year or an offset no datetime holds)
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_ms / 1000)
