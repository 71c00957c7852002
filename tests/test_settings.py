"""Settings come from the environment; a bad one stops start-up with one line naming it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import certifi
import pytest
import trustme

from processor.domain import Role, Status
from processor.settings import (
    ConfigError,
    GenesysSettings,
    KafkaSettings,
    TimeoutMatrix,
    TypingSettings,
    cleartext_credentials,
    describe_settings,
    load_genesys,
    load_kafka,
    load_otel,
    load_settings,
    load_typing,
    misspelt_settings,
)
from processor.webhook import WebhookConfig

SECRET = "s3cr3t-value-never-shown"
# A real CA bundle (PEM), as `KAFKA_SSL_CAFILE` takes it.
CA_FILE = certifi.where()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "GENESYSCLOUD_", "TYPING_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "client")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", SECRET)


@pytest.fixture
def unreadable(tmp_path: Path) -> Path:
    """A file that exists but that this process cannot read, root or not (a Secret
    mounted for another user)."""
    if os.geteuid() != 0:
        path = tmp_path / "unreadable"
        path.write_bytes(b"")
        path.chmod(0)
        return path
    path = Path("/proc/sys/vm/drop_caches")  # write-only, for root too
    try:
        path.open("rb").close()
    except PermissionError:
        return path
    except OSError:
        pass
    pytest.skip("no file that root cannot read here")


def refusal(load: Callable[[], object], name: str) -> str:
    """The one line `load` stops with: it names `name` first."""
    with pytest.raises(ConfigError) as caught:
        load()
    message = str(caught.value)
    assert message.startswith(f"{name} is invalid: "), message
    assert "\n" not in message
    return message


def test_defaults_match_the_design() -> None:
    typing = load_typing()
    assert typing.group_id == "genesys-typing-processor"
    assert typing.input_topic == "genesys.typing.events"
    assert typing.crm_topic == "genesys.typing.crm-sync"
    assert typing.audit_topic == "genesys.typing.audit"
    assert typing.dlq_topic == "genesys.typing.dlq"
    assert typing.resolved_changelog_topic == "genesys-typing-processor-state-changelog"
    assert typing.suppression_window_ms == 1500
    assert typing.api_rate_per_minute == 300
    matrix = typing.timeout_matrix
    assert matrix.timeout_ms(Status.TYPING, Role.CUSTOMER) == 5000
    assert matrix.timeout_ms(Status.TYPING, Role.AGENT) == 5000
    assert matrix.timeout_ms(Status.TYPING, Role.BOT) == 3000
    assert {matrix.timeout_ms(Status.PAUSED, r) for r in Role} == {2000}
    assert load_kafka().enable_idempotence is False
    assert typing.crm_webhook_timeout_ms == 5000


@pytest.mark.parametrize(
    ("region", "api", "login"),
    [
        ("us-east-1", "https://api.mypurecloud.com", "https://login.mypurecloud.com"),
        ("eu_west_1", "https://api.mypurecloud.ie", "https://login.mypurecloud.ie"),
        ("mypurecloud.de", "https://api.mypurecloud.de", "https://login.mypurecloud.de"),
        ("aps1.pure.cloud", "https://api.aps1.pure.cloud", "https://login.aps1.pure.cloud"),
    ],
)
def test_region_gives_urls(
    monkeypatch: pytest.MonkeyPatch, region: str, api: str, login: str
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_REGION", region)
    genesys = load_genesys()
    assert (genesys.resolved_api_url, genesys.resolved_login_url) == (api, login)


def test_explicit_urls_win_over_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENESYSCLOUD_REGION", "nowhere")
    monkeypatch.setenv("GENESYSCLOUD_API_URL", "http://127.0.0.1:8787/")
    monkeypatch.setenv("GENESYSCLOUD_LOGIN_URL", "http://127.0.0.1:8787")
    genesys = load_genesys()
    assert genesys.resolved_api_url == "http://127.0.0.1:8787"
    assert genesys.resolved_login_url == "http://127.0.0.1:8787"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("GENESYSCLOUD_API_URL", "GENESYSCLOUD_LOGIN_URL"),
        ("GENESYSCLOUD_LOGIN_URL", "GENESYSCLOUD_API_URL"),
    ],
)
def test_one_explicit_url_without_a_region_is_refused_naming_the_other(
    monkeypatch: pytest.MonkeyPatch, given: str, missing: str
) -> None:
    """The other URL would come from the default region: the client secret would go to the
    real us-east-1 login while the API is an emulator, a proxy or another region."""
    monkeypatch.setenv(given, "http://127.0.0.1:8787")
    message = refusal(load_genesys, missing)
    assert given in message, message
    assert "GENESYSCLOUD_REGION" in message, message


def test_one_explicit_url_with_an_explicit_region_is_deliberate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_REGION", "eu-west-1")
    monkeypatch.setenv("GENESYSCLOUD_API_URL", "https://proxy.example.com/genesys")
    genesys = load_genesys()
    assert genesys.resolved_api_url == "https://proxy.example.com/genesys"
    assert genesys.resolved_login_url == "https://login.mypurecloud.ie"


def test_timeout_matrix_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TYPING_TIMEOUT_MATRIX",
        '{"typing": {"customer": 7000, "agent": 6000, "bot": 1000},'
        ' "paused": {"customer": 900, "agent": 900, "bot": 900}}',
    )
    assert load_typing().timeout_matrix.timeout_ms(Status.TYPING, Role.CUSTOMER) == 7000


@pytest.mark.parametrize(
    ("name", "value", "loader"),
    [
        ("GENESYSCLOUD_REGION", "nowhere", load_genesys),
        ("GENESYSCLOUD_API_URL", "ftp://x", load_genesys),
        ("TYPING_SUPPRESSION_WINDOW_MS", "-1", load_typing),
        ("TYPING_SUPPRESSION_WINDOW_MS", "soon", load_typing),
        ("TYPING_TIMEOUT_MATRIX", "{oops", load_typing),
        ("TYPING_TIMEOUT_MATRIX", '{"typing": {"customer": 1, "agent": 1, "bot": 1}}', load_typing),
        ("TYPING_API_RATE_PER_MINUTE", "0", load_typing),
        ("KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON", load_kafka),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL", load_kafka),
        ("KAFKA_ISOLATION_LEVEL", "read_some", load_kafka),
        ("KAFKA_SSL_CAFILE", "/definitely/missing.pem", load_kafka),
        ("KAFKA_SSL_CAFILE", __file__, load_kafka),  # a file, but no CA bundle
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost:abc", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost:99999", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,,b:9092", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "http://kafka:9092", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka 1:9092", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092/path", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "::1", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "[::g]:9092", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "999.1.1.1:9092", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "-kafka:9092", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:", load_kafka),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:0", load_kafka),
        ("KAFKA_CLIENT_ID", "", load_kafka),
        ("KAFKA_CLIENT_ID", " \t", load_kafka),
        ("TYPING_DLQ_TOPIC", "genesys.typing.events", load_typing),
        ("TYPING_CHANGELOG_TOPIC", "genesys.typing.audit", load_typing),
        ("TYPING_AUDIT_LOG_FILE", "/", load_typing),
        ("GENESYSCLOUD_OAUTHCLIENT_SECRET", "   ", load_genesys),
        ("GENESYSCLOUD_OAUTHCLIENT_ID", "", load_genesys),
        ("GENESYSCLOUD_API_URL", "https://", load_genesys),
        ("GENESYSCLOUD_API_URL", "http://exa mple.com", load_genesys),
        ("GENESYSCLOUD_LOGIN_URL", "http://127.0.0.1:99999", load_genesys),
        ("GENESYSCLOUD_LOGIN_URL", "http://[::1", load_genesys),
        ("TYPING_CRM_WEBHOOK_URL", "ftp://crm.example.com/hook", load_typing),
        ("TYPING_CRM_WEBHOOK_URL", "https://", load_typing),
        ("TYPING_CRM_WEBHOOK_TIMEOUT_MS", "8001", load_typing),
        ("TYPING_CRM_WEBHOOK_TIMEOUT_MS", "99", load_typing),
        ("TYPING_CRM_WEBHOOK_TIMEOUT_MS", "5s", load_typing),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, loader: object
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        loader()  # type: ignore[operator]
    message = str(caught.value)
    assert "\n" not in message
    prefix = name.split("_", 1)[0]
    assert message.startswith(prefix), message
    if name != "KAFKA_SECURITY_PROTOCOL" or value != "SASL_SSL":
        assert message.startswith(name), message


def test_missing_required_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_SECRET")
    with pytest.raises(ConfigError, match=r"^GENESYSCLOUD_OAUTHCLIENT_SECRET is not set"):
        load_genesys()


def test_a_key_missing_inside_a_json_setting_is_invalid_not_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TYPING_TIMEOUT_MATRIX", '{"typing": {"customer": 1000}}')
    with pytest.raises(ConfigError) as caught:
        load_typing()
    assert str(caught.value) == "TYPING_TIMEOUT_MATRIX is invalid: typing.agent: Field required"


@pytest.mark.parametrize(
    "servers",
    [
        "broker",
        "a:9092,b:19092",
        "a:9092, b:19092",  # the client strips each entry
        "[::1]:9092",
        "[fe80::1%eth0]",
        "10.0.0.1:9092",
        "kafka-0.kafka.svc.cluster.local.:9093",
        "kafka_broker:9092",  # a Docker Compose service name
    ],
)
def test_bootstrap_servers_take_hosts_with_or_without_ports(
    monkeypatch: pytest.MonkeyPatch, servers: str
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    assert load_kafka().bootstrap_servers == servers


def test_a_bad_bootstrap_server_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9092,http://kafka-1:9092")
    with pytest.raises(ConfigError) as caught:
        load_kafka()
    assert str(caught.value) == (
        "KAFKA_BOOTSTRAP_SERVERS is invalid: 'http://kafka-1:9092' is not host[:port]"
        " (a host name, IPv4 or [IPv6] address; no scheme, path or spaces)"
    )
    # a credential written into an entry is no part of the line
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"user:{SECRET}@kafka:9092")
    with pytest.raises(ConfigError) as caught:
        load_kafka()
    assert SECRET not in str(caught.value)
    assert "@kafka:9092" in str(caught.value)


@pytest.mark.parametrize("name", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_sasl_credential_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, name: str, blank: str
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "typing")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    assert load_kafka().sasl_username == "typing"
    monkeypatch.setenv(name, blank)
    with pytest.raises(ConfigError) as caught:
        load_kafka()
    assert str(caught.value) == f"{name} is invalid: must not be empty or blank with SASL"


@pytest.mark.parametrize("padded", ["{}\n", "{}\r\n", "  {}  ", "\t{}\n"])
def test_oauth_credentials_lose_surrounding_whitespace(
    monkeypatch: pytest.MonkeyPatch, padded: str
) -> None:
    """A Secret made from a file ends in a newline: sent as is, every login fails with 401
    while the processor keeps running. Genesys ids and secrets never hold whitespace."""
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", padded.format("client"))
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", padded.format(SECRET))
    genesys = load_genesys()
    assert genesys.oauthclient_id == "client"
    assert genesys.oauthclient_secret.get_secret_value() == SECRET


@pytest.mark.parametrize("name", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_sasl_credential_ending_in_a_line_break_is_refused_unshown(
    monkeypatch: pytest.MonkeyPatch, name: str, ending: str
) -> None:
    """A Kafka password may hold spaces, so it is never stripped; a line break at its end
    is a Secret made from a file, which the broker would refuse at every attempt."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "typing")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv(name, f"{SECRET} with spaces{ending}")
    with pytest.raises(ConfigError) as caught:
        load_kafka()
    message = str(caught.value)
    assert message.startswith(f"{name} is invalid: ends with a line break"), message
    assert SECRET not in message
    assert "\n" not in message


def test_a_sasl_password_with_spaces_is_kept_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "typing")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", " pass word ")
    password = load_kafka().sasl_password
    assert password is not None
    assert password.get_secret_value() == " pass word "


def test_blank_sasl_credentials_are_ignored_without_sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "")
    assert load_kafka().security_protocol == "PLAINTEXT"


def test_an_empty_sasl_mechanism_with_sasl_is_named_as_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", " ")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "typing")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    message = refusal(load_kafka, "KAFKA_SASL_MECHANISM")
    assert message.endswith("required when KAFKA_SECURITY_PROTOCOL is SASL"), message


_SASL = [
    ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
    ("KAFKA_SASL_USERNAME", "typing"),
    ("KAFKA_SASL_PASSWORD", SECRET),
]
_CA = [("KAFKA_SSL_CAFILE", CA_FILE)]


@pytest.mark.parametrize(
    ("protocol", "name", "value"),
    [
        *((protocol, *setting) for protocol in (None, "PLAINTEXT") for setting in _SASL + _CA),
        *(("SSL", *setting) for setting in _SASL),
        *(("SASL_PLAINTEXT", *setting) for setting in _CA),
    ],
)
def test_sasl_or_a_ca_file_with_a_protocol_that_ignores_it_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, protocol: str | None
) -> None:
    """A protocol that uses neither (PLAINTEXT), no SASL (SSL) or no TLS (SASL_PLAINTEXT)
    would ignore the setting in silence: the protocol was probably mistaken."""
    if protocol is not None:
        monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv(name, value)
    message = refusal(load_kafka, name)
    assert f"KAFKA_SECURITY_PROTOCOL is {protocol or 'PLAINTEXT'}" in message, message
    assert SECRET not in message


def test_a_topic_named_twice_is_refused_with_both_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TYPING_INPUT_TOPIC", "loop")
    monkeypatch.setenv("TYPING_DLQ_TOPIC", "loop")
    with pytest.raises(ConfigError) as caught:
        load_typing()
    assert str(caught.value) == (
        "TYPING_DLQ_TOPIC is invalid: same topic as TYPING_INPUT_TOPIC (loop)"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TYPING_INPUT_TOPIC", "typing events"),
        ("TYPING_CRM_TOPIC", "crm/sync"),
        ("TYPING_AUDIT_TOPIC", ".."),
        ("TYPING_DLQ_TOPIC", "d" * 250),
        ("TYPING_CHANGELOG_TOPIC", "état"),
        # the changelog topic is named after the group: `<group>-state-changelog`
        ("TYPING_GROUP_ID", "payments team"),
        ("TYPING_GROUP_ID", "g" * 240),
    ],
)
def test_a_name_kafka_refuses_for_a_topic_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A cluster refuses to create such a topic, and the processor then stopped on a
    missing topic, naming TYPING_CREATE_TOPICS."""
    monkeypatch.setenv(name, value)
    refusal(load_typing, name)


def test_any_group_id_is_taken_with_a_changelog_topic_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TYPING_GROUP_ID", "payments team")
    monkeypatch.setenv("TYPING_CHANGELOG_TOPIC", "payments-typing-changelog")
    assert load_typing().resolved_changelog_topic == "payments-typing-changelog"
    monkeypatch.setenv("TYPING_GROUP_ID", "Typing_v2.eu-west-1")
    monkeypatch.delenv("TYPING_CHANGELOG_TOPIC")
    assert load_typing().resolved_changelog_topic == "Typing_v2.eu-west-1-state-changelog"


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_ca_file_that_is_no_file_says_which(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "ca.pem"
    if kind == "directory":
        path.mkdir()  # a Secret mounted at the file's path instead of its folder's
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(path))
    message = refusal(load_kafka, "KAFKA_SSL_CAFILE")
    what = "a directory" if kind == "directory" else "no such file"
    assert message == f"KAFKA_SSL_CAFILE is invalid: {what}: {path}"


def test_a_ca_file_that_cannot_be_read_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, unreadable: Path
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(unreadable))
    message = refusal(load_kafka, "KAFKA_SSL_CAFILE")
    assert message.endswith(f"cannot read {unreadable} (Permission denied)"), message


def test_an_empty_audit_log_file_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TYPING_AUDIT_LOG_FILE", "")
    assert load_typing().audit_log_file is None


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_ca_file_is_unset_like_an_empty_audit_log_file(
    monkeypatch: pytest.MonkeyPatch, protocol: str, empty: str
) -> None:
    """It gave "no such file ." (or, with PLAINTEXT, a CA file said to be set)."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv("KAFKA_SSL_CAFILE", empty)
    assert load_kafka().ssl_cafile is None


@pytest.mark.parametrize(
    "scopes",
    [
        "",
        " ",
        " webchat:read",
        "webchat:read  webchat:write",
        "webchat:réad",
        'webchat:"read"',
        "webchat:read\\",
    ],
)
def test_oauth_scopes_the_login_service_would_refuse_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, scopes: str
) -> None:
    """Else every token request fails (HTTP 400) while the processor runs on."""
    monkeypatch.setenv("GENESYSCLOUD_OAUTH_SCOPES", scopes)
    refusal(load_genesys, "GENESYSCLOUD_OAUTH_SCOPES")


def test_oauth_scopes_of_rfc_6749_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    scopes = "webchat:read conversations:typing:write urn:x!#$%&'()*+,-./;<=>?@[]^_`{|}~"
    monkeypatch.setenv("GENESYSCLOUD_OAUTH_SCOPES", scopes)
    assert load_genesys().oauth_scopes == scopes


@pytest.mark.parametrize("level", ["", "verbose", " info", "warn"])
def test_a_log_level_refusal_names_the_levels(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    monkeypatch.setenv("TYPING_LOG_LEVEL", level)
    message = refusal(load_typing, "TYPING_LOG_LEVEL")
    assert message.endswith("use DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)"), message


def test_a_log_level_is_taken_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TYPING_LOG_LEVEL", "wArNiNg")
    assert load_typing().log_level == "wArNiNg"


def test_secret_never_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    genesys = load_genesys()
    assert SECRET not in repr(genesys)
    assert SECRET not in str(genesys)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError) as caught:
        load_kafka()
    assert SECRET not in str(caught.value)


def test_a_credential_in_a_url_is_never_in_a_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A repr lands in logs and tracebacks: a URL in it is masked as `config` shows it."""
    crm_url = f"https://crm:{SECRET}@crm.example.com/hook?sig={SECRET}"
    for name, url in {
        "TYPING_CRM_WEBHOOK_URL": crm_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://otel:{SECRET}@collector:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"https://collector:4318/v1/traces?key={SECRET}",
    }.items():
        monkeypatch.setenv(name, url)
    settings, otel = load_settings(), load_otel()
    for shown in (repr(settings), str(settings), repr(otel), str(otel)):
        assert SECRET not in shown
    masked = "crm_webhook_url='https://**********@crm.example.com/**********?sig=**********'"
    assert masked in repr(settings)
    assert settings.typing.crm_webhook_url == crm_url  # used whole


def test_dotenv_file_supplies_the_same_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with open(".env", "w", encoding="utf-8") as env_file:
        env_file.write("TYPING_GROUP_ID=from-dotenv\n")
    assert load_typing().group_id == "from-dotenv"


def test_a_dotenv_file_that_is_not_utf8_is_one_clear_error() -> None:
    with open(".env", "wb") as env_file:
        env_file.write(b"TYPING_GROUP_ID=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"^\.env is invalid: not UTF-8 text$"):
        load_typing()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # the secret went missing, with a warning that did not say why
        (f'GENESYSCLOUD_OAUTHCLIENT_SECRET="{SECRET}\nTYPING_GROUP_ID=g\n', 1),
        (f"TYPING_GROUP_ID=g\nthis line is no setting\nKAFKA_SASL_PASSWORD={SECRET}\n", 2),
    ],
)
def test_a_dotenv_line_that_cannot_be_parsed_stops_start_up_unshown(text: str, line: int) -> None:
    """python-dotenv alone would log a warning and skip the line, and the setting on it
    would be missing or taken from elsewhere."""
    Path(".env").write_text(text, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "processor", "config"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"configuration error: .env is invalid: line {line} is no NAME=value statement\n"
    )
    assert SECRET not in result.stdout + result.stderr


def test_a_dotenv_file_that_cannot_be_read_is_one_clear_error(unreadable: Path) -> None:
    Path(".env").symlink_to(unreadable)
    with pytest.raises(
        ConfigError, match=r"^\.env is invalid: cannot read it \(Permission denied\)$"
    ):
        load_kafka()


def test_cli_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENESYSCLOUD_REGION", "nowhere")
    result = subprocess.run(
        [sys.executable, "-m", "processor", "config"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "GENESYSCLOUD_REGION" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "env", "exit_code", "named"),
    [
        (["emulator", "--port", "99999"], {}, 2, "--port"),
        (["schemas", "--dir", "/proc/no/such/dir"], {}, 2, "--dir"),
        (
            ["loadgen", "--sessions", "1", "--duration", "1"],
            {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},  # nothing listens there
            2,
            "KAFKA_BOOTSTRAP_SERVERS",
        ),
        # no number of seconds or events per second: a traceback, or a wait without end
        (["loadgen", "--duration", "nan"], {}, 2, "--duration"),
        (["loadgen", "--rate", "nan"], {}, 2, "--rate"),
        (["demo", "--duration", "inf"], {}, 2, "--duration"),
        (
            # the demo's processor takes the settings the demo does not set itself
            ["demo", "--sessions", "1", "--duration", "1"],
            {"TYPING_SUPPRESSION_WINDOW_MS": "soon"},
            2,
            "TYPING_SUPPRESSION_WINDOW_MS",
        ),
    ],
)
def test_cli_commands_end_bad_arguments_with_one_line(
    argv: list[str], env: dict[str, str], exit_code: int, named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", *argv],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert named in last, result.stderr
    assert "Unclosed" not in result.stderr


@pytest.mark.parametrize("command", ["run", "config"])
def test_an_unwritable_audit_file_is_refused_before_kafka_is_touched(
    tmp_path: Path, command: str
) -> None:
    """No broker answers: `run` must not retry Kafka for ever before it opens the file, and
    `config` (which passed where `run` stopped at once) checks the file as `run` does."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens there
        "TYPING_AUDIT_LOG_FILE": str(blocker / "audit.jsonl"),
        "TYPING_HTTP_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "processor", command],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"configuration error: TYPING_AUDIT_LOG_FILE is invalid: cannot write {blocker}/"
    )
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_config_refuses_an_audit_file_in_a_folder_it_cannot_write(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from processor.cli import main

    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    monkeypatch.setenv("TYPING_AUDIT_LOG_FILE", str(folder / "logs" / "audit.jsonl"))
    assert main(["config"]) == 2
    folder.chmod(0o700)
    existing = folder / "audit.jsonl"
    existing.write_bytes(b"")
    existing.chmod(0o400)
    monkeypatch.setenv("TYPING_AUDIT_LOG_FILE", str(existing))
    assert main(["config"]) == 2


def test_config_checks_a_writable_audit_file_without_creating_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from processor.cli import main

    audit = tmp_path / "logs" / "audit.jsonl"
    monkeypatch.setenv("TYPING_AUDIT_LOG_FILE", str(audit))
    assert main(["config"]) == 0, capsys.readouterr().err
    assert not audit.parent.exists()
    audit.parent.mkdir()
    audit.write_bytes(b"kept\n")
    assert main(["config"]) == 0, capsys.readouterr().err
    assert audit.read_bytes() == b"kept\n"


def test_run_with_a_port_it_cannot_listen_on_stops_naming_the_setting() -> None:
    """Without its probes a pod is restarted by its liveness probe for ever, far from the
    cause: a port taken (or not allowed) stops start-up with one line instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 (what the processor binds too)
        taken.listen()
        port = taken.getsockname()[1]
        env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "TYPING_HTTP_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "processor", "run"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **env},
            timeout=30,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"configuration error: TYPING_HTTP_PORT: cannot listen on port {port} (")


def test_cli_config_prints_settings_without_secrets() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "config"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "GENESYSCLOUD_OAUTHCLIENT_SECRET" in result.stdout
    assert "TYPING_GROUP_ID" in result.stdout
    assert SECRET not in result.stdout


def test_config_warns_of_a_credential_sent_over_plain_http_naming_its_setting() -> None:
    """Plain HTTP to a sidecar or within the cluster is legitimate, so it is no error; but a
    credential sent so to another host is worth a warning naming the setting."""
    env = {
        **os.environ,
        "GENESYSCLOUD_API_URL": "http://genesys.internal:8080",
        "GENESYSCLOUD_LOGIN_URL": "http://127.0.0.1:9090",  # this host: never seen
        "TYPING_CRM_WEBHOOK_URL": "http://crm.internal/hook",
        "TYPING_CRM_WEBHOOK_AUTHORIZATION": f"Bearer {SECRET}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "processor", "config"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: GENESYSCLOUD_API_URL is plain http to genesys.internal: the bearer token,"
        " with every API call, goes out unencrypted; use https unless that network is trusted",
        "warning: TYPING_CRM_WEBHOOK_URL is plain http to crm.internal:"
        " TYPING_CRM_WEBHOOK_AUTHORIZATION goes out unencrypted with every POST; use https"
        " unless that network is trusted",
    ]


@pytest.mark.parametrize(
    ("url", "authorization", "warned"),
    [
        ("http://crm.internal/hook", None, None),  # no credential
        ("http://crm:pw@crm.internal/hook", None, "its user:password@"),
        ("http://crm.internal/hook?token=t", None, "its query, which may hold a token,"),
        ("https://crm.internal/hook", "Bearer t", None),
        ("http://localhost:8080/hook", "Bearer t", None),
        ("http://127.0.0.2/hook?token=t", None, None),
        ("http://[::1]:8080/hook", "Bearer t", None),
        ("http://10.0.0.7/hook", "Bearer t", "TYPING_CRM_WEBHOOK_AUTHORIZATION"),
    ],
)
def test_a_webhook_credential_over_plain_http_to_another_host_is_warned_of(
    url: str, authorization: str | None, warned: str | None
) -> None:
    typing = TypingSettings(crm_webhook_url=url, crm_webhook_authorization=authorization)
    warnings = cleartext_credentials(typing=typing)
    if warned is None:
        assert warnings == []
    else:
        [warning] = warnings
        assert warning.startswith("TYPING_CRM_WEBHOOK_URL is plain http to ")
        assert f": {warned} goes out unencrypted" in warning
        assert "crm:pw" not in warning
        assert "token=t" not in warning


def test_the_genesys_urls_over_plain_http_are_warned_of_but_for_this_host() -> None:
    def warned(api_url: str, login_url: str) -> list[str]:
        genesys = load_genesys().model_copy(update={"api_url": api_url, "login_url": login_url})
        return [warning.partition(" ")[0] for warning in cleartext_credentials(genesys)]

    assert warned("http://127.0.0.1:1", "http://localhost:2") == []
    assert warned("https://api.example.com", "https://login.example.com") == []
    assert warned("http://api.example.com", "http://login.example.com") == [
        "GENESYSCLOUD_LOGIN_URL",
        "GENESYSCLOUD_API_URL",
    ]
    assert cleartext_credentials(load_genesys()) == []  # the region's https URLs


def test_a_webhook_url_credential_is_masked_and_never_in_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "TYPING_CRM_WEBHOOK_URL", "https://crm:s3cret@crm.example.com:8443/h?token=t0k"
    )
    shown = dict(describe_settings(load_settings()))["TYPING_CRM_WEBHOOK_URL"]
    assert shown == "https://**********@crm.example.com:8443/**********?token=**********"
    # a token alone before the `@`, or as a query item with no `=`
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "https://t0k3n@crm.example.com/h?k3y&a=1")
    shown = dict(describe_settings(load_settings()))["TYPING_CRM_WEBHOOK_URL"]
    assert shown == "https://**********@crm.example.com/**********?**********&a=**********"
    assert "s3cret" not in repr(WebhookConfig(url=load_typing().crm_webhook_url or ""))
    for shown in (repr(load_typing()), str(load_settings())):  # a traceback's locals, a log
        assert "t0k3n" not in shown
        assert "k3y" not in shown
    # a token in the fragment, as OAuth's implicit grant puts it there
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "https://crm.example.com/h#access_token=t0k")
    shown = dict(describe_settings(load_settings()))["TYPING_CRM_WEBHOOK_URL"]
    assert shown == "https://crm.example.com/**********#access_token=**********"
    # a Slack-style URL, its credential a segment of its path: only the origin is shown
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "https://hooks.example.com/services/T0/p4th")
    shown = dict(describe_settings(load_settings()))["TYPING_CRM_WEBHOOK_URL"]
    assert shown == "https://hooks.example.com/**********"
    assert "p4th" not in repr(load_typing())
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "https://crm.example.com/")
    assert dict(describe_settings(load_settings()))["TYPING_CRM_WEBHOOK_URL"] == (
        "https://crm.example.com/"
    )
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "ftp://crm:s3cret@crm.example.com/h")
    with pytest.raises(ConfigError) as caught:
        load_typing()
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("name", ["GENESYSCLOUD_API_URL", "GENESYSCLOUD_LOGIN_URL"])
@pytest.mark.parametrize(
    "url",
    [
        f"htps://proxy:{SECRET}@api.example.com",  # the scheme is wrong
        f"https://proxy:{SECRET}@/api",  # no host
        f"ftp://api.example.com/?token={SECRET}",
        f"https://api.example.com:99999/#{SECRET}",
        f"https://proxy:{SECRET}@[::1/api",  # no URL at all
    ],
)
def test_a_credential_in_a_bad_genesys_url_is_never_in_the_error(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str
) -> None:
    monkeypatch.setenv(name, url)
    message = refusal(load_genesys, name)
    assert SECRET not in message


@pytest.mark.parametrize("name", ["GENESYSCLOUD_API_URL", "GENESYSCLOUD_LOGIN_URL"])
@pytest.mark.parametrize(
    "url",
    [
        f"https://proxy:{SECRET}@api.example.com",  # sent as Basic auth, not the bearer
        f"https://{SECRET}@api.example.com/",
        f"https://api.example.com/?token={SECRET}",  # the paths would land in the query
        "https://api.example.com?",
        f"https://api.example.com/#{SECRET}",
    ],
)
def test_a_genesys_url_no_path_can_be_appended_to_is_refused_unshown(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str
) -> None:
    """`/oauth/token` and `/api/v2/...` are appended to these: with a query or a fragment
    every call would miss, and httpx would send a userinfo as Basic auth in place of the
    bearer token (or drop it at the login), so each stops start-up."""
    monkeypatch.setenv("GENESYSCLOUD_REGION", "eu-west-1")  # the other URL from there
    monkeypatch.setenv(name, url)
    message = refusal(load_genesys, name)
    assert SECRET not in message


def test_a_genesys_url_with_a_path_is_a_base_the_api_paths_go_under(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_API_URL", "https://proxy.example.com/genesys/")
    monkeypatch.setenv("GENESYSCLOUD_LOGIN_URL", "https://proxy.example.com/login")
    genesys = load_genesys()
    assert genesys.resolved_api_url == "https://proxy.example.com/genesys"
    assert genesys.resolved_login_url == "https://proxy.example.com/login"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_SDK_DISABLED", "perhaps"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_METRICS_EXPORTER", "otlp,console"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:99999/v1/traces"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten seconds"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/definitely/missing.pem"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", __file__),  # a file, but no CA bundle
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", __file__),
        ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", __file__),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0"),  # the SDK's traceback at start-up
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096"),  # more than the default queue
        ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "0"),  # every collection times out: none exported
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment"),
        ("OTEL_SERVICE_NAME", "   "),
        ("OTEL_PROPAGATORS", "b3"),
        # read by the SDK when the providers are made: a traceback at start-up
        ("OTEL_ATTRIBUTE_COUNT_LIMIT", "many"),
        ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-3"),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "-1"),
        ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "1.5"),
        ("OTEL_SPAN_EVENT_COUNT_LIMIT", "x"),
        ("OTEL_SPAN_LINK_COUNT_LIMIT", "-2"),
        ("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "x"),
        ("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "-1"),
        ("OTEL_METRICS_EXEMPLAR_FILTER", "sometimes"),
        # the OTLP metric exporter would log it and export cumulative, explicit buckets
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "deltas"),
        ("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "exponential"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "99999999999999999999"),
        # the exporter looks it up as it is made: a RuntimeError traceback at start-up
        ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "no-such-provider"),
        ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "no-such-provider"),
        ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER", "no-such-provider"),
        # past what a socket timeout holds: every export would fail
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "99999999999999999999"),
    ],
)
def test_a_bad_opentelemetry_variable_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """The SDK would log it and carry on with a default (or fail at the first export)."""
    monkeypatch.setenv(name, value)
    refusal(load_otel, name)


def test_an_otlp_certificate_that_cannot_be_read_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, unreadable: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(unreadable))
    message = refusal(load_otel, "OTEL_EXPORTER_OTLP_CERTIFICATE")
    assert message.endswith(f"cannot read {unreadable} (Permission denied)"), message


def test_an_otlp_certificate_that_is_a_ca_bundle_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", CA_FILE)
    assert load_otel().exporter_otlp_certificate == Path(CA_FILE)


@pytest.fixture
def client_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A client certificate, its key, and both in one file (as a CA would issue them)."""
    issued = trustme.CA().issue_cert("typing-processor")
    certificate, key, both = tmp_path / "client.crt", tmp_path / "client.key", tmp_path / "both"
    issued.cert_chain_pems[0].write_to_path(str(certificate))
    issued.private_key_pem.write_to_path(str(key))
    issued.private_key_and_cert_chain_pem.write_to_path(str(both))
    return certificate, key, both


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # a key alone: the exporter would drop it in silence, and send no certificate
        ({"OTEL_EXPORTER_OTLP_CLIENT_KEY": "{key}"}, "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": "{key}"},
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        ),
        # what TLS cannot load: every export's handshake would fail, a warning apiece
        (
            {"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": __file__},
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ),
        (  # its key elsewhere, not named
            {"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "{certificate}"},
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ),
        (  # the general key does not match the traces' certificate
            {
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": "{certificate}",
                "OTEL_EXPORTER_OTLP_CLIENT_KEY": "{certificate}",
            },
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        ),
    ],
)
def test_an_otlp_client_certificate_tls_cannot_present_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    client_pair: tuple[Path, Path, Path],
    env: dict[str, str],
    named: str,
) -> None:
    certificate, key, _ = client_pair
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(certificate=certificate, key=key))
    refusal(load_otel, named)


@pytest.mark.parametrize(
    "env",
    [
        {
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "{certificate}",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": "{key}",
        },
        {"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "{both}"},
        {  # each signal's certificate with the general key
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": "{certificate}",
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE": "{certificate}",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": "{key}",
        },
    ],
)
def test_an_otlp_client_certificate_with_its_key_passes(
    monkeypatch: pytest.MonkeyPatch, client_pair: tuple[Path, Path, Path], env: dict[str, str]
) -> None:
    certificate, key, both = client_pair
    given = {
        name: value.format(certificate=certificate, key=key, both=both)
        for name, value in env.items()
    }
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    loaded = load_otel()
    assert {
        name: str(getattr(loaded, name.removeprefix("OTEL_").lower())) for name in given
    } == given


def test_an_otlp_credential_provider_installed_passes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A provider is an entry point of an installed distribution, as the exporter finds it."""
    dist = tmp_path / "otlp_auth-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: otlp-auth\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[opentelemetry_otlp_credential_provider]\nvault = requests:Session\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "vault")
    assert load_otel().python_exporter_otlp_http_traces_credential_provider == "vault"


def test_a_sampling_ratio_outside_0_to_1_is_refused_only_for_a_ratio_sampler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.5")
    load_otel()  # the default sampler takes no argument
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_SAMPLER_ARG is invalid: "):
        load_otel()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert load_otel().traces_sampler_arg == "0.25"


def test_usual_opentelemetry_settings_pass_and_empty_ones_are_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_SERVICE_NAME": "typing",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,k8s.pod.name=p-1,",
        "OTEL_PROPAGATORS": "tracecontext,baggage",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.observability:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "10000",
        "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1024",
        "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_LOGS_EXPORTER": "anything: not read",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "LowMemory",  # case aside
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "Base2_Exponential_Bucket_"
        "Histogram",
    }.items():
        monkeypatch.setenv(name, value)
    otel = load_otel()
    assert otel.exporter_otlp_traces_endpoint is None
    assert otel.metrics_exporter == "prometheus"


def test_otlp_headers_are_checked_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"api-key {SECRET}")
    with pytest.raises(ConfigError) as caught:
        load_otel()
    assert str(caught.value).startswith("OTEL_EXPORTER_OTLP_HEADERS is invalid")
    assert SECRET not in str(caught.value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"api-key={SECRET},x-team=typing")
    assert SECRET not in repr(load_otel())


@pytest.mark.parametrize(
    "name", ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]
)
@pytest.mark.parametrize(
    "value",
    [
        f"x-team=a;{SECRET}",  # what the SDK skips, logging the header whole
        f'x-team="{SECRET}"',
        f"x-team={SECRET}\\",
        f"x-team={SECRET}é",
        f"x-team={SECRET}%0Ax",  # a line break once decoded: each export fails, showing it
        f"x-team={SECRET}%0Dx",
        f"x-team={SECRET}%E2%82%AC",  # no header carries it (latin-1 at most)
        f"x team={SECRET}",
        f"x-team=a\n{SECRET}",
    ],
)
def test_otlp_headers_the_exporter_would_log_are_refused_unshown(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    message = refusal(load_otel, name)
    assert SECRET not in message


def test_otlp_headers_url_encoded_or_with_spaces_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = f" api-key = {SECRET} , authorization=Basic%20{SECRET}%3D%3D,x-team=a b, "
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", headers)
    assert load_otel().exporter_otlp_headers is not None


@pytest.mark.parametrize("command", ["run", "crm-webhook", "config"])
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "-1"),
        ("OTEL_METRICS_EXEMPLAR_FILTER", "sometimes"),
    ],
)
def test_cli_refuses_a_bad_opentelemetry_variable_with_one_line(
    command: str, name: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", command],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TYPING_CRM_WEBHOOK_URL": "http://127.0.0.1:9/crm", name: value},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"{name} is invalid" in result.stderr, result.stderr


README = Path(__file__).resolve().parents[1] / "README.md"
# defaults the table gives in words, where the field's own default is None or derived
_WORDED_DEFAULTS = {
    "GENESYSCLOUD_API_URL": "from region",
    "GENESYSCLOUD_LOGIN_URL": "from region",
    "TYPING_CHANGELOG_TOPIC": "`<group>-state-changelog`",
    "TYPING_TIMEOUT_MATRIX": "see below",
}


def readme_rows() -> dict[str, list[str]]:
    """Variable -> cells (variable, default, meaning) of the README's configuration table."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, list[str]] = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if not row.startswith("| `") or len(cells) < 3:
            continue
        for name in re.findall(r"`([A-Z][A-Z0-9_]*\*?)`", cells[0]):
            table[name] = cells
    return table


def readme_configuration() -> dict[str, str]:
    """Variable -> default column of the README's configuration table."""
    return {name: cells[1] for name, cells in readme_rows().items()}


def test_readme_gives_every_bounded_number_its_range() -> None:
    rows = readme_rows()
    missing = {}
    for name, field in TypingSettings.model_fields.items():
        ge = [m.ge for m in field.metadata if hasattr(m, "ge")]
        le = [m.le for m in field.metadata if hasattr(m, "le")]
        if field.annotation is not int or not (ge and le):
            continue
        variable, shown = f"TYPING_{name.upper()}", f"{ge[0]}..{le[0]}"
        if shown not in rows[variable][2]:
            missing[variable] = shown
    assert missing == {}, "the README's table does not give these ranges"


def test_readme_lists_every_setting_with_its_default() -> None:
    table = readme_configuration()
    expected: dict[str, str] = {}
    for prefix, model in (
        ("KAFKA_", KafkaSettings),
        ("GENESYSCLOUD_", GenesysSettings),
        ("TYPING_", TypingSettings),
    ):
        for name, field in model.model_fields.items():
            variable = prefix + name.upper()
            default = field.default
            if variable in _WORDED_DEFAULTS:
                shown = _WORDED_DEFAULTS[variable]
            elif field.is_required():
                shown = "required"
            elif default is None:
                shown = "\N{EN DASH}"
            elif isinstance(default, bool):
                shown = f"`{str(default).lower()}`"
            elif isinstance(default, Enum):
                shown = f"`{default.value}`"
            else:
                shown = f"`{default}`"
            expected[variable] = shown
    assert {name: table.get(name) for name in expected} == expected
    undocumented = set(table) - set(expected) - {"OTEL_*"}
    assert undocumented == set(), "the README lists variables no setting reads"


def test_readme_shows_the_default_timeout_matrix() -> None:
    section = README.read_text().split("\n## Configuration\n", 1)[1]
    block = section.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == TimeoutMatrix().model_dump()


AUTHORIZATION = f"Bearer {SECRET}"


@pytest.mark.parametrize("padded", ["{}\n", "{}\r\n", "  {}  "])
def test_the_crm_authorization_is_stripped_and_masked(
    monkeypatch: pytest.MonkeyPatch, padded: str
) -> None:
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "https://crm.example.com/h")
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_AUTHORIZATION", padded.format(AUTHORIZATION))
    typing = load_typing()
    assert typing.crm_webhook_authorization is not None
    assert typing.crm_webhook_authorization.get_secret_value() == AUTHORIZATION
    shown = dict(describe_settings(load_settings()))["TYPING_CRM_WEBHOOK_AUTHORIZATION"]
    assert shown == "**********"
    for text in (repr(typing), str(load_settings())):
        assert SECRET not in text


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"Bearer {SECRET}\nX-Other: 1", "holds a line break"),
        (f"Bearer {SECRET}\r\nX-Other: 1", "holds a line break"),
        (f"Bearer {SECRET}\x7f", "holds a character no HTTP header can carry"),
        (f"Bearer {SECRET}\N{EM DASH}", "holds a character no HTTP header can carry"),
        (" \n ", "must not be empty or blank"),
    ],
)
def test_a_crm_authorization_no_header_can_carry_is_refused_unshown(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    """Sent as is, httpx or the connection would fail every POST, and the worker would
    hold its partitions for ever: refused at start-up instead, without the value."""
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_AUTHORIZATION", value)
    message = refusal(load_typing, "TYPING_CRM_WEBHOOK_AUTHORIZATION")
    assert problem in message, message
    assert SECRET not in message


def test_a_crm_authorization_with_a_credential_in_the_url_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx would send the URL's userinfo as Basic auth in place of the header."""
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", f"https://crm:{SECRET}@crm.example.com/h")
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_AUTHORIZATION", AUTHORIZATION)
    message = refusal(load_typing, "TYPING_CRM_WEBHOOK_AUTHORIZATION")
    assert "TYPING_CRM_WEBHOOK_URL carries a credential" in message, message
    assert SECRET not in message
    # a query (a signature, a tenant) takes nothing from the header: both are sent
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "https://crm.example.com/h?sig=1")
    assert load_typing().crm_webhook_authorization is not None


def test_a_misspelt_setting_is_warned_of_with_the_name_it_is_close_to(tmp_path: Path) -> None:
    """An unknown name is ignored and the default applies in silence: one close to a
    setting's name is a typo to point out; names close to none are another tool's (a
    Kubernetes service link, KAFKA_PORT) and pass unremarked."""
    env_file = tmp_path / "settings.env"
    env_file.write_text("GENESYSCLOUD_OAUTHCLIENT_SECERT=x\n")
    environ = {
        "TYPING_SUPRESSION_WINDOW_MS": "100",
        "kafka_bootstrap_server": "kafka:9092",
        "TYPING_SUPPRESSION_WINDOW_MS": "100",
        "KAFKA_PORT": "tcp://10.0.0.1:9092",
        "TYPING_SERVICE_HOST": "10.0.0.2",
        "PATH": "/usr/bin",
    }
    assert misspelt_settings(environ, env_file) == [
        "KAFKA_BOOTSTRAP_SERVER is no setting and is ignored; did you mean"
        " KAFKA_BOOTSTRAP_SERVERS?",
        "GENESYSCLOUD_OAUTHCLIENT_SECERT is no setting and is ignored; did you mean"
        " GENESYSCLOUD_OAUTHCLIENT_SECRET?",
        "TYPING_SUPRESSION_WINDOW_MS is no setting and is ignored; did you mean"
        " TYPING_SUPPRESSION_WINDOW_MS?",
    ]
    assert misspelt_settings({"TYPING_SUPPRESSION_WINDOW_MS": "100"}, tmp_path / "none") == []


def test_config_warns_of_a_misspelt_setting_on_stderr() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "config"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TYPING_COMMIT_INTERVALL_MS": "100"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "TYPING_COMMIT_INTERVAL_MS=1000" in result.stdout  # the default applies
    assert result.stderr.strip() == (
        "warning: TYPING_COMMIT_INTERVALL_MS is no setting and is ignored; did you mean"
        " TYPING_COMMIT_INTERVAL_MS?"
    )


@pytest.mark.parametrize("tail", ["\n", "\t", "\r\n"])
def test_a_url_with_a_line_break_says_so(monkeypatch: pytest.MonkeyPatch, tail: str) -> None:
    """A URL taken from a file keeps its line break; as shown (masked, parsed) it looks
    sound, so the error names the character to look for."""
    monkeypatch.setenv("GENESYSCLOUD_REGION", "eu-west-1")
    monkeypatch.setenv("GENESYSCLOUD_API_URL", f"https://api.example.com{tail}")
    message = refusal(load_genesys, "GENESYSCLOUD_API_URL")
    assert "a space, a line break or another control character" in message


CRM_TLS = {
    "ca": "TYPING_CRM_WEBHOOK_CA_FILE",
    "cert": "TYPING_CRM_WEBHOOK_CLIENT_CERT_FILE",
    "key": "TYPING_CRM_WEBHOOK_CLIENT_KEY_FILE",
}


@pytest.fixture
def crm_tls_files(tmp_path: Path) -> dict[str, Path]:
    """A CA bundle, a client certificate and its key apart, both in one file, and a file
    that is no PEM."""
    authority = trustme.CA()
    issued = authority.issue_cert("typing-processor")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "both", "junk")}
    authority.cert_pem.write_to_path(files["ca"])
    issued.cert_chain_pems[0].write_to_path(files["cert"])
    issued.private_key_pem.write_to_path(files["key"])
    issued.private_key_and_cert_chain_pem.write_to_path(files["both"])
    files["junk"].write_text("no PEM\n")
    return files


@pytest.mark.parametrize(
    ("given", "refused", "says"),
    [
        ({"ca": "missing"}, "ca", "no such file: "),
        ({"ca": "dir"}, "ca", "a directory: "),
        ({"ca": "junk"}, "ca", "is no PEM CA bundle"),
        ({"ca": "cert", "cert": "missing"}, "cert", "no such file: "),
        ({"key": "key"}, "key", "a client key serves only with a certificate"),
        ({"cert": "cert"}, "cert", "set TYPING_CRM_WEBHOOK_CLIENT_KEY_FILE to its key's file"),
        ({"cert": "cert", "key": "junk"}, "cert", "no PEM certificate with its unencrypted"),
        ({"cert": "junk", "key": "key"}, "cert", "no PEM certificate with its unencrypted"),
    ],
)
def test_a_crm_tls_file_that_cannot_serve_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    crm_tls_files: dict[str, Path],
    tmp_path: Path,
    given: dict[str, str],
    refused: str,
    says: str,
) -> None:
    """A file missing, a directory, no PEM, a key without a certificate, a certificate
    whose key is nowhere: one line naming the setting, not a failure of every POST."""
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "https://crm.example.com/hook")
    files = {**crm_tls_files, "missing": tmp_path / "missing.pem", "dir": tmp_path}
    for setting, file in given.items():
        monkeypatch.setenv(CRM_TLS[setting], str(files[file]))
    assert says in refusal(load_typing, CRM_TLS[refused])


def test_crm_tls_files_that_serve_are_taken_and_empty_ones_are_unset(
    monkeypatch: pytest.MonkeyPatch, crm_tls_files: dict[str, Path]
) -> None:
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "https://crm.example.com/hook")
    for setting in ("ca", "cert", "key"):
        monkeypatch.setenv(CRM_TLS[setting], str(crm_tls_files[setting]))
    typing = load_typing()
    assert (
        typing.crm_webhook_ca_file,
        typing.crm_webhook_client_cert_file,
        typing.crm_webhook_client_key_file,
    ) == (crm_tls_files["ca"], crm_tls_files["cert"], crm_tls_files["key"])
    monkeypatch.setenv(CRM_TLS["cert"], str(crm_tls_files["both"]))  # the key in it
    monkeypatch.setenv(CRM_TLS["key"], " ")
    assert load_typing().crm_webhook_client_key_file is None


def test_a_crm_tls_file_with_a_plain_http_endpoint_is_refused(
    monkeypatch: pytest.MonkeyPatch, crm_tls_files: dict[str, Path]
) -> None:
    """Plain http uses no TLS: the file would be ignored, so it was probably mistaken."""
    monkeypatch.setenv("TYPING_CRM_WEBHOOK_URL", "http://crm.internal/hook")
    monkeypatch.setenv(CRM_TLS["ca"], str(crm_tls_files["ca"]))
    assert "set while TYPING_CRM_WEBHOOK_URL is plain http" in refusal(load_typing, CRM_TLS["ca"])


def test_crm_webhook_with_a_crm_tls_file_missing_stops_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = subprocess.run(
        [sys.executable, "-m", "processor", "crm-webhook"],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "TYPING_CRM_WEBHOOK_URL": "https://crm.example.com/hook",
            "TYPING_CRM_WEBHOOK_CA_FILE": str(missing),
        },
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"TYPING_CRM_WEBHOOK_CA_FILE is invalid: no such file: {missing}" in result.stderr
