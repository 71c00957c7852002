"""The HTTP session of the OTLP/HTTP exporters.

The exporters post with `requests`, and two of its ways are changed here:
- it takes `REQUESTS_CA_BUNDLE` (or `CURL_CA_BUNDLE`) from the environment over the CA
  bundle set on its session: in an image that sets one for the system's CAs, the
  collector's own CA (`OTEL_EXPORTER_OTLP_*CERTIFICATE`) was never used, and every export to
  a collector with a private CA failed its TLS handshake. The session's own bundle wins
  here when one is set, the environment's otherwise; proxies and the rest still come from
  the environment.
- it reads an answer's body whole, for as long as it comes: an endpoint whose answer never
  ends held the export for ever and filled memory with it. The exporters never look at
  the body (an OTLP answer's is a few bytes); at most `MAX_ANSWER_BYTES` of it are read,
  within the request's timeout, and the connection is closed on the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import requests

MAX_ANSWER_BYTES = 64 * 1024
_READ_BYTES = 16 * 1024


class _OtlpSession(requests.Session):
    """A session whose CA bundle, when one is set, wins over the environment's, and that
    reads a bounded part of each answer's body."""

    def merge_environment_settings(
        self,
        url: str,
        proxies: dict[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: str | tuple[str, str] | None,
    ) -> dict[str, Any]:
        """As `requests.Session`'s, with a request's unset `verify` taken from the session
        (a CA bundle's path, or True, which lets the environment's apply)."""
        return super().merge_environment_settings(
            url, proxies, stream, self.verify if verify is None else verify, cert
        )

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send `request`; the answer's body read up to `MAX_ANSWER_BYTES`, for no longer
        than the request's timeout (each read waits that long at most, as usual)."""
        timeout = kwargs.get("timeout")
        read_s = timeout[-1] if isinstance(timeout, tuple) else timeout
        deadline = None if read_s is None else time.monotonic() + read_s
        response = super().send(request, **{**kwargs, "stream": True})
        body = bytearray()
        try:
            for chunk in response.iter_content(_READ_BYTES):
                body += chunk
                if len(body) >= MAX_ANSWER_BYTES:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
        except requests.RequestException:
            pass  # the status is what the exporter reads; a body cut short is no failure
        finally:
            # back to the pool when read to its end; else the connection is dropped
            response.close()
        response._content = bytes(body[:MAX_ANSWER_BYTES])
        return response


def otlp_session(signal: str, environ: Mapping[str, str] | None = None) -> requests.Session | None:
    """The session the exporter of `signal` ("TRACES" or "METRICS") posts with, or None
    where a credential provider (`OTEL_PYTHON_EXPORTER_OTLP_HTTP_*CREDENTIAL_PROVIDER`)
    makes it: the exporter then loads that one."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER") or env.get(
        f"OTEL_PYTHON_EXPORTER_OTLP_HTTP_{signal}_CREDENTIAL_PROVIDER"
    ):
        return None
    return _OtlpSession()
