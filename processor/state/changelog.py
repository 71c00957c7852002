"""Changelog records: key = session id bytes, value = compact JSON of the session, or None.

The value is a small JSON object with one-letter keys: it is written for every change of
every session, so size matters, yet it stays readable with any Kafka tool.
"""

from __future__ import annotations

from typing import Any

import orjson

from processor.domain import ChangeReason, Status
from processor.state.session import Session

FORMAT = 1
"""Value format version, stored as `"f"`; decoders reject formats they do not know."""

_STATUSES = {s.value: s for s in (Status.TYPING, Status.PAUSED)}
_REASONS = {r.value: r for r in ChangeReason}


class ChangelogError(ValueError):
    """A changelog record that cannot be decoded (corrupt or from an unknown format)."""


def encode(session: Session) -> tuple[bytes, bytes]:
    """The changelog record of `session`'s current state."""
    s = session
    value = orjson.dumps(
        {
            "f": FORMAT,
            "s": s.status.value if s.status is not None else None,
            "o": s.originated,
            "d": s.deadline,
            "t": s.timeout,
            "l": s.latest,
            "w": s.window_at,
            "r": s.reason.value,
            "rs": s.remote.value if s.remote is not None else None,
            "re": s.remote_expires,
            "v": s.version,
            "e": s.epoch,
            "a": s.touched,
            "u": s.unsure,
        }
    )
    return s.sid.encode(), value


def tombstone(session_id: str) -> tuple[bytes, None]:
    """The record that makes the changelog forget `session_id`."""
    return session_id.encode(), None


def _status(raw: Any) -> Status | None:
    if raw is None:
        return None
    status = _STATUSES.get(raw)
    if status is None:
        raise ChangelogError(f"unknown status {raw!r}")
    return status


def _int(doc: dict[str, Any], name: str) -> int:
    value = doc[name]
    if type(value) is not int:
        raise ChangelogError(f"field {name!r} is not an integer")
    return value


def decode(key: bytes, value: bytes) -> Session:
    """The session a non-tombstone changelog record describes; raises `ChangelogError`."""
    try:
        sid = key.decode()
        doc = orjson.loads(value)
        if not isinstance(doc, dict) or doc.get("f") != FORMAT:
            raise ChangelogError("not a changelog value of a known format")
        session = Session(sid, _int(doc, "e"))
        session.status = _status(doc["s"])
        session.originated = _int(doc, "o")
        session.deadline = _int(doc, "d")
        session.timeout = _int(doc, "t")
        session.latest = _int(doc, "l")
        session.window_at = _int(doc, "w")
        reason = _REASONS.get(doc["r"])
        if reason is None:
            raise ChangelogError(f"unknown reason {doc['r']!r}")
        session.reason = reason
        session.remote = _status(doc["rs"])
        session.remote_expires = _int(doc, "re")
        session.version = _int(doc, "v")
        session.touched = _int(doc, "a")
        unsure = doc["u"]
        if type(unsure) is not bool:
            raise ChangelogError("field 'u' is not a boolean")
        session.unsure = unsure
    except (UnicodeDecodeError, orjson.JSONDecodeError, KeyError) as exc:
        raise ChangelogError(f"bad changelog record for key {key!r}: {exc}") from exc
    return session
