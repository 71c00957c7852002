"""Answers read whole up to a size: a broken or hostile service (a huge body, a gzip bomb)
must not take the process's memory."""

from __future__ import annotations

import asyncio
import zlib

import httpx

from processor.sink.errors import AnswerTooLargeError

MAX_ANSWER_BYTES = 1 << 20
"""The most of an answer's body read, decoded: a session or a login answer is a few KiB."""

# What `_Decoder` decodes, offered as the request's Accept-Encoding.
_ACCEPTED = "gzip, deflate"
# Headers of the encoded body, which the answer returned no longer carries.
_ENCODED_BODY = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})


class _Decoder:
    """One answer's body decoded as its Content-Encoding says, never more than `limit`
    bytes of it (httpx's own decoders expand a piece whole: a thousandfold for a bomb)."""

    def __init__(self, request: httpx.Request, encoding: str, limit: int) -> None:
        self._request = request
        self._room = limit
        self._limit = limit
        codings = [c for c in (p.strip().lower() for p in encoding.split(",")) if c]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise httpx.DecodingError(f"unsupported Content-Encoding {encoding!r}", request=request)
        coding = codings[0] if codings else ""
        # An unknown coding is read as is, as httpx does.
        self._inflater: zlib._Decompress | None = None
        self._deflate = coding == "deflate"
        if coding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif self._deflate:
            self._inflater = zlib.decompressobj()  # zlib-wrapped; raw if that fails at once

    def decode(self, data: bytes) -> bytes:
        """The next decoded bytes, from the next raw piece of the body."""
        if self._inflater is None:
            return self._take(data)
        try:
            # at most one byte beyond the room: then it is known to be too large, and all
            # the input is consumed whenever less came out
            out = self._inflater.decompress(data, self._room + 1)
        except zlib.error as exc:
            if not self._deflate:
                raise httpx.DecodingError(str(exc), request=self._request) from None
            self._deflate = False
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.decode(data)
        self._deflate = False
        return self._take(out)

    def flush(self) -> bytes:
        """What the decoder still holds at the body's end."""
        if self._inflater is None:
            return b""
        try:
            return self._take(self._inflater.flush())
        except zlib.error as exc:
            raise httpx.DecodingError(str(exc), request=self._request) from None

    def _take(self, out: bytes) -> bytes:
        if len(out) > self._room:
            raise AnswerTooLargeError(f"answer larger than {self._limit} bytes")
        self._room -= len(out)
        return out


async def send_bounded(
    http: httpx.AsyncClient,
    request: httpx.Request,
    deadline_s: float,
    *,
    auth: httpx.Auth | None = None,
    limit: int = MAX_ANSWER_BYTES,
) -> httpx.Response:
    """Send `request` and return its answer read whole and decoded, or raise
    `AnswerTooLargeError` as soon as the decoded body exceeds `limit` bytes (the
    connection is then closed, the rest unread). httpx's errors propagate, a body that
    cannot be decoded as an `httpx.DecodingError`, and an answer not read whole within
    `deadline_s` as an `httpx.ReadTimeout` (httpx's timeouts bound each wait, not their
    sum: an answer that trickles in would hold the caller for as long as it came).
    """
    try:
        async with asyncio.timeout(deadline_s):
            return await _send_bounded(http, request, auth, limit)
    except TimeoutError:
        raise httpx.ReadTimeout(
            f"no whole answer within {deadline_s:.1f} s", request=request
        ) from None


async def _send_bounded(
    http: httpx.AsyncClient, request: httpx.Request, auth: httpx.Auth | None, limit: int
) -> httpx.Response:
    request.headers["Accept-Encoding"] = _ACCEPTED
    response = await http.send(request, auth=auth, stream=True)
    body = bytearray()
    try:
        if response.is_stream_consumed:
            # an answer a transport built in memory (a test's), read and decoded already
            body += _Decoder(request, "", limit).decode(response.content)
        else:
            decoder = _Decoder(request, response.headers.get("Content-Encoding", ""), limit)
            async for piece in response.aiter_raw():
                body += decoder.decode(piece)
            body += decoder.flush()
    finally:
        await response.aclose()
    headers = [
        (name, value) for name, value in response.headers.raw if name.lower() not in _ENCODED_BODY
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=bytes(body),
        request=request,
        extensions=response.extensions,
    )
