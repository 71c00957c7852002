"""Typed exceptions for what `apply` does not expect as an outcome.

Expected results (404, 409, 412, 429, 5xx, ...) are `SinkResult`s, never exceptions.
Messages never carry a token or a client secret.
"""

from __future__ import annotations


class SinkError(Exception):
    """Base of the sink's exceptions."""


class SinkClosedError(SinkError):
    """The sink was used after `aclose()`."""


class AuthConfigError(SinkError):
    """The OAuth client is misconfigured: bad credentials or missing scopes. Retrying won't help."""


class TokenUnavailableError(SinkError):
    """The login service failed transiently (5xx, timeout, network); a later try may work.

    `retry_after_s`: how long the login service asked callers to wait (`Retry-After`), if it
    said."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProtocolError(SinkError):
    """The API answered in a shape the contract does not allow (e.g. no ETag)."""


class AnswerTooLargeError(SinkError):
    """The service answered with a body larger than the sink reads."""
