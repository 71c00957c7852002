"""Configuration from the environment (and an optional `.env` file), DESIGN §6.

Three groups keep the documented names: `KAFKA_*`, `GENESYSCLOUD_*` and `TYPING_*`.
`load_settings()` raises `ConfigError` with one line naming the variable at fault.
OpenTelemetry's own `OTEL_*` variables, which the SDK reads for itself, are checked the same
way by `load_otel()`.
"""

from __future__ import annotations

import difflib
import errno
import io
import ipaddress
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from dotenv.parser import Binding, parse_stream
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from processor.domain import Role, Status
from processor.models import MAX_TIMEOUT_MS, MAX_TOPIC_CHARS, MIN_TIMEOUT_MS, TypingEvent

TimeoutMs = Annotated[int, Field(ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS)]

_MASK = "**********"
"""What `config` shows in place of a secret."""

# Region names and bare domains both map to the Genesys Cloud domain of that region.
REGION_DOMAINS: dict[str, str] = {
    "us-east-1": "mypurecloud.com",
    "us-east-2": "use2.us-gov-pure.cloud",
    "us-west-2": "usw2.pure.cloud",
    "ca-central-1": "cac1.pure.cloud",
    "sa-east-1": "sae1.pure.cloud",
    "eu-west-1": "mypurecloud.ie",
    "eu-west-2": "euw2.pure.cloud",
    "eu-central-1": "mypurecloud.de",
    "eu-central-2": "euc2.pure.cloud",
    "me-central-1": "mec1.pure.cloud",
    "ap-south-1": "aps1.pure.cloud",
    "ap-northeast-1": "mypurecloud.jp",
    "ap-northeast-2": "apne2.pure.cloud",
    "ap-northeast-3": "apne3.pure.cloud",
    "ap-southeast-2": "mypurecloud.com.au",
}


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line naming it."""


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class IsolationLevel(StrEnum):
    """Which records a consumer reads of a transactional producer's."""

    READ_COMMITTED = "read_committed"
    READ_UNCOMMITTED = "read_uncommitted"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class RoleTimeouts(BaseModel):
    """Indicator lifetime in ms for one status, by participant role."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    customer: TimeoutMs
    agent: TimeoutMs
    bot: TimeoutMs

    def for_role(self, role: Role) -> int:
        return int(getattr(self, role.value))


class TimeoutMatrix(BaseModel):
    """Default indicator lifetime by status and role, used when an event has no `timeout_ms`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    typing: RoleTimeouts = RoleTimeouts(customer=5000, agent=5000, bot=3000)
    paused: RoleTimeouts = RoleTimeouts(customer=2000, agent=2000, bot=2000)

    def timeout_ms(self, status: Status, role: Role) -> int:
        """Lifetime of an indicator of `status` set by `role` (stopped: 0, clear now)."""
        if status is Status.TYPING:
            return self.typing.for_role(role)
        if status is Status.PAUSED:
            return self.paused.for_role(role)
        return 0

    def event_timeout_ms(self, event: TypingEvent) -> int:
        """Lifetime of the indicator `event` asks for: its own `timeout_ms`, else the matrix's."""
        return event.timeout_ms or self.timeout_ms(event.status, event.role)


_T = TypeVar("_T")


def _plain(value: _T | SecretStr) -> _T | str:
    """`value`, a secret revealed (to check it, never to show it)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _empty_path_is_unset(value: object) -> object:
    """An optional path (or choice) given empty (or blank) is unset: `Path("")` would be
    the working directory."""
    return None if isinstance(value, str) and not value.strip() else value


def audit_log_file_problem(path: Path) -> str | None:
    """Why `run` could not open `path` for appending (creating its folders), as its error
    would say it, or None; nothing is created, opened or modified (`typing-processor
    config`)."""
    if path.exists():
        if not os.access(path, os.W_OK):
            return _cannot_write(path, _denied(path))
        return None
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return _cannot_write(path, errno.ENOTDIR)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return _cannot_write(path, _denied(ancestor))
    return None


def _denied(path: Path) -> int:
    """EROFS when `path` is on a read-only file system, else EACCES."""
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return errno.EROFS if read_only else errno.EACCES


def _cannot_write(path: Path, code: int) -> str:
    # the words of `run`'s error (`processor.runtime.outbound.open_audit_file`)
    return f"cannot write {path} ({os.strerror(code)})"


def _is_url(name: str) -> bool:
    """Whether the setting `name` holds a URL, which may carry a credential."""
    return name.endswith(("_url", "_endpoint"))


# The settings whose URL's path is masked too (`redacted_endpoint`).
_ENDPOINTS = frozenset({"crm_webhook_url"})


def _shown_url(name: str, url: str) -> str:
    """The URL of the setting `name` as `config` and reprs show it."""
    return redacted_endpoint(url) if name in _ENDPOINTS else redacted_url(url)


class _Settings(BaseSettings):
    """A settings group whose repr masks the credentials of its URLs (userinfo, query
    values, the CRM endpoint's path) as `config` shows them: a repr lands in logs and
    tracebacks."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if isinstance(value, str) and name is not None and _is_url(name):
                yield name, _shown_url(name, value)
            else:
                yield name, value


def _settings_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )


class KafkaSettings(_Settings):
    """`KAFKA_*`: how to reach the cluster."""

    model_config = _settings_config("KAFKA_")

    bootstrap_servers: str = Field("localhost:9092", min_length=1)
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    # Tansu and some managed brokers lack idempotent producers; opt in where supported.
    enable_idempotence: bool = False
    # A transactional producer upstream may abort: its records must never show typing.
    isolation_level: IsolationLevel = IsolationLevel.READ_COMMITTED
    client_id: str = "genesys-typing-processor"

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap_servers(cls, value: str) -> str:
        # the client strips each entry too: spaces around the commas are harmless
        for server in value.split(","):
            problem = _bootstrap_server_problem(server.strip())
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("ssl_cafile", "sasl_mechanism", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # as a blank SASL user or password is without SASL (`_check_sasl`)
        return _empty_path_is_unset(value)

    @field_validator("client_id")
    @classmethod
    def _client_id_not_blank(cls, value: str) -> str:
        # the clients would be named `-consumer` and `-producer`: a variable meant to fill
        # it (a pod name) was unset
        if not value.strip():
            raise ValueError("must not be empty or blank")
        return value

    @field_validator("sasl_username", "sasl_password")
    @classmethod
    def _no_line_break_at_the_end(cls, value: str | SecretStr | None) -> str | SecretStr | None:
        # A Kafka password may hold spaces, so nothing is stripped; a line break at the end is
        # a Secret made from a file, and the broker would refuse it at every attempt.
        text = _plain(value)
        if text is not None and text.endswith(("\n", "\r")):
            raise ValueError("ends with a line break (a Secret made from a file?); remove it")
        return value

    @model_validator(mode="after")
    def _check_sasl(self) -> Self:
        protocol = self.security_protocol
        sasl = protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)
        tls = protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)
        # A protocol that uses none of them ignores them: it was probably mistaken (an
        # empty value counts as unset).
        for name, used, wanted in (
            ("sasl_mechanism", sasl, "SASL_SSL or SASL_PLAINTEXT"),
            ("sasl_username", sasl, "SASL_SSL or SASL_PLAINTEXT"),
            ("sasl_password", sasl, "SASL_SSL or SASL_PLAINTEXT"),
            ("ssl_cafile", tls, "SSL or SASL_SSL"),
        ):
            text = _plain(getattr(self, name))
            if not used and text is not None and str(text).strip():
                raise ValueError(
                    f"{name}: set while KAFKA_SECURITY_PROTOCOL is {protocol.value}, which"
                    f" ignores it; set KAFKA_SECURITY_PROTOCOL to {wanted}, or unset"
                    f" KAFKA_{name.upper()}"
                )
        if sasl:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name}: required when KAFKA_SECURITY_PROTOCOL is SASL")
            # a blank credential is refused only by the broker, which `run` retries for ever
            credentials = {"sasl_username": self.sasl_username, "sasl_password": self.sasl_password}
            for name, value in credentials.items():
                if not (_plain(value) or "").strip():
                    raise ValueError(f"{name}: must not be empty or blank with SASL")
        if self.ssl_cafile is not None:
            problem = _file_problem(self.ssl_cafile) or _ca_bundle_problem(self.ssl_cafile)
            if problem is not None:
                raise ValueError(f"ssl_cafile: {problem}")
        return self


def _file_problem(path: Path) -> str | None:
    """Why `path` is no file (missing, a directory), or None."""
    if path.is_file():
        return None
    return f"{'a directory' if path.is_dir() else 'no such file'}: {path}"


def _ca_bundle_problem(path: Path) -> str | None:
    """Why the file `path` is no CA bundle TLS can load, or None."""
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        return f"{path} is no PEM CA bundle"
    except OSError as exc:  # a Secret mounted for another user (mode 0400)
        return f"cannot read {path} ({exc.strerror})"
    return None


def _client_certificate_problem(certificate: Path, key: Path | None) -> str | None:
    """Why TLS cannot present `certificate` (its private key in `key`, else in the same
    file) as a client, or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        # no password: the exporter has none to give, and OpenSSL would prompt for one
        context.load_cert_chain(certificate, key, password=lambda: b"")
    except ssl.SSLError:
        return f"{certificate} is no PEM certificate with its unencrypted private key" + (
            "" if key is None else f" ({key})"
        )
    except OSError as exc:
        return f"cannot read {exc.filename or certificate} ({exc.strerror})"
    return None


def http_url_problem(url: str) -> str | None:
    """Why `url` is no usable http(s) URL (scheme, host, port), or None when it is."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        if any(char.isspace() or not char.isprintable() for char in url):
            # shown masked, such a URL can look sound: the character is what to look for
            return "not a valid URL: it holds a space, a line break or another control character"
        return "not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    host = parsed.host
    if not host or "%" in host:  # empty, or a space or such escaped into it
        return "has no valid host"
    if parsed.port is not None and not 1 <= parsed.port <= 65_535:
        return "port must be in 1..65535"
    return None


def _check_http_url(url: str) -> str:
    problem = http_url_problem(url)
    if problem is not None:
        raise ValueError(problem)  # not the URL itself: it may carry a credential
    return url


HttpUrlText = Annotated[str, AfterValidator(_check_http_url)]
"""A setting that must be a usable http(s) URL (`http_url_problem`); errors never show it."""


def redacted_url(url: str) -> str:
    """`url` with its userinfo, query values and fragment values masked (a webhook URL
    may carry a credential in any: `user:password@`, a token alone before the `@`, a token
    as a query value or as a query item with no `=`, and OAuth's implicit grant puts its
    token in the fragment)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # no URL at all (an unclosed `[`): nothing of it is safe to show
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{_MASK}@{netloc.rpartition('@')[2]}"
    query, fragment = (_masked_items(text) for text in (parts.query, parts.fragment))
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def redacted_endpoint(url: str) -> str:
    """`url`, the CRM endpoint's, as `redacted_url` shows it and its path, unless empty or
    `/`, as `/**********` (`masked_path`): the scheme, host and port name the endpoint."""
    shown = redacted_url(url)
    if shown == _MASK:
        return shown
    parts = urlsplit(shown)
    return urlunsplit(parts._replace(path=masked_path(parts.path)))


def masked_path(path: str, mask: str = _MASK) -> str:
    """`path` of the CRM endpoint's URL as it is shown (`config`, reprs, spans, logs): `/` +
    `mask` unless it is empty or `/`. A webhook URL is often its own credential, the secret
    a segment of its path (Slack's `/services/T0/B0/<secret>`, Microsoft Teams', Zapier's),
    and nothing tells such a segment from a plain one: the whole path is masked."""
    return path if path in ("", "/") else f"/{mask}"


def _masked_items(text: str) -> str:
    """`name=value&...` with each value masked, an item with no `=` masked whole."""
    return "&".join(
        f"{item.partition('=')[0]}={_MASK}" if "=" in item else _MASK
        for item in text.split("&")
        if item
    )


# One `KAFKA_BOOTSTRAP_SERVERS` entry: `host[:port]` or `[ipv6][:port]`.
_BOOTSTRAP_SERVER = re.compile(
    r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[0-9]+))?"
)
# RFC 1123 labels, and `_` too: Docker Compose service names resolve with it.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\.?\Z){_LABEL}(?:\.{_LABEL})*\.?")
_DOTTED_DIGITS = re.compile(r"[0-9.]+")


def _bootstrap_server_problem(server: str) -> str | None:
    """Why `server` is no `host[:port]` entry (a host name, an IPv4 address or a bracketed
    IPv6 address; port 1..65535), or None when it is."""
    match = _BOOTSTRAP_SERVER.fullmatch(server)
    if match is None or not _is_host(match["host"], match["ipv6"]):
        # never a password put before an `@`
        shown = f"{_MASK}@{server.rpartition('@')[2]}" if "@" in server else server
        return (
            f"{shown!r} is not host[:port] (a host name, IPv4 or [IPv6] address;"
            " no scheme, path or spaces)"
        )
    port = match["port"]
    if port is not None and not 1 <= int(port) <= 65_535:
        return f"{server!r}: port must be in 1..65535"
    return None


def _is_host(name: str | None, ipv6: str | None) -> bool:
    """`ipv6` (the text in brackets) is an IPv6 address, or `name` a host name or an IPv4
    address."""
    try:
        if ipv6 is not None:
            ipaddress.IPv6Address(ipv6)
        elif name is not None and _DOTTED_DIGITS.fullmatch(name):
            ipaddress.IPv4Address(name)  # else `999.1.1.1` would pass as a host name
        else:
            return name is not None and _HOST_NAME.fullmatch(name) is not None
    except ValueError:
        return False
    return True


# RFC 6749 section 3.3: scope-tokens of %x21 / %x23-5B / %x5D-7E, joined by single spaces.
_OAUTH_SCOPES = re.compile(r"[!#-\[\]-~]+(?: [!#-\[\]-~]+)*")


class GenesysSettings(_Settings):
    """`GENESYSCLOUD_*`: the OAuth client and where the API lives."""

    model_config = _settings_config("GENESYSCLOUD_")

    oauthclient_id: str
    oauthclient_secret: SecretStr
    region: str = "us-east-1"
    api_url: str | None = None
    login_url: str | None = None
    # Space-separated scopes asked for with each token (least privilege); None = the
    # client's whole grant (no `scope` sent).
    oauth_scopes: str | None = None

    @field_validator("oauthclient_id", "oauthclient_secret")
    @classmethod
    def _not_blank(cls, value: str | SecretStr) -> str | SecretStr:
        # Genesys ids and secrets hold no whitespace: what surrounds them (the newline of a
        # Secret made from a file) would only make every login fail with 401 at run time.
        text = _plain(value).strip()
        if not text:
            raise ValueError("must not be empty or blank")
        return SecretStr(text) if isinstance(value, SecretStr) else text

    @field_validator("oauth_scopes")
    @classmethod
    def _check_scopes(cls, value: str | None) -> str | None:
        # else the login service refuses every token request (HTTP 400, invalid_scope)
        if value is not None and not _OAUTH_SCOPES.fullmatch(value):
            raise ValueError(
                "expected scopes separated by single spaces, each of printable ASCII"
                " characters other than '\"' and '\\' (RFC 6749)"
            )
        return value

    @model_validator(mode="after")
    def _check_urls(self) -> Self:
        for name in ("api_url", "login_url"):
            url = getattr(self, name)
            problem = None if url is None else http_url_problem(url)
            if problem is not None:  # the URL as `config` shows it: it may carry a credential
                raise ValueError(f"{name}: {problem}, got {redacted_url(url)!r}")
            if url is not None and (problem := _base_url_problem(url)) is not None:
                raise ValueError(f"{name}: {problem}")  # never the URL: see above
        # One URL alone takes the other from the region: without a region set on purpose,
        # the client secret would go to the default region's real login while the API is an
        # emulator, a proxy or another region.
        if (self.api_url is None) != (self.login_url is None) and "region" not in (
            self.model_fields_set
        ):
            missing = "login_url" if self.login_url is None else "api_url"
            given = "api_url" if missing == "login_url" else "login_url"
            raise ValueError(
                f"{missing}: not set while GENESYSCLOUD_{given.upper()} is; set it too, or set"
                " GENESYSCLOUD_REGION to take it from that region"
            )
        if self.api_url is None or self.login_url is None:
            region_domain(self.region)
        return self

    @property
    def resolved_api_url(self) -> str:
        """API base URL: the explicit URL, else `https://api.{domain}`."""
        return (self.api_url or f"https://api.{region_domain(self.region)}").rstrip("/")

    @property
    def resolved_login_url(self) -> str:
        """Login base URL: the explicit URL, else `https://login.{domain}`."""
        return (self.login_url or f"https://login.{region_domain(self.region)}").rstrip("/")


def _base_url_problem(url: str) -> str | None:
    """Why `url`, a usable http(s) URL, is no base URL the Genesys paths can be appended
    to, or None."""
    if "?" in url or "#" in url:
        # `/oauth/token` or `/api/v2/...` would land inside the query or fragment
        return "must have no query or fragment: the API paths are appended to it"
    if httpx.URL(url).userinfo:
        # httpx sends it as Basic auth in place of the bearer token (every API call: 401),
        # or drops it for the client's own at the login; and it would show in reprs
        return (
            "must carry no user:password@: the OAuth client (GENESYSCLOUD_OAUTHCLIENT_ID and"
            " _SECRET) is the credential"
        )
    return None


def region_domain(region: str) -> str:
    """Domain for a region name (`eu-west-1`, `eu_west_1`) or a bare domain."""
    name = region.strip().lower().replace("_", "-")
    if name in REGION_DOMAINS:
        return REGION_DOMAINS[name]
    if name in REGION_DOMAINS.values():
        return name
    known = ", ".join(sorted(REGION_DOMAINS))
    raise ValueError(f"region: unknown region {region!r}; use one of {known} or its domain")


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")


def topic_name_problem(name: str) -> str | None:
    """Why a Kafka cluster would refuse to create a topic called `name`, or None."""
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        return f"{name!r} is no Kafka topic name (ASCII letters, digits, '.', '_' and '-')"
    if len(name) > MAX_TOPIC_CHARS:
        return f"a Kafka topic name has at most {MAX_TOPIC_CHARS} characters, got {len(name)}"
    return None


# A header value httpx and HTTP/1.1 carry as they are: printable ASCII, spaces and tabs.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]+")

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class TypingSettings(_Settings):
    """`TYPING_*`: everything about the processor itself."""

    model_config = _settings_config("TYPING_")

    group_id: str = Field("genesys-typing-processor", min_length=1)
    input_topic: str = Field("genesys.typing.events", min_length=1)
    crm_topic: str = Field("genesys.typing.crm-sync", min_length=1)
    audit_topic: str = Field("genesys.typing.audit", min_length=1)
    dlq_topic: str = Field("genesys.typing.dlq", min_length=1)
    changelog_topic: str | None = None
    suppression_window_ms: int = Field(1500, ge=0, le=60_000)
    timeout_matrix: TimeoutMatrix = TimeoutMatrix()
    api_rate_per_minute: int = Field(300, ge=1, le=1_000_000)
    audit_log_file: Path | None = None
    create_topics: bool = True
    topic_partitions: int = Field(6, ge=1, le=10_000)
    topic_replication_factor: int = Field(1, ge=1, le=16)
    max_in_flight: int = Field(32, ge=1, le=10_000)
    fetch_max_wait_ms: int = Field(20, ge=1, le=10_000)
    # Input offsets are committed (and the changelog write cache flushed) this often.
    commit_interval_ms: int = Field(1000, ge=10, le=60_000)
    # Longest `duration` of one messaging typing call (DESIGN §2b): bounds a phantom.
    messaging_max_duration_ms: int = Field(5000, ge=1000, le=60_000)
    http_port: int = Field(8080, ge=0, le=65_535)
    log_level: str = "INFO"
    crm_webhook_url: HttpUrlText | None = None
    # The whole `Authorization` header of every CRM POST (`Bearer <token>`): a credential
    # the URL need not carry (a query token lands in the CRM's access logs).
    crm_webhook_authorization: SecretStr | None = None
    # Longest one CRM POST may take, answer included. A revoked partition's hand-over waits
    # for the POST out (and a second) within the group's 10 s rebalance timeout, hence at
    # most 8 s; a stop gives up on it after 3 s whatever this is (DESIGN §5's 10 s).
    crm_webhook_timeout_ms: int = Field(5000, ge=100, le=8000)
    # TLS with the CRM endpoint: a PEM bundle of the CAs trusted instead of the default
    # store (SSL_CERT_FILE, SSL_CERT_DIR, else certifi's), and a client certificate for
    # mutual TLS, its unencrypted key in its own file or in the certificate's.
    crm_webhook_ca_file: Path | None = None
    crm_webhook_client_cert_file: Path | None = None
    crm_webhook_client_key_file: Path | None = None

    @property
    def resolved_changelog_topic(self) -> str:
        """`<group>-state-changelog` unless set explicitly."""
        return self.changelog_topic or f"{self.group_id}-state-changelog"

    @field_validator(
        "audit_log_file",
        "crm_webhook_ca_file",
        "crm_webhook_client_cert_file",
        "crm_webhook_client_key_file",
        mode="before",
    )
    @classmethod
    def _empty_file_is_unset(cls, value: object) -> object:
        return _empty_path_is_unset(value)

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in _LOG_LEVELS:
            raise ValueError(f"use {', '.join(_LOG_LEVELS[:-1])} or {_LOG_LEVELS[-1]} (any case)")
        return value

    @field_validator("crm_webhook_authorization")
    @classmethod
    def _check_authorization(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # stripped as the OAuth secret is: a Secret made from a file ends in a newline
        text = value.get_secret_value().strip()
        if not text:
            raise ValueError("must not be empty or blank (unset it to send none)")
        # what no header can carry: httpx or the connection would fail every POST, held
        # for ever; never the value itself, which is a credential
        if "\n" in text or "\r" in text:
            raise ValueError("holds a line break, which no HTTP header can carry")
        if not _HEADER_VALUE.fullmatch(text):
            raise ValueError(
                "holds a character no HTTP header can carry (printable ASCII and spaces only)"
            )
        return SecretStr(text)

    @model_validator(mode="after")
    def _one_crm_credential(self) -> Self:
        # httpx sends the URL's userinfo as Basic auth in place of this header: the
        # credential set on purpose would be dropped in silence
        url = self.crm_webhook_url
        if self.crm_webhook_authorization is not None and url and "@" in urlsplit(url).netloc:
            raise ValueError(
                "crm_webhook_authorization: set while TYPING_CRM_WEBHOOK_URL carries a"
                " credential (user:password@): two credentials for one endpoint; keep one"
            )
        return self

    @model_validator(mode="after")
    def _check_crm_tls(self) -> Self:
        # checked here, not at the first POST: a file the worker cannot load would fail every
        # POST, each record held for ever
        files = {
            "crm_webhook_ca_file": self.crm_webhook_ca_file,
            "crm_webhook_client_cert_file": self.crm_webhook_client_cert_file,
            "crm_webhook_client_key_file": self.crm_webhook_client_key_file,
        }
        url = self.crm_webhook_url
        for name, path in files.items():
            if path is None:
                continue
            if url is not None and httpx.URL(url).scheme == "http":
                raise ValueError(
                    f"{name}: set while TYPING_CRM_WEBHOOK_URL is plain http, which uses no"
                    f" TLS; use https, or unset TYPING_{name.upper()}"
                )
            if (problem := _file_problem(path)) is not None:
                raise ValueError(f"{name}: {problem}")
        ca_file = self.crm_webhook_ca_file
        if ca_file is not None and (problem := _ca_bundle_problem(ca_file)) is not None:
            raise ValueError(f"crm_webhook_ca_file: {problem}")
        certificate, key = self.crm_webhook_client_cert_file, self.crm_webhook_client_key_file
        if certificate is None:
            if key is not None:
                raise ValueError(
                    "crm_webhook_client_key_file: a client key serves only with a certificate"
                    " (TYPING_CRM_WEBHOOK_CLIENT_CERT_FILE)"
                )
        elif (problem := _client_certificate_problem(certificate, key)) is not None:
            if key is None:  # the key is not in the certificate's file: where is it?
                problem += "; set TYPING_CRM_WEBHOOK_CLIENT_KEY_FILE to its key's file"
            raise ValueError(f"crm_webhook_client_cert_file: {problem}")
        return self

    @model_validator(mode="after")
    def _check_topics_and_files(self) -> Self:
        # A topic used twice mixes records of two kinds; the DLQ (or any output) on the
        # input feeds every dead letter back in as bad input, without end.
        seen: dict[str, str] = {}
        for name in ("input_topic", "crm_topic", "audit_topic", "dlq_topic", "changelog_topic"):
            topic = (
                self.resolved_changelog_topic if name == "changelog_topic" else getattr(self, name)
            )
            if (problem := topic_name_problem(topic)) is not None:  # a cluster refuses it
                if name == "changelog_topic" and not self.changelog_topic:
                    raise ValueError(
                        f"group_id: names the changelog topic (or set TYPING_CHANGELOG_TOPIC):"
                        f" {problem}"
                    )
                raise ValueError(f"{name}: {problem}")
            if topic in seen:
                raise ValueError(f"{name}: same topic as TYPING_{seen[topic].upper()} ({topic})")
            seen[topic] = name
        if self.audit_log_file is not None and self.audit_log_file.is_dir():
            raise ValueError(f"audit_log_file: {self.audit_log_file} is a directory")
        return self


OtlpProtocol = Literal["http/protobuf"]
OtlpCompression = Literal["gzip", "deflate", "none"]
Sampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
# What each `OTEL_*_EXPORTER` may name: OTLP/HTTP or nothing (`/metrics` is always served,
# so `prometheus` asks for nothing more).
_EXPORTERS = {
    "traces_exporter": ("otlp", "none"),
    "metrics_exporter": ("otlp", "none", "prometheus"),
}
_PROPAGATORS = ("tracecontext", "baggage", "none")
# The SDK's counts and times (ms) are integers of 32 bits in OpenTelemetry's other SDKs:
# beyond that, a queue cannot be allocated or a socket timeout set (every export fails).
_OTEL_INT_MAX = 2**31 - 1
OtelCount = Annotated[int, Field(ge=0, le=_OTEL_INT_MAX)]
OtelPositiveCount = Annotated[int, Field(ge=1, le=_OTEL_INT_MAX)]
# Where the OTLP/HTTP exporter finds `OTEL_PYTHON_EXPORTER_OTLP_HTTP_*CREDENTIAL_PROVIDER`.
_CREDENTIAL_PROVIDERS = "opentelemetry_otlp_credential_provider"
ExemplarFilter = Literal["trace_based", "always_on", "always_off"]


def _folded(value: object) -> object:
    """A choice as the SDK matches it: case and surrounding blanks aside."""
    return value.strip().lower() if isinstance(value, str) else value


# Read by the OTLP metric exporter, case aside; any other value it logs and ignores.
TemporalityPreference = Annotated[
    Literal["cumulative", "delta", "lowmemory"], BeforeValidator(_folded)
]
HistogramAggregation = Annotated[
    Literal["explicit_bucket_histogram", "base2_exponential_bucket_histogram"],
    BeforeValidator(_folded),
]


def _key_value_problem(text: str) -> str | None:
    """Why `text` is no comma-separated `key=value` list (the value never quoted)."""
    for item in text.split(","):
        key, equals, _ = item.partition("=")
        if item.strip() and not (equals and key.strip()):
            return "expected key=value pairs separated by commas"
    return None


# What the SDK takes in `OTEL_EXPORTER_OTLP_*HEADERS` (`opentelemetry.util.re`, liberal): an
# HTTP token as the name, a value of printable ASCII but `"`, `,`, `;` and `\` (URL-encoded).
_OTLP_HEADER = re.compile(r"[!#-'*+.0-9A-Z^-z|~-]+[ \t]*=[ \t]*[ !#-+\--:<-\[\]-~]*")


def _otlp_headers_problem(text: str) -> str | None:
    """Why the SDK would skip an item of `text` (logging it whole, value and all), or
    requests refuse its value at every export (quoting it), or None."""
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not _OTLP_HEADER.fullmatch(item):
            return (
                "expected name=value pairs separated by commas, a name of letters, digits"
                " and !#$%&'*+-.^_`|~, a value URL-encoded"
            )
        value = item.partition("=")[2].strip()
        # as the SDK reads it: URL-decoded, unless a space shows it was never encoded
        sent = value if " " in value or "\t" in value else unquote(value).strip()
        if sent and not _HEADER_VALUE.fullmatch(sent):
            return "a value decodes to what no HTTP header carries (control or non-ASCII)"
    return None


class OtelSettings(_Settings):
    """`OTEL_*`: OpenTelemetry's variables that the processor or its SDK reads (DESIGN §6).

    Checked at start-up, because the SDK itself logs a bad value and carries on with its
    default (a sampler, a batch size, a timeout), or fails at the first export (an endpoint).
    Read from the environment only: the SDK never sees a `.env` file. An empty value is
    unset, as OpenTelemetry's specification says. Only OTLP over HTTP/protobuf is exported,
    and trace context travels as W3C `traceparent`.
    """

    model_config = SettingsConfigDict(
        env_prefix="OTEL_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        env_ignore_empty=True,
    )

    sdk_disabled: bool = False
    service_name: str | None = None
    resource_attributes: str | None = None
    propagators: str | None = None
    traces_exporter: str = "otlp"
    metrics_exporter: str = "otlp"
    traces_sampler: Sampler | None = None
    traces_sampler_arg: str | None = None
    # the SDK refuses a delay of 0 with a traceback as it makes the span processor
    bsp_schedule_delay: OtelPositiveCount | None = None
    bsp_export_timeout: OtelCount | None = None
    bsp_max_queue_size: OtelPositiveCount | None = None
    bsp_max_export_batch_size: OtelPositiveCount | None = None
    metric_export_interval: OtelPositiveCount | None = None
    # the SDK times every collection out at 0: no metric would ever be exported
    metric_export_timeout: OtelPositiveCount | None = None
    metrics_exemplar_filter: ExemplarFilter | None = None
    # span limits: the SDK reads them when the tracer provider is made, and raises
    attribute_count_limit: OtelCount | None = None
    attribute_value_length_limit: OtelCount | None = None
    span_attribute_count_limit: OtelCount | None = None
    span_attribute_value_length_limit: OtelCount | None = None
    span_event_count_limit: OtelCount | None = None
    span_link_count_limit: OtelCount | None = None
    event_attribute_count_limit: OtelCount | None = None
    link_attribute_count_limit: OtelCount | None = None
    exporter_otlp_endpoint: HttpUrlText | None = None
    exporter_otlp_traces_endpoint: HttpUrlText | None = None
    exporter_otlp_metrics_endpoint: HttpUrlText | None = None
    exporter_otlp_protocol: OtlpProtocol | None = None
    exporter_otlp_traces_protocol: OtlpProtocol | None = None
    exporter_otlp_metrics_protocol: OtlpProtocol | None = None
    exporter_otlp_timeout: OtelCount | None = None
    exporter_otlp_traces_timeout: OtelCount | None = None
    exporter_otlp_metrics_timeout: OtelCount | None = None
    exporter_otlp_compression: OtlpCompression | None = None
    exporter_otlp_traces_compression: OtlpCompression | None = None
    exporter_otlp_metrics_compression: OtlpCompression | None = None
    exporter_otlp_metrics_temporality_preference: TemporalityPreference | None = None
    exporter_otlp_metrics_default_histogram_aggregation: HistogramAggregation | None = None
    exporter_otlp_headers: SecretStr | None = None
    exporter_otlp_traces_headers: SecretStr | None = None
    exporter_otlp_metrics_headers: SecretStr | None = None
    exporter_otlp_certificate: FilePath | None = None
    exporter_otlp_traces_certificate: FilePath | None = None
    exporter_otlp_metrics_certificate: FilePath | None = None
    exporter_otlp_client_key: FilePath | None = None
    exporter_otlp_traces_client_key: FilePath | None = None
    exporter_otlp_metrics_client_key: FilePath | None = None
    exporter_otlp_client_certificate: FilePath | None = None
    exporter_otlp_traces_client_certificate: FilePath | None = None
    exporter_otlp_metrics_client_certificate: FilePath | None = None
    # the Python exporter's: an entry point that makes the exporter's HTTP session
    python_exporter_otlp_http_credential_provider: str | None = None
    python_exporter_otlp_http_traces_credential_provider: str | None = None
    python_exporter_otlp_http_metrics_credential_provider: str | None = None

    @field_validator("traces_exporter", "metrics_exporter")
    @classmethod
    def _check_exporters(cls, value: str, info: ValidationInfo) -> str:
        allowed = _EXPORTERS[str(info.field_name)]
        for name in (part.strip() for part in value.split(",")):
            if name not in allowed:
                raise ValueError(f"{name!r} is not available (one of {', '.join(allowed)})")
        return value

    @field_validator("propagators")
    @classmethod
    def _check_propagators(cls, value: str | None) -> str | None:
        for name in (part.strip() for part in (value or "").split(",") if value):
            if name not in _PROPAGATORS:
                raise ValueError(
                    f"{name!r} is not available: trace context travels as W3C tracecontext"
                )
        return value

    @field_validator("resource_attributes")
    @classmethod
    def _check_resource_attributes(cls, value: str | None) -> str | None:
        problem = None if value is None else _key_value_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("resource_attributes", "service_name")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("blank")
        return value

    @field_validator(
        "exporter_otlp_headers", "exporter_otlp_traces_headers", "exporter_otlp_metrics_headers"
    )
    @classmethod
    def _check_headers(cls, value: SecretStr | None) -> SecretStr | None:
        problem = None if value is None else _otlp_headers_problem(value.get_secret_value())
        if problem:
            raise ValueError(problem)  # never the value: headers carry API keys
        return value

    @field_validator(
        "exporter_otlp_certificate",
        "exporter_otlp_traces_certificate",
        "exporter_otlp_metrics_certificate",
    )
    @classmethod
    def _check_ca_bundle(cls, value: Path | None) -> Path | None:
        # requests loads it for every connection, and fails each export (a warning apiece)
        problem = None if value is None else _ca_bundle_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator(
        "python_exporter_otlp_http_credential_provider",
        "python_exporter_otlp_http_traces_credential_provider",
        "python_exporter_otlp_http_metrics_credential_provider",
    )
    @classmethod
    def _check_credential_provider(cls, value: str | None) -> str | None:
        # the exporter looks it up as it is made, and raises when it names none
        if value is not None and not entry_points(group=_CREDENTIAL_PROVIDERS, name=value):
            raise ValueError(f"no {_CREDENTIAL_PROVIDERS} entry point is called {value!r}")
        return value

    @model_validator(mode="after")
    def _check_together(self) -> Self:
        if self.traces_sampler in _RATIO_SAMPLERS and self.traces_sampler_arg is not None:
            try:
                ratio = float(self.traces_sampler_arg)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise ValueError("traces_sampler_arg: a sampling ratio must be a number in 0..1")
        queue = self.bsp_max_queue_size or 2048  # the SDK's defaults
        if (self.bsp_max_export_batch_size or 512) > queue:
            raise ValueError(f"bsp_max_export_batch_size: more than the queue holds ({queue})")
        return self

    @model_validator(mode="after")
    def _check_client_certificates(self) -> Self:
        # each exporter takes its signal's certificate and key, else the general ones; a
        # key without a certificate it drops in silence, and a certificate TLS cannot load
        # (with the key) fails each export's handshake, a warning apiece
        for scope in ("exporter_otlp_traces_", "exporter_otlp_metrics_"):
            certificate = self._first_file(scope, "client_certificate")
            key = self._first_file(scope, "client_key")
            if certificate is None:
                if key is not None:
                    raise ValueError(f"{key[0]}: a client key serves only with a certificate")
                continue
            problem = _client_certificate_problem(certificate[1], None if key is None else key[1])
            if problem:
                raise ValueError(f"{certificate[0]}: {problem}")
        return self

    def _first_file(self, scope: str, kind: str) -> tuple[str, Path] | None:
        """(field, file) of `kind` an exporter of `scope` takes: its own, else the general."""
        for name in (scope + kind, "exporter_otlp_" + kind):
            file: Path | None = getattr(self, name)
            if file is not None:
                return name, file
        return None


_GROUPS: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("KAFKA_", KafkaSettings),
    ("GENESYSCLOUD_", GenesysSettings),
    ("TYPING_", TypingSettings),
)


def _one_line(prefix: str, exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in error["loc"]]
    msg = str(error["msg"]).removeprefix("Value error, ")
    # model validators report "field: message"; lift the field into the variable name
    if not loc and ": " in msg:
        head, _, msg = msg.partition(": ")
        loc = [head]
    variable = prefix + (loc[0].upper() if loc else "?")
    if error["type"] == "missing" and len(loc) == 1:  # a key inside JSON is "invalid"
        return f"{variable} is not set (required)"
    inner = ".".join(loc[1:])
    return f"{variable} is invalid: {inner + ': ' if inner else ''}{msg}"


_FIELD_IN_SETTINGS_ERROR = re.compile(r'field "([^"]+)"')


def _bindings(path: Path) -> list[Binding]:
    """The statements of the `.env` file `path`; `ConfigError` when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is invalid: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path} is invalid: cannot read it ({exc.strerror})") from None
    return list(parse_stream(io.StringIO(text)))


def _check_env_file(path: Path) -> None:
    """Raise `ConfigError` when `path`, a file pydantic-settings would read, cannot be read
    or holds a line python-dotenv cannot parse: it would only log a warning and skip the
    line, and the setting on it would be missing or taken from elsewhere."""
    if not path.is_file():  # pydantic-settings reads no other
        return
    for binding in _bindings(path):
        if binding.error:  # never the line itself: it may hold a secret
            raise ConfigError(
                f"{path} is invalid: line {binding.original.line} is no NAME=value statement"
            )


def _load(prefix: str, model: type[BaseSettings], overrides: dict[str, Any]) -> Any:
    env_file = model.model_config.get("env_file")
    if isinstance(env_file, str):
        _check_env_file(Path(env_file))
    try:
        return model(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(prefix, exc)) from None
    except SettingsError as exc:
        match = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
        variable = prefix + (match.group(1).upper() if match else "?")
        raise ConfigError(f"{variable} is invalid: not valid JSON") from None


def load_kafka(**overrides: Any) -> KafkaSettings:
    """Kafka settings from the environment; raises `ConfigError`."""
    result: KafkaSettings = _load("KAFKA_", KafkaSettings, overrides)
    return result


def load_genesys(**overrides: Any) -> GenesysSettings:
    """Genesys settings from the environment; raises `ConfigError`."""
    result: GenesysSettings = _load("GENESYSCLOUD_", GenesysSettings, overrides)
    return result


def load_typing(**overrides: Any) -> TypingSettings:
    """Processor settings from the environment; raises `ConfigError`."""
    result: TypingSettings = _load("TYPING_", TypingSettings, overrides)
    return result


def load_otel() -> OtelSettings:
    """OpenTelemetry's variables from the environment, checked; raises `ConfigError`."""
    result: OtelSettings = _load("OTEL_", OtelSettings, {})
    return result


class Settings(BaseModel):
    """All settings of `typing-processor run`."""

    model_config = ConfigDict(frozen=True)

    kafka: KafkaSettings
    genesys: GenesysSettings
    typing: TypingSettings


def load_settings() -> Settings:
    """Every group from the environment; raises `ConfigError` at the first bad setting."""
    return Settings(kafka=load_kafka(), genesys=load_genesys(), typing=load_typing())


def misspelt_settings(
    environ: Mapping[str, str] | None = None, env_file: Path = Path(".env")
) -> list[str]:
    """A warning for each variable (environment or `env_file`) named like a setting but
    none, close to one that is: `TYPING_SUPRESSION_WINDOW_MS` is ignored as any unknown
    name is, and the default applies in silence. Names close to none (another tool's, a
    Kubernetes service link's) are not ours to judge."""
    names = {name.upper() for name in (os.environ if environ is None else environ)}
    if env_file.is_file():
        names |= {binding.key.upper() for binding in _bindings(env_file) if binding.key}
    warnings: list[str] = []
    known = setting_names()
    for prefix, _ in _GROUPS:
        group = sorted(name for name in known if name.startswith(prefix))
        for name in sorted(n for n in names if n.startswith(prefix) and n not in known):
            close = difflib.get_close_matches(name, group, n=1, cutoff=0.85)
            if close:
                warnings.append(f"{name} is no setting and is ignored; did you mean {close[0]}?")
    return warnings


def cleartext_credentials(
    genesys: GenesysSettings | None = None, typing: TypingSettings | None = None
) -> list[str]:
    """A warning for each credential that a setting sends over plain `http://` to a host
    other than this one (loopback): the Genesys OAuth secret (`GENESYSCLOUD_LOGIN_URL`) and
    bearer token (`GENESYSCLOUD_API_URL`), and the CRM webhook's credential (its
    `Authorization`, or a `user:password@` or query the URL carries). Warned of, not
    refused: plain HTTP to a sidecar or within a cluster's network is legitimate."""
    warnings: list[str] = []
    if genesys is not None:
        for name, what in (
            ("login_url", "the OAuth client secret, at every login"),
            ("api_url", "the bearer token, with every API call"),
        ):
            url = getattr(genesys, name)
            if url is not None and (host := _cleartext_host(url)) is not None:
                warnings.append(
                    f"GENESYSCLOUD_{name.upper()} is plain http to {host}: {what}, goes out"
                    " unencrypted; use https unless that network is trusted"
                )
    url = None if typing is None else typing.crm_webhook_url
    if typing is not None and url is not None and (host := _cleartext_host(url)) is not None:
        parsed = httpx.URL(url)
        credential = (
            "TYPING_CRM_WEBHOOK_AUTHORIZATION"
            if typing.crm_webhook_authorization is not None
            else "its user:password@"
            if parsed.userinfo
            # any query item may be a token, as `redacted_url` takes it
            else "its query, which may hold a token,"
            if parsed.query
            else None
        )
        if credential is not None:
            warnings.append(
                f"TYPING_CRM_WEBHOOK_URL is plain http to {host}: {credential} goes out"
                " unencrypted with every POST; use https unless that network is trusted"
            )
    return warnings


def _cleartext_host(url: str) -> str | None:
    """The host of `url`, a usable http(s) URL, when it is plain http to a host other than
    this one (not `localhost` nor a loopback address); else None."""
    parsed = httpx.URL(url)
    host = parsed.host
    if parsed.scheme != "http" or host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name
        pass
    return host


def setting_names() -> frozenset[str]:
    """The variable of every setting (`KAFKA_*`, `GENESYSCLOUD_*`, `TYPING_*`)."""
    return frozenset(
        prefix + field.upper() for prefix, model in _GROUPS for field in model.model_fields
    )


def describe_settings(settings: Settings) -> list[tuple[str, str]]:
    """(variable, value) for every setting, secrets masked, for `typing-processor config`."""
    rows: list[tuple[str, str]] = []
    for prefix, group in (
        ("KAFKA_", settings.kafka),
        ("GENESYSCLOUD_", settings.genesys),
        ("TYPING_", settings.typing),
    ):
        for name in type(group).model_fields:
            value = getattr(group, name)
            if isinstance(value, SecretStr):
                shown = _MASK
            elif _is_url(name) and value is not None:
                shown = _shown_url(name, value)
            elif isinstance(value, BaseModel):
                shown = value.model_dump_json()
            else:
                shown = "" if value is None else str(value)
            rows.append((prefix + name.upper(), shown))
    return rows
