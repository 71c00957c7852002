"""Bounded cache of the last ETag seen per session."""

from __future__ import annotations

from collections import OrderedDict


class ETagCache:
    """Least-recently-used map session id → ETag, at most `maxsize` entries.

    A valid cached ETag is what lets the sink PATCH without a GET first (DESIGN I3).
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("ETagCache needs maxsize >= 1")
        self._maxsize = maxsize
        self._etags: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._etags)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._etags

    @property
    def maxsize(self) -> int:
        """Most entries kept."""
        return self._maxsize

    def get(self, session_id: str) -> str | None:
        """The cached ETag, marking it recently used; None when unknown."""
        etag = self._etags.get(session_id)
        if etag is not None:
            self._etags.move_to_end(session_id)
        return etag

    def peek(self, session_id: str) -> str | None:
        """The cached ETag without marking it used (for planning); None when unknown."""
        return self._etags.get(session_id)

    def put(self, session_id: str, etag: str) -> None:
        """Remember `etag`, evicting the least recently used entry when full."""
        self._etags[session_id] = etag
        self._etags.move_to_end(session_id)
        while len(self._etags) > self._maxsize:
            self._etags.popitem(last=False)

    def drop(self, session_id: str) -> None:
        """Forget the session's ETag (stale, session gone, or no longer ours)."""
        self._etags.pop(session_id, None)
