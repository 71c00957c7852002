"""Changelog records: key = session id bytes, value = compact JSON of the session, or None.

The value is a flat JSON array, `[format, status, originated, deadline, timeout, latest,
window_at, reason, remote, remote_expires, version, epoch, touched, unsure]` (the order of
`Session.persisted()`): written for every change of every session, so size and speed
matter, yet it stays readable with any Kafka tool.
"""

from __future__ import annotations

from typing import Any

import orjson

from processor.domain import ChangeReason, Status
from processor.state.session import Session

FORMAT = 1
"""Value format version, the array's first element; decoders reject formats they do not know."""
_FIELDS = 14

_STATUSES = {s.value: s for s in (Status.TYPING, Status.PAUSED)}
_REASONS = {r.value: r for r in ChangeReason}


class ChangelogError(ValueError):
    """A changelog record that cannot be decoded (corrupt or from an unknown format)."""


def encode(session: Session) -> tuple[bytes, bytes]:
    """The changelog record of `session`'s current state."""
    s = session
    # enums serialise as their values; a flat array keeps records small and fast to write
    value = orjson.dumps(
        [
            FORMAT,
            s.status,
            s.originated,
            s.deadline,
            s.timeout,
            s.latest,
            s.window_at,
            s.reason,
            s.remote,
            s.remote_expires,
            s.version,
            s.epoch,
            s.touched,
            s.unsure,
        ]
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


def _int(value: Any, name: str) -> int:
    if type(value) is not int:
        raise ChangelogError(f"{name} is not an integer")
    return value


def decode(key: bytes, value: bytes) -> Session:
    """The session a non-tombstone changelog record describes; raises `ChangelogError`."""
    try:
        sid = key.decode()
        doc = orjson.loads(value)
    except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise ChangelogError(f"bad changelog record for key {key!r}: {exc}") from exc
    if not isinstance(doc, list) or len(doc) != _FIELDS or doc[0] != FORMAT:
        raise ChangelogError(f"changelog record for key {key!r} is not of format {FORMAT}")
    _, status, originated, deadline, timeout, latest, window_at, reason, remote = doc[:9]
    remote_expires, version, epoch, touched, unsure = doc[9:]
    session = Session(sid, _int(epoch, "epoch"))
    session.status = _status(status)
    session.originated = _int(originated, "originated")
    session.deadline = _int(deadline, "deadline")
    session.timeout = _int(timeout, "timeout")
    session.latest = _int(latest, "latest")
    session.window_at = _int(window_at, "window_at")
    parsed_reason = _REASONS.get(reason)
    if parsed_reason is None:
        raise ChangelogError(f"unknown reason {reason!r}")
    session.reason = parsed_reason
    session.remote = _status(remote)
    session.remote_expires = _int(remote_expires, "remote_expires")
    session.version = _int(version, "version")
    session.touched = _int(touched, "touched")
    if type(unsure) is not bool:
        raise ChangelogError("unsure is not a boolean")
    session.unsure = unsure
    return session
