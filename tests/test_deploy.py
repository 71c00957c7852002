"""The Helm chart and the Dockerfile speak the documented configuration contract."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from processor.settings import GenesysSettings, KafkaSettings, TypingSettings

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "genesys-typing-processor"

KNOWN = {
    prefix + name.upper()
    for prefix, model in (
        ("KAFKA_", KafkaSettings),
        ("GENESYSCLOUD_", GenesysSettings),
        ("TYPING_", TypingSettings),
    )
    for name in model.model_fields
}


def variables(template: str) -> set[str]:
    text = (CHART / "templates" / template).read_text()
    return set(re.findall(r"^\s+([A-Z][A-Z0-9_]+):", text, flags=re.MULTILINE))


def test_every_variable_the_chart_sets_is_a_setting_or_otel() -> None:
    names = variables("configmap.yaml") | variables("secret.yaml")
    assert names, "no variables found"
    unknown = {n for n in names if n not in KNOWN and not n.startswith("OTEL_")}
    assert unknown == set()


def test_secrets_live_in_the_secret_not_the_configmap() -> None:
    secret_names = {"GENESYSCLOUD_OAUTHCLIENT_SECRET", "KAFKA_SASL_PASSWORD"}
    assert secret_names <= variables("secret.yaml")
    assert not secret_names & variables("configmap.yaml")


def test_chart_metadata_and_values_parse() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["name"] == "genesys-typing-processor"
    assert values["typing"]["groupId"] == "genesys-typing-processor"
    assert values["typing"]["inputTopic"] == "genesys.typing.events"
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "/healthz" in deployment
    assert "/readyz" in deployment


def test_dockerfile_runs_the_processor_as_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["typing-processor"]' in dockerfile
    assert 'CMD ["run"]' in dockerfile
    assert re.search(r"^USER \d+", dockerfile, flags=re.MULTILINE)
