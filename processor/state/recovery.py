"""Rebuilding sessions from changelog records (the compacted topic's view of a partition)."""

from __future__ import annotations

from collections.abc import Iterable

from processor.state.changelog import decode
from processor.state.session import Session


def latest_sessions(records: Iterable[tuple[bytes, bytes | None]]) -> dict[str, Session]:
    """Fold records in log order: the last record per key wins, a tombstone forgets.

    Only the surviving value per key is decoded, so a long uncompacted tail costs little.
    Raises `ChangelogError` when a surviving record is corrupt: starting from a store
    that silently lost sessions could leave a phantom indicator (I1).
    """
    latest: dict[bytes, bytes] = {}
    for key, value in records:
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    sessions: dict[str, Session] = {}
    for key, value in latest.items():
        session = decode(key, value)
        sessions[session.sid] = session
    return sessions
