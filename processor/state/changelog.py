"""Changelog records: key = session id bytes, value = the session's state packed, or None.

The value is binary, little-endian: a fixed 77-byte head (`struct` format `<5B9q`)

    format, status, reason, remote, flags       one byte each
    originated, deadline, timeout, latest, window_at, remote_expires, version, epoch,
    touched                                      signed 64-bit integers

followed, only when `flags` says so, by the variable parts in this order: the target, the
remote target (unless it is the target), the pending cause, the intent (DESIGN I6: a
call's intent is on the changelog before the call goes out). Strings are a 32-bit length
and UTF-8 bytes (lone surrogates kept, so any `str` the models accept round-trips).

`status`/`remote`: 0 none, 1 typing, 2 paused; a cause's status: 0 typing, 1 paused,
2 stopped; `reason`: 0 event, 1 stopped, 2 expired, 3 session_closed; an intent's kind:
0 set, 1 refresh, 2 clear. One record is written per changed session per flush, so size and
encoding cost matter: the common record (no cause, intent or messaging target) is the
head alone, several times cheaper to pack than JSON.
"""

from __future__ import annotations

import struct
from typing import TypeVar

from processor.domain import (
    AgentTypingTarget,
    ChangeReason,
    Indicator,
    MessagingTarget,
    OpenMessagingTarget,
    Status,
)
from processor.state.session import Cause, Session
from processor.state.work import Work, WorkKind

FORMAT = 3
"""Value format version, the first byte; decoders reject formats they do not know."""

_T = TypeVar("_T")
_HEAD = struct.Struct("<5B9q")
_LENGTH = struct.Struct("<I")
_CAUSE = struct.Struct("<qB")
_INTENT = struct.Struct("<BqBqqBqqB")
_BYTE = struct.Struct("<B")

_HAS_TARGET = 1
_HAS_REMOTE_TARGET = 2
_REMOTE_TARGET_IS_TARGET = 4
_HAS_CAUSE = 8
_HAS_INTENT = 16
_KNOWN_FLAGS = 31

_INTENT_HAS_CAUSE = 1
_INTENT_HAS_TARGET = 2
_INTENT_TARGET_IS_TARGET = 4

_AGENT_TYPING = 1
_OPEN_MESSAGING = 2

_STATUSES: tuple[Status | None, ...] = (None, Status.TYPING, Status.PAUSED)
_REASONS = (
    ChangeReason.EVENT,
    ChangeReason.STOPPED,
    ChangeReason.EXPIRED,
    ChangeReason.SESSION_CLOSED,
)
_KINDS = (WorkKind.SET, WorkKind.REFRESH, WorkKind.CLEAR)
_EVENT_STATUSES = (Status.TYPING, Status.PAUSED, Status.STOPPED)
# Codes are explicit, never enum order: the topic outlives any reordering of the enums.
# One table per enum: members of two StrEnums with the same text are equal dict keys.
_STATUS_CODES = {status: code for code, status in enumerate(_STATUSES)}
_REASON_CODES = {reason: code for code, reason in enumerate(_REASONS)}
_KIND_CODES = {kind: code for code, kind in enumerate(_KINDS)}
_EVENT_STATUS_CODES = {status: code for code, status in enumerate(_EVENT_STATUSES)}


class ChangelogError(ValueError):
    """A changelog record that cannot be decoded (corrupt or from an unknown format)."""


def _text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return _LENGTH.pack(len(raw)) + raw


def _target(target: MessagingTarget) -> bytes:
    if isinstance(target, AgentTypingTarget):
        return (
            _BYTE.pack(_AGENT_TYPING)
            + _text(target.conversation_id)
            + _text(target.communication_id)
        )
    nickname = b"\x00" if target.nickname is None else b"\x01" + _text(target.nickname)
    return (
        _BYTE.pack(_OPEN_MESSAGING)
        + _text(target.integration_id)
        + _text(target.from_id)
        + _text(target.from_id_type)
        + nickname
    )


def _cause(cause: Cause) -> bytes:
    return _CAUSE.pack(cause[1], _EVENT_STATUS_CODES[cause[2]]) + _text(cause[0])


def _intent(work: Work, session_target: MessagingTarget | None) -> bytes:
    desired = work.desired
    flags = 0
    tail = b""
    if work.event_id is not None and work.offset is not None and work.cause_status is not None:
        flags |= _INTENT_HAS_CAUSE
        tail += _cause((work.event_id, work.offset, work.cause_status))
    if work.target is not None:
        flags |= _INTENT_HAS_TARGET
        if work.target == session_target:
            flags |= _INTENT_TARGET_IS_TARGET
        else:
            tail += _target(work.target)
    head = _INTENT.pack(
        _KIND_CODES[work.kind],
        work.version,
        _STATUS_CODES[None if desired is None else desired.status],
        0 if desired is None else desired.originated_at,
        0 if desired is None else desired.expires_at,
        _REASON_CODES[work.reason],
        work.duration_ms,
        work.issued_at,
        flags,
    )
    return head + tail


def encode(session: Session) -> tuple[bytes, bytes]:
    """The changelog record of `session`'s current state."""
    s = session
    statuses = _STATUS_CODES
    flags = 0
    target = s.target
    remote_target = s.remote_target
    cause = s.cause
    intent = s.intent
    if target is not None:
        flags |= _HAS_TARGET
    if remote_target is not None:
        flags |= _HAS_REMOTE_TARGET
        if remote_target == target:
            flags |= _REMOTE_TARGET_IS_TARGET
    if cause is not None:
        flags |= _HAS_CAUSE
    if intent is not None:
        flags |= _HAS_INTENT
    value = _HEAD.pack(
        FORMAT,
        statuses[s.status],
        _REASON_CODES[s.reason],
        statuses[s.remote],
        flags,
        s.originated,
        s.deadline,
        s.timeout,
        s.latest,
        s.window_at,
        s.remote_expires,
        s.version,
        s.epoch,
        s.touched,
    )
    if flags:
        parts = [value]
        if target is not None:
            parts.append(_target(target))
        if remote_target is not None and not flags & _REMOTE_TARGET_IS_TARGET:
            parts.append(_target(remote_target))
        if cause is not None:
            parts.append(_cause(cause))
        if intent is not None:
            parts.append(_intent(intent, target))
        value = b"".join(parts)
    return s.sid.encode("utf-8", "surrogatepass"), value


def floor_record(session_id: str, version: int, idle_since: int) -> tuple[bytes, bytes]:
    """The record of a forgotten session's last version: the session idle since
    `idle_since`, with nothing wanted or shown. It needs no format of its own: every
    reader takes it for an idle session, which a store forgets once idle long enough."""
    session = Session(session_id, idle_since)
    session.version = version
    return encode(session)


def tombstone(session_id: str) -> tuple[bytes, None]:
    """The record that makes the changelog forget `session_id`."""
    return session_id.encode("utf-8", "surrogatepass"), None


def _member(table: tuple[_T, ...], code: int, name: str) -> _T:
    if code >= len(table):
        raise ChangelogError(f"unknown {name} code {code}")
    return table[code]


class _Reader:
    """Walks the variable part of a value; any overrun is a `ChangelogError`."""

    def __init__(self, value: bytes, at: int) -> None:
        self._value = value
        self._at = at

    def take(self, layout: struct.Struct) -> tuple[int, ...]:
        try:
            fields = layout.unpack_from(self._value, self._at)
        except struct.error as exc:
            raise ChangelogError(f"truncated changelog value: {exc}") from None
        self._at += layout.size
        return fields

    def text(self) -> str:
        (length,) = self.take(_LENGTH)
        end = self._at + length
        if end > len(self._value):
            raise ChangelogError("truncated changelog value: string runs past the end")
        raw = self._value[self._at : end]
        self._at = end
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise ChangelogError(f"bad string in changelog value: {exc}") from None

    def target(self) -> MessagingTarget:
        (kind,) = self.take(_BYTE)
        if kind == _AGENT_TYPING:
            return AgentTypingTarget(self.text(), self.text())
        if kind == _OPEN_MESSAGING:
            integration, from_id, from_id_type = self.text(), self.text(), self.text()
            (has_nickname,) = self.take(_BYTE)
            nickname = self.text() if has_nickname else None
            return OpenMessagingTarget(integration, from_id, from_id_type, nickname)
        raise ChangelogError(f"unknown target kind {kind}")

    def cause(self) -> Cause:
        offset, status = self.take(_CAUSE)
        return self.text(), offset, _member(_EVENT_STATUSES, status, "cause status")

    def intent(self, sid: str, session_target: MessagingTarget | None) -> Work:
        kind, version, status, originated, expires, reason, duration, issued, flags = self.take(
            _INTENT
        )
        desired_status = _member(_STATUSES, status, "intent status")
        desired = (
            None
            if desired_status is None
            else Indicator(desired_status, originated, expires, version)
        )
        cause = self.cause() if flags & _INTENT_HAS_CAUSE else None
        target: MessagingTarget | None = None
        if flags & _INTENT_HAS_TARGET:
            target = session_target if flags & _INTENT_TARGET_IS_TARGET else self.target()
        return Work(
            sid,
            desired,
            _member(_REASONS, reason, "intent reason"),
            _member(_KINDS, kind, "intent kind"),
            version,
            None if cause is None else cause[0],
            None if cause is None else cause[1],
            None if cause is None else cause[2],
            target,
            duration,
            issued,
        )

    def done(self, key: bytes) -> None:
        if self._at != len(self._value):
            raise ChangelogError(f"changelog record for key {key!r} has trailing bytes")


def decode(key: bytes, value: bytes) -> Session:
    """The session a non-tombstone changelog record describes; raises `ChangelogError`."""
    try:
        sid = key.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ChangelogError(f"bad changelog key {key!r}: {exc}") from exc
    if len(value) < _HEAD.size or value[0] != FORMAT:
        raise ChangelogError(f"changelog record for key {key!r} is not of format {FORMAT}")
    (
        _,
        status,
        reason,
        remote,
        flags,
        originated,
        deadline,
        timeout,
        latest,
        window_at,
        remote_expires,
        version,
        epoch,
        touched,
    ) = _HEAD.unpack_from(value)
    if flags & ~_KNOWN_FLAGS:
        raise ChangelogError(f"changelog record for key {key!r} has unknown flags {flags}")
    session = Session(sid, epoch)
    session.status = _member(_STATUSES, status, "status")
    session.reason = _member(_REASONS, reason, "reason")
    session.remote = _member(_STATUSES, remote, "remote status")
    session.originated = originated
    session.deadline = deadline
    session.timeout = timeout
    session.latest = latest
    session.window_at = window_at
    session.remote_expires = remote_expires
    session.version = version
    session.touched = touched
    reader = _Reader(value, _HEAD.size)
    if flags & _HAS_TARGET:
        session.target = reader.target()
    if flags & _HAS_REMOTE_TARGET:
        if flags & _REMOTE_TARGET_IS_TARGET:
            session.remote_target = session.target
        else:
            session.remote_target = reader.target()
    if flags & _HAS_CAUSE:
        session.cause = reader.cause()
    if flags & _HAS_INTENT:
        session.intent = reader.intent(sid, session.target)
    reader.done(key)
    return session
