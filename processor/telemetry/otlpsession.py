"""The HTTP session of the OTLP/HTTP exporters: `OTEL_EXPORTER_OTLP_*CERTIFICATE` first.

The exporters post with `requests`, which takes `REQUESTS_CA_BUNDLE` (or `CURL_CA_BUNDLE`)
from the environment over the CA bundle set on its session: in an image that sets one for
the system's CAs, the collector's own CA was never used, and every export to a collector
with a private CA failed its TLS handshake. The session here keeps its own bundle when one
is set, and the environment's otherwise; proxies and the rest still come from the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import requests


class _OwnBundleFirst(requests.Session):
    """A session whose CA bundle, when one is set, wins over the environment's."""

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


def otlp_session(signal: str, environ: Mapping[str, str] | None = None) -> requests.Session | None:
    """The session the exporter of `signal` ("TRACES" or "METRICS") posts with, or None
    where a credential provider (`OTEL_PYTHON_EXPORTER_OTLP_HTTP_*CREDENTIAL_PROVIDER`)
    makes it: the exporter then loads that one."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER") or env.get(
        f"OTEL_PYTHON_EXPORTER_OTLP_HTTP_{signal}_CREDENTIAL_PROVIDER"
    ):
        return None
    return _OwnBundleFirst()
