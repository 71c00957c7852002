"""The Helm chart, rendered by the real Helm engine: strict lint, every object valid for
Kubernetes 1.30 and the newest version `kubernetes-validate` knows (`--strict`: no unknown
fields), the restricted Pod Security Standard, the values schema refusing bad values, and
alerts and dashboard that query metrics the processor really exports."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import helm_python as helm
import kubernetes_validate
import pytest
from helmchart import (
    CHART,
    LONG_RELEASE,
    NAMESPACE,
    REPO,
    Manifest,
    ci_values,
    is_dashboard,
    notes,
    of_kind,
    one,
    pod_specs,
    render,
    render_in_cluster,
    settings,
)
from kubernetes_validate.utils import latest_version

from processor.runtime.partition import Counters
from processor.runtime.service import PartitionStats, RestoreStats
from processor.settings import (
    REGION_DOMAINS,
    ConfigError,
    GenesysSettings,
    TypingSettings,
    load_otel,
    load_settings,
    load_typing,
    setting_names,
)
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.telemetry import Telemetry
from processor.telemetry.webhook import instrument_webhook

KUBE_VERSIONS = ("1.30.0", latest_version())
CI_VALUES = ("default", "chart-secret", "production")
# Kinds of CRDs (Prometheus Operator, KEDA): kubernetes-validate has no schema for them.
CUSTOM_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
}
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, list[Manifest]]:
    """Each ci/ values file rendered, and production again under the longest release name."""
    out = {name: render(chart, ci_values(name)) for name in CI_VALUES}
    out["production-long-name"] = render(chart, ci_values("production"), release=LONG_RELEASE)
    return out


def production(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    return rendered["production"]


# --------------------------------------------------------------------------- lint, schemas


@pytest.mark.parametrize("values", CI_VALUES)
def test_strict_lint_is_clean(values: str) -> None:
    report = helm.lint(CHART, ci_values(values), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    # severity 1 is "info" (an icon is recommended); warnings and errors fail
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_is_valid_kubernetes(
    rendered: dict[str, list[Manifest]], kube_version: str
) -> None:
    validated: Counter[str] = Counter()
    for case, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in CUSTOM_KINDS:
                check_custom_resource(obj)
                continue
            try:
                kubernetes_validate.validate(obj, kube_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{case}: {obj['kind']} {path}: {exc.message}")
            validated[obj["kind"]] += 1
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= set(
        validated
    )
    assert {"NetworkPolicy", "Pod", "Secret"} <= set(validated)


def check_custom_resource(obj: Manifest) -> None:
    """The CRD objects: the API version and the fields their controllers need."""
    kind = obj["kind"]
    assert obj["apiVersion"] == CUSTOM_KINDS[kind]
    spec = obj["spec"]
    if kind == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        assert all(e["port"] == "http" and e["path"] == "/metrics" for e in spec["endpoints"])
    elif kind == "PrometheusRule":
        for group in spec["groups"]:
            assert group["name"]
            for rule in group["rules"]:
                assert rule["alert"]
                assert rule["expr"]
                assert rule["labels"]["severity"] in {"warning", "critical"}
    elif kind == "ScaledObject":
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        for trigger in spec["triggers"]:
            # KEDA's schema: trigger metadata is a map of strings
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
    else:
        refs = spec.get("secretTargetRef", []) + spec.get("env", [])
        assert refs
        assert all({"parameter", "name"} <= set(ref) for ref in refs)


def test_names_and_labels_fit_kubernetes_limits_for_the_longest_release_name(
    rendered: dict[str, list[Manifest]],
) -> None:
    objects = rendered["production-long-name"]
    names = [obj["metadata"]["name"] for obj in objects]
    assert all(DNS_LABEL.match(name) for name in names), names
    assert len(names) == len({(o["kind"], o["metadata"]["name"]) for o in objects})
    for obj in objects:
        for value in obj["metadata"]["labels"].values():
            assert LABEL_VALUE.match(value), value


def test_name_overrides(chart: helm.Chart) -> None:
    objects = render(chart, {"fullnameOverride": "typing-edge", "nameOverride": "edge"})
    deployment = one(objects, "Deployment", "processor")
    assert deployment["metadata"]["name"] == "typing-edge"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "edge"
    named = render(chart, {"nameOverride": "typing"}, release="typing")
    # a release name that already holds the chart name is not repeated
    assert one(named, "Deployment", "processor")["metadata"]["name"] == "typing"


# --------------------------------------------------------------------------- best practice


def test_every_object_carries_the_standard_labels(rendered: dict[str, list[Manifest]]) -> None:
    for objects in rendered.values():
        pods = [d["spec"]["template"] for d in of_kind(objects, "Deployment")]
        for obj in [*objects, *pods]:
            labels = obj["metadata"]["labels"]
            assert labels["helm.sh/chart"] == "genesys-typing-processor-0.2.0"
            for key in ("name", "instance", "version", "managed-by", "part-of"):
                assert labels[f"app.kubernetes.io/{key}"], (obj.get("kind", "pod"), key)


def test_the_version_label_is_the_image_tag_that_runs(chart: helm.Chart) -> None:
    objects = render(chart, {"image": {"tag": "0.1.1-rc.2"}})
    deployment = one(objects, "Deployment", "processor")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.1-rc.2"
    pod = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod["app.kubernetes.io/version"] == "0.1.1-rc.2"


def test_pods_carry_common_labels_and_pod_labels_but_keep_their_selector(
    chart: helm.Chart,
) -> None:
    values = {
        "commonLabels": {"team": "contact-centre"},
        "podLabels": {"cost-centre": "cc-42", "app.kubernetes.io/component": "mine"},
        "crmWebhook": {"enabled": True, "url": "https://crm.example.com/hooks/typing"},
    }
    objects = render(chart, values)
    for component in ("processor", "crm-webhook"):
        deployment = one(objects, "Deployment", component)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert (labels["team"], labels["cost-centre"]) == ("contact-centre", "cc-42")
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == component
        assert selector.items() <= labels.items()  # the Deployment still owns its pods


@pytest.mark.parametrize(
    "label",
    [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
        "helm.sh/chart",
    ],
)
@pytest.mark.parametrize("where", ["commonLabels", "serviceMonitor"])
def test_a_standard_label_in_common_or_additional_labels_is_refused(
    chart: helm.Chart, label: str, where: str
) -> None:
    """Rendered twice, a label is a duplicate key that fails `helm install` with a YAML
    error far from its cause; the chart's own value is what selectors, Helm's ownership
    checks and dashboards rely on, so another value is refused by name."""
    values: dict[str, Any] = {**MONITORING, "commonLabels": {label: "mine"}}
    if where == "serviceMonitor":
        monitor = {"enabled": True, "additionalLabels": {label: "x"}}
        values = {**MONITORING, "serviceMonitor": monitor}
    with pytest.raises(helm.HelmRenderError, match=rf"sets {re.escape(label)}, which the chart"):
        render(chart, values)


def test_common_labels_merge_with_the_standard_and_monitoring_labels(chart: helm.Chart) -> None:
    """commonLabels may name the system the release is part of, and a label that
    additionalLabels (or the dashboard's sidecar label) names too: each is rendered once,
    the more specific value winning."""
    selected = {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}}
    values = {
        **MONITORING,
        "commonLabels": {
            "app.kubernetes.io/part-of": "contact-centre",
            "release": "platform",
            "grafana_dashboard": "0",
            "team": "cx",
        },
        "serviceMonitor": selected,
        "prometheusRule": selected,
    }
    objects = render(chart, values)  # fails on a key rendered twice
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "contact-centre"
        assert labels["app.kubernetes.io/name"] == "genesys-typing-processor"
        assert labels["team"] == "cx"
    assert one(objects, "ServiceMonitor")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )
    assert one(objects, "PrometheusRule")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )
    assert dashboard_configmap(objects)["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert one(objects, "Service")["metadata"]["labels"]["release"] == "platform"


@pytest.mark.parametrize("case", [*CI_VALUES, "production-long-name"])
def test_pods_meet_the_restricted_pod_security_standard(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    pods = list(pod_specs(rendered[case]))
    assert pods
    for name, _, spec in pods:
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"] != "default", name
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["seccompProfile"]["type"] == "RuntimeDefault"
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
        assert all("hostPath" not in volume for volume in spec.get("volumes", []))
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in context["capabilities"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["runAsNonRoot"] is True, name
            assert context["seccompProfile"]["type"] == "RuntimeDefault", name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"]["memory"], name
            assert not container["image"].endswith(":latest")


def test_security_settings_come_from_values(chart: helm.Chart) -> None:
    objects = render(
        chart,
        {
            "podSecurityContext": {
                "runAsNonRoot": True,
                "runAsUser": 20000,
                "seccompProfile": {"type": "Localhost", "localhostProfile": "typing.json"},
            },
            # Helm merges maps: a key is dropped with null, changed with a value
            "containerSecurityContext": {"readOnlyRootFilesystem": False, "seccompProfile": None},
        },
    )
    spec = one(objects, "Deployment", "processor")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 20000
    assert spec["securityContext"]["seccompProfile"]["type"] == "Localhost"
    context = spec["containers"][0]["securityContext"]
    assert context["readOnlyRootFilesystem"] is False
    assert "seccompProfile" not in context
    assert context["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("case", [*CI_VALUES, "production-long-name"])
def test_deployments_follow_platform_practice(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    objects = rendered[case]
    budgets = of_kind(objects, "PodDisruptionBudget")
    for deployment in of_kind(objects, "Deployment"):
        template = deployment["spec"]["template"]
        pod_labels = template["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        annotations = template["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])
        spec = template["spec"]
        spread = spec["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        for constraint in spread:
            assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
        container = spec["containers"][0]
        # /readyz waits up to 5 s for the broker check
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["readinessProbe"]["timeoutSeconds"] >= 6
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        matching = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ]
        assert len(matching) == 1, deployment["metadata"]["name"]
        # a processor restoring after a rebalance is not ready: a drain waits for it; the
        # webhook restores nothing
        stateless = pod_labels["app.kubernetes.io/component"] == "crm-webhook"
        policy = "AlwaysAllow" if stateless else "IfHealthyBudget"
        assert matching[0]["spec"]["unhealthyPodEvictionPolicy"] == policy


def test_each_service_selects_one_component(rendered: dict[str, list[Manifest]]) -> None:
    objects = production(rendered)
    deployments = of_kind(objects, "Deployment")
    for service in of_kind(objects, "Service"):
        selected = [
            d
            for d in deployments
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, service["metadata"]["name"]


def test_settings_the_issue_named_reach_the_processor(rendered: dict[str, list[Manifest]]) -> None:
    config = settings(rendered["chart-secret"])
    assert config["TYPING_TOPIC_REPLICATION_FACTOR"] == "3"
    assert config["TYPING_CHANGELOG_TOPIC"] == "genesys.typing.state-changelog"
    assert config["TYPING_FETCH_MAX_WAIT_MS"] == "50"
    assert config["TYPING_COMMIT_INTERVAL_MS"] == "500"
    assert config["TYPING_MESSAGING_MAX_DURATION_MS"] == "3000"
    assert config["TYPING_AUDIT_LOG_FILE"] == "/var/log/typing/audit.jsonl"
    assert config["KAFKA_CLIENT_ID"] == "typing-eu"
    assert config["GENESYSCLOUD_OAUTH_SCOPES"] == "webchat:read webchat:write webchat:write:session"
    spec = one(rendered["chart-secret"], "Deployment", "processor")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/var/log/typing"] == "audit"
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == "audit")
    secret = one(rendered["chart-secret"], "Secret")["stringData"]
    assert set(secret) == {
        "GENESYSCLOUD_OAUTHCLIENT_ID",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET",
        "KAFKA_SASL_PASSWORD",
    }


# The largest integer each quoted setting may take (the schema's maximum; KEDA's lag has
# none): Helm holds every number of the values as a float, and a float of a million or
# more quoted as it is comes out as `1e+06`.
LARGE_INTEGERS: dict[str, Any] = {
    "typing": {
        "suppressionWindowMs": 60_000,
        "apiRatePerMinute": 1_000_000,
        "topicPartitions": 10_000,
        "topicReplicationFactor": 16,
        "maxInFlight": 10_000,
        "fetchMaxWaitMs": 10_000,
        "commitIntervalMs": 60_000,
        "messagingMaxDurationMs": 60_000,
    },
    "httpPort": 65_535,
    "keda": {"enabled": True, "lagThreshold": 2_500_000},
}


def test_large_integers_render_as_integers(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objects = render(chart, LARGE_INTEGERS)
    config = settings(objects)
    expected = {
        "TYPING_SUPPRESSION_WINDOW_MS": "60000",
        "TYPING_API_RATE_PER_MINUTE": "1000000",
        "TYPING_TOPIC_PARTITIONS": "10000",
        "TYPING_TOPIC_REPLICATION_FACTOR": "16",
        "TYPING_MAX_IN_FLIGHT": "10000",
        "TYPING_FETCH_MAX_WAIT_MS": "10000",
        "TYPING_COMMIT_INTERVAL_MS": "60000",
        "TYPING_MESSAGING_MAX_DURATION_MS": "60000",
        "TYPING_HTTP_PORT": "65535",
    }
    assert {name: config[name] for name in expected} == expected
    (trigger,) = one(objects, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["lagThreshold"] == "2500000"
    assert "typing.apiRatePerMinute (1000000)" in notes(chart, LARGE_INTEGERS)
    # what the pods do with the ConfigMap: the processor takes every value
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    assert load_typing().api_rate_per_minute == 1_000_000


def test_default_release_uses_the_existing_secret(
    chart: helm.Chart, rendered: dict[str, list[Manifest]]
) -> None:
    objects = rendered["default"]
    assert of_kind(objects, "Secret") == []
    container = one(objects, "Deployment", "processor")["spec"]["template"]["spec"]["containers"]
    refs = [
        source["secretRef"]["name"] for source in container[0]["envFrom"] if "secretRef" in source
    ]
    assert refs == ["genesys-typing-processor-credentials"]
    assert "kubectl -n typing create secret generic" in notes(chart)


def pod_checksums(objects: list[Manifest]) -> dict[str, dict[str, str]]:
    """Each Deployment's checksum annotations of its pods, by its component."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: {
            key: value
            for key, value in d["spec"]["template"]["metadata"]["annotations"].items()
            if key.startswith("checksum/")
        }
        for d in of_kind(objects, "Deployment")
    }


def test_pods_roll_when_the_chart_s_secret_or_settings_change(chart: helm.Chart) -> None:
    """A Deployment rolls only when its pod template changes, and pods read the Secret
    and the ConfigMap once, at start: a rotated credential in the chart's Secret, or a
    setting, reaches the pods because their checksums change. Only what changed rolls
    them; a Secret managed outside Helm is known by its name alone."""
    hook = {"enabled": True, "url": "https://crm.example.com/hooks/typing"}
    own = {"secrets": {"oauthClientId": "id", "oauthClientSecret": "s3cr3t"}, "crmWebhook": hook}
    before = pod_checksums(render(chart, own))
    assert set(before) == {"processor", "crm-webhook"}
    assert pod_checksums(render(chart, own)) == before

    rotations: list[dict[str, Any]] = [
        {"oauthClientSecret": "rotated"},
        {"oauthClientId": "another-id"},
        {"crmWebhookAuthorization": "Bearer rotated"},
    ]
    for rotation in rotations:
        after = pod_checksums(render(chart, {**own, "secrets": {**own["secrets"], **rotation}}))
        for component in before:
            assert after[component]["checksum/secret"] != before[component]["checksum/secret"]
            assert after[component]["checksum/config"] == before[component]["checksum/config"]
            # a hash, never the value
            assert "rotated" not in str(after[component])

    setting = pod_checksums(render(chart, {**own, "typing": {"logLevel": "DEBUG"}}))
    for component in before:
        assert setting[component]["checksum/config"] != before[component]["checksum/config"]
        assert setting[component]["checksum/secret"] == before[component]["checksum/secret"]

    existing = {"secrets": {"existingSecret": "typing-credentials"}, "crmWebhook": hook}
    named = pod_checksums(render(chart, existing))
    renamed = {"secrets": {"existingSecret": "typing-credentials-2"}, "crmWebhook": hook}
    for component, checksums in pod_checksums(render(chart, renamed)).items():
        assert checksums["checksum/secret"] != named[component]["checksum/secret"]


# --------------------------------------------------------------------------- production


def test_production_release(rendered: dict[str, list[Manifest]]) -> None:
    objects = production(rendered)
    config = settings(objects)
    processor = one(objects, "Deployment", "processor")
    # KEDA owns the replica count
    assert "replicas" not in processor["spec"]
    assert config["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert of_kind(objects, "Secret") == []
    assert processor["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/platform/genesys-typing-processor:0.1.0@sha256:" + "0" * 64
    )
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = one(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert dashboard_configmap(objects)["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert one(objects, "NetworkPolicy")["spec"]["ingress"][0]["from"][1] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }


def dashboard_configmap(objects: list[Manifest]) -> Manifest:
    (found,) = [o for o in of_kind(objects, "ConfigMap") if is_dashboard(o)]
    return found


def test_webhook_worker_has_its_own_deployment_budget_and_service(
    rendered: dict[str, list[Manifest]],
) -> None:
    objects = production(rendered)
    hook = one(objects, "Deployment", "crm-webhook")
    spec = hook["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["crm-webhook"]
    assert hook["spec"]["replicas"] == 2
    assert container["resources"]["limits"]["memory"] == "256Mi"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e for e in container["env"]}
    assert env["OTEL_SERVICE_NAME"]["value"] == "genesys-typing-processor-crm-webhook"
    # the Kafka password, not the Genesys credentials
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
        "genesys-typing-credentials"
    )
    assert all("secretRef" not in source for source in container["envFrom"])
    assert settings(objects)["TYPING_CRM_WEBHOOK_URL"] == "https://crm.example.com/hooks/typing"
    assert settings(objects)["TYPING_CRM_WEBHOOK_TIMEOUT_MS"] == "5000"
    assert one(objects, "PodDisruptionBudget", "crm-webhook")["spec"]["maxUnavailable"] == 1
    assert one(objects, "Service", "crm-webhook")["spec"]["ports"][0]["targetPort"] == "http"


def test_keda_scales_on_the_consumer_group_without_more_calls(
    rendered: dict[str, list[Manifest]],
) -> None:
    objects = production(rendered)
    config = settings(objects)
    scaled = one(objects, "ScaledObject")
    spec = scaled["spec"]
    assert (
        spec["scaleTargetRef"]["name"]
        == one(objects, "Deployment", "processor")["metadata"]["name"]
    )
    assert spec["minReplicaCount"] == 3
    assert 1 <= spec["maxReplicaCount"] <= int(config["TYPING_TOPIC_PARTITIONS"])
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["consumerGroup"] == config["TYPING_GROUP_ID"]
    assert metadata["topic"] == config["TYPING_INPUT_TOPIC"]
    assert metadata["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    assert metadata["allowIdleConsumers"] == "false"
    assert (metadata["sasl"], metadata["tls"]) == ("scram_sha512", "enable")
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    auth = one(objects, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert refs["password"]["key"] == "KAFKA_SASL_PASSWORD"
    assert refs["ca"] == {"parameter": "ca", "name": "kafka-ca", "key": "ca.crt"}
    # the budget is the OAuth client's, whatever the replica count
    assert config["TYPING_API_RATE_PER_MINUTE"] == "300"


def test_keda_verifies_kafka_tls_against_its_trust_store_without_a_ca(chart: helm.Chart) -> None:
    """KEDA's Kafka scaler with `tls: enable` and no `ca` verifies the brokers against
    its own trust store (the system's and KEDA's custom CAs), as the processor does against
    the image's: no TriggerAuthentication is needed for it, and verification is never
    turned off (`unsafeSsl`). A CA given goes to the scaler too; without TLS none is sent."""

    def scaler(
        kafka: dict[str, str], secrets: dict[str, str] | None = None
    ) -> tuple[Manifest, set[str]]:
        """The Kafka trigger, and the parameters the chart's TriggerAuthentication gives."""
        values: dict[str, Any] = {"keda": {"enabled": True}, "kafka": kafka}
        if secrets:
            values["secrets"] = {"oauthClientId": "id", "oauthClientSecret": "s", **secrets}
        objects = render(chart, values)
        (trigger,) = one(objects, "ScaledObject")["spec"]["triggers"]
        auths = of_kind(objects, "TriggerAuthentication")
        params = {r["parameter"] for a in auths for r in a["spec"].get("secretTargetRef", [])}
        return trigger, params

    tls, params = scaler({"securityProtocol": "SSL"})
    assert tls["metadata"]["tls"] == "enable"
    assert "unsafeSsl" not in tls["metadata"]
    assert "authenticationRef" not in tls
    assert params == set()

    sasl, params = scaler(
        {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN", "saslUsername": "u"},
        {"kafkaSaslPassword": "pw"},
    )
    assert (sasl["metadata"]["tls"], sasl["metadata"]["sasl"]) == ("enable", "plaintext")
    assert "unsafeSsl" not in sasl["metadata"]
    assert params == {"password"}

    ca, params = scaler({"securityProtocol": "SSL", "caSecretName": "kafka-ca"})
    assert ca["metadata"]["tls"] == "enable"
    assert params == {"ca"}

    plain, _ = scaler({"securityProtocol": "PLAINTEXT"})
    assert "tls" not in plain["metadata"]
    assert "authenticationRef" not in plain


def test_keda_never_scales_below_one_replica(chart: helm.Chart) -> None:
    # clears of shown indicators must go out even when no input lags
    objects = render(chart, {"keda": {"enabled": True}, "replicaCount": 0})
    assert one(objects, "ScaledObject")["spec"]["minReplicaCount"] == 1


def live_processor(replicas: int) -> Manifest:
    """The processor's Deployment as a cluster holds it, scaled to `replicas`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "typing-genesys-typing-processor", "namespace": NAMESPACE},
        "spec": {"replicas": replicas},
    }


def rendered_replicas(objects: list[Manifest]) -> int | None:
    replicas: int | None = one(objects, "Deployment", "processor")["spec"].get("replicas")
    return replicas


def test_turning_keda_on_keeps_the_replicas_that_run(chart: helm.Chart) -> None:
    """Without `replicas` in the new manifest, `helm upgrade` removes the field from a
    Deployment that had it, which drops it to one replica (a rebalance for every replica
    stopped, and again for each KEDA brings back). The chart keeps the count that runs,
    never below KEDA's minimum; with no Deployment yet (a first install, `helm
    template`) it leaves the field to KEDA, as before."""
    keda = {"replicaCount": 3, "keda": {"enabled": True}}
    assert rendered_replicas(render_in_cluster(chart, keda, [live_processor(5)])) == 5
    assert rendered_replicas(render_in_cluster(chart, keda, [live_processor(1)])) == 3
    assert rendered_replicas(render_in_cluster(chart, keda, [])) is None
    assert rendered_replicas(render(chart, keda)) is None
    # without KEDA, replicaCount as ever
    static = {"replicaCount": 2}
    assert rendered_replicas(render_in_cluster(chart, static, [live_processor(5)])) == 2


def test_no_processor_without_keda_is_refused(chart: helm.Chart) -> None:
    """Without KEDA, replicaCount is the processor's replica count: 0 leaves shown
    indicators that nothing clears (the same reason KEDA never goes below one)."""
    with pytest.raises(helm.HelmValuesError) as refused:
        render(chart, {"replicaCount": 0})
    assert "at '/replicaCount': minimum: got 0, want 1" in str(refused.value)
    with pytest.raises(helm.HelmValuesError, match=r"at '/replicaCount'"):
        render(chart, {"replicaCount": 0, "keda": {"enabled": False}})
    processor = one(render(chart, {"replicaCount": 1}), "Deployment", "processor")
    assert processor["spec"]["replicas"] == 1


def test_the_kafka_ca_is_mounted_by_its_key(chart: helm.Chart) -> None:
    """A Secret volume without `items` mounts whatever keys the Secret has: with the CA
    under another key the pod starts and the processor stops on a missing file, a
    crash-loop far from its cause. Mounted by its key, a missing key holds the pod in
    ContainerCreating with an event naming the Secret and the key."""
    values = {
        "kafka": {"securityProtocol": "SSL", "caSecretName": "kafka-ca", "caSecretKey": "ca.pem"},
        "crmWebhook": {"enabled": True, "url": "https://crm.example.com/hooks/typing"},
    }
    objects = render(chart, values)
    cafile = settings(objects)["KAFKA_SSL_CAFILE"]
    for component in ("processor", "crm-webhook"):
        spec = one(objects, "Deployment", component)["spec"]["template"]["spec"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "kafka-ca"]
        assert volume["secret"] == {
            "secretName": "kafka-ca",
            "items": [{"key": "ca.pem", "path": "ca.pem"}],
        }
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "kafka-ca"]
        assert f"{mount['mountPath']}/ca.pem" == cafile
        # every Secret the chart itself mounts names the keys it needs
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"].get("items"), volume["name"]


def test_the_crm_endpoint_s_tls_files_are_mounted_in_the_webhook_worker_alone(
    chart: helm.Chart,
) -> None:
    """`crmWebhook.tls`: the CA bundle and the client certificate and key, mounted by their
    keys from their Secrets into the worker's pods, their paths in its env; the processor
    (whose `run` would check the files too) gets neither the volumes nor the variables."""
    hook = {"enabled": True, "url": "https://crm.example.com/hooks/typing"}
    tls = {
        "caSecretName": "crm-ca",
        "caSecretKey": "bundle.pem",
        "clientSecretName": "crm-client",
    }
    objects = render(chart, {"crmWebhook": {**hook, "tls": tls}})
    spec = one(objects, "Deployment", "crm-webhook")["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    assert volumes["crm-webhook-ca"] == {
        "secretName": "crm-ca",
        "items": [{"key": "bundle.pem", "path": "bundle.pem"}],
    }
    assert volumes["crm-webhook-client"] == {
        "secretName": "crm-client",
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
    }
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    env = webhook_env(objects)
    for name, volume, key in (
        ("TYPING_CRM_WEBHOOK_CA_FILE", "crm-webhook-ca", "bundle.pem"),
        ("TYPING_CRM_WEBHOOK_CLIENT_CERT_FILE", "crm-webhook-client", "tls.crt"),
        ("TYPING_CRM_WEBHOOK_CLIENT_KEY_FILE", "crm-webhook-client", "tls.key"),
    ):
        assert mounts[volume]["readOnly"] is True
        assert env[name]["value"] == f"{mounts[volume]['mountPath']}/{key}"
    processor = one(objects, "Deployment", "processor")["spec"]["template"]["spec"]
    assert not [v for v in processor["volumes"] if v["name"].startswith("crm-webhook")]
    assert not [name for name in settings(objects) if name.startswith("TYPING_CRM_WEBHOOK_C")]
    # none set: none mounted, none named
    plain = render(chart, {"crmWebhook": hook})
    assert not [n for n in webhook_env(plain) if n.startswith("TYPING_CRM_WEBHOOK_C")]
    # plain http uses no TLS: the processor would stop at start-up
    with pytest.raises(helm.HelmRenderError, match=r"crmWebhook\.tls is set while"):
        render(chart, {"crmWebhook": {**hook, "url": "http://crm.internal/hook", "tls": tls}})


def webhook_env(objects: list[Manifest]) -> dict[str, Manifest]:
    """The webhook container's `env` entries, by name."""
    (container,) = one(objects, "Deployment", "crm-webhook")["spec"]["template"]["spec"][
        "containers"
    ]
    return {e["name"]: e for e in container["env"]}


def test_webhook_reads_the_sasl_user_from_the_existing_secret(chart: helm.Chart) -> None:
    values = {
        "kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN", "saslUsername": ""},
        "secrets": {"existingSecret": "kafka-and-genesys"},
        "crmWebhook": {"enabled": True, "url": "https://crm.example.com/hooks/typing"},
    }
    objects = render(chart, values)
    env = webhook_env(objects)
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("kafka-and-genesys", name)
    assert "KAFKA_SASL_USERNAME" not in settings(objects)


# Values under which the chart sets the most variables itself: its own Secret, SASL, a CA,
# explicit URLs, every OTel setting and the webhook.
EVERY_SETTING: dict[str, Any] = {
    **ci_values("chart-secret"),
    "kafka": {
        **ci_values("chart-secret")["kafka"],
        "securityProtocol": "SASL_SSL",
        "caSecretName": "kafka-ca",
    },
    "genesys": {
        "apiUrl": "https://api.example.com",
        "loginUrl": "https://login.example.com",
        "oauthScopes": "webchat:read",
    },
    "otel": {
        "exporterOtlpEndpoint": "http://otel-collector:4318",
        "tracesSampler": "traceidratio",
        "tracesSamplerArg": "0.1",
        "resourceAttributes": "team=cx",
    },
    "crmWebhook": {
        "enabled": True,
        "url": "https://crm.example.com/hooks/typing",
        "tls": {"caSecretName": "crm-ca", "clientSecretName": "crm-client"},
    },
}


def chart_set_variables(objects: list[Manifest], component: str) -> set[str]:
    """What the chart sets in a component's container: its `env`, and the keys of the
    ConfigMap and Secret it reads through `envFrom`."""
    (container,) = one(objects, "Deployment", component)["spec"]["template"]["spec"]["containers"]
    names = {entry["name"] for entry in container["env"]}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            names |= set(settings(objects))
        elif "secretRef" in source:
            names |= set(one(objects, "Secret")["stringData"])
    return names


@pytest.mark.parametrize("component", ["processor", "crm-webhook"])
def test_every_setting_the_chart_sets_is_one_the_processor_knows(
    chart: helm.Chart, component: str
) -> None:
    """A name the processor does not know is ignored (its default applies in silence): a
    typo in a template would pass every render."""
    names = chart_set_variables(render(chart, EVERY_SETTING), component)
    ours = {name for name in names if name.startswith(("KAFKA_", "GENESYSCLOUD_", "TYPING_"))}
    assert "TYPING_GROUP_ID" in ours
    assert ours - setting_names() == set()


def with_extra_env(values: dict[str, Any], where: str, name: str) -> dict[str, Any]:
    entry = {"name": name, "value": "x"}
    if where == "extraEnv":
        return {**values, "extraEnv": [entry]}
    return {**values, "crmWebhook": {**values["crmWebhook"], "extraEnv": [entry]}}


@pytest.mark.parametrize(
    ("where", "component"),
    [("extraEnv", "processor"), ("crmWebhook.extraEnv", "crm-webhook")],
)
def test_extra_env_never_replaces_a_variable_the_chart_sets(
    chart: helm.Chart, where: str, component: str
) -> None:
    """An env entry named like one the chart sets replaces the chart's value in silence
    (the later entry wins, and `env` wins over `envFrom`): the consumer group KEDA scales
    on, the pod identity in the resource attributes, a topic the template checked. The
    template refuses it, naming the variable and what to set instead."""
    names = chart_set_variables(render(chart, EVERY_SETTING), component)
    assert {"OTEL_RESOURCE_ATTRIBUTES", "TYPING_GROUP_ID", "KAFKA_SASL_PASSWORD"} <= names
    for name in sorted(names):
        with pytest.raises(helm.HelmRenderError, match=rf"{where} sets {name}, which the chart"):
            render(chart, with_extra_env(EVERY_SETTING, where, name))
    hints = {
        "TYPING_GROUP_ID": "set typing.groupId instead",
        "OTEL_RESOURCE_ATTRIBUTES": "set otel.resourceAttributes instead",
        "OTEL_SERVICE_NAME": (
            "set otel.serviceName instead"
            if component == "processor"
            else "set crmWebhook.otelServiceName instead"
        ),
        "TYPING_HTTP_PORT": "set httpPort instead",
    }
    for name, hint in hints.items():
        with pytest.raises(helm.HelmRenderError, match=re.escape(hint)):
            render(chart, with_extra_env(EVERY_SETTING, where, name))


def test_extra_env_of_the_chart_s_own_names_is_accepted_where_the_chart_sets_none(
    chart: helm.Chart,
) -> None:
    """Variables the chart leaves unset stay open to extraEnv (a CA from a trust bundle
    ConfigMap, OTLP headers), once each."""
    extra = [
        {"name": "KAFKA_SSL_CAFILE", "value": "/etc/trust/ca.pem"},
        {"name": "OTEL_EXPORTER_OTLP_HEADERS", "value": "api-key=k"},
    ]
    objects = render(chart, {"extraEnv": extra})
    (container,) = one(objects, "Deployment", "processor")["spec"]["template"]["spec"]["containers"]
    names = [entry["name"] for entry in container["env"]]
    assert len(names) == len(set(names))
    assert {"KAFKA_SSL_CAFILE", "OTEL_EXPORTER_OTLP_HEADERS"} <= set(names)
    with pytest.raises(helm.HelmRenderError, match=r"extraEnv sets KAFKA_SSL_CAFILE twice"):
        render(chart, {"extraEnv": [*extra, extra[0]]})


def test_a_webhook_url_with_a_credential_comes_from_the_secret(chart: helm.Chart) -> None:
    values = {
        "secrets": {"existingSecret": "typing-credentials"},
        "crmWebhook": {"enabled": True, "urlSecretKey": "CRM_URL"},
    }
    objects = render(chart, values)
    env = webhook_env(objects)
    ref = env["TYPING_CRM_WEBHOOK_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("typing-credentials", "CRM_URL")
    assert "TYPING_CRM_WEBHOOK_URL" not in settings(objects)
    with pytest.raises(helm.HelmRenderError, match=r"urlSecretKey names a key"):
        render(
            chart,
            {
                "secrets": {"oauthClientId": "id", "oauthClientSecret": "secret"},
                "crmWebhook": {"enabled": True, "urlSecretKey": "CRM_URL"},
            },
        )


def test_notes_never_show_a_credential_in_the_webhook_url(chart: helm.Chart) -> None:
    url = "https://crm.example.com/hooks/typing?token=t0k"
    text = notes(chart, {"crmWebhook": {"enabled": True, "url": url}})
    assert "https://crm.example.com/hooks/typing" in text
    assert "t0k" not in text


def test_a_webhook_url_with_a_password_is_refused_not_put_in_a_configmap(
    chart: helm.Chart,
) -> None:
    url = "https://crm:s3cret@crm.example.com/hooks/typing"
    with pytest.raises(helm.HelmRenderError, match=r"carries credentials") as refused:
        render(chart, {"crmWebhook": {"enabled": True, "url": url}})
    assert "s3cret" not in str(refused.value)


def test_a_sasl_password_the_chart_would_not_put_anywhere_is_refused(chart: helm.Chart) -> None:
    """With the OAuth credentials in an existing Secret the chart creates none: a SASL
    password given in the values would be dropped, and the pods would stop at start-up."""
    with pytest.raises(helm.HelmRenderError, match=r"put KAFKA_SASL_PASSWORD in"):
        render(chart, {"secrets": {"kafkaSaslPassword": "pw"}})


@pytest.mark.parametrize(
    ("network", "refusal"),
    [
        ({"serviceMonitor": {"enabled": True}}, r"ingressFrom to let Prometheus in"),
        ({"networkPolicy": {"restrictEgress": True}}, r"restrictEgress needs"),
    ],
)
def test_a_network_policy_that_would_cut_the_processor_off_is_refused(
    chart: helm.Chart, network: dict[str, Any], refusal: str
) -> None:
    values = {"networkPolicy": {"enabled": True, **network.get("networkPolicy", {})}}
    values.update({k: v for k, v in network.items() if k != "networkPolicy"})
    with pytest.raises(helm.HelmRenderError, match=refusal):
        render(chart, values)


def test_a_spread_constraint_with_its_own_selector_keeps_it_for_each_workload(
    chart: helm.Chart,
) -> None:
    """A constraint that names its pods keeps its selector; one that does not gets each
    workload's own, and rendering one workload leaves nothing behind for the other."""
    own = {"matchLabels": {"tier": "typing"}}
    values = {
        "crmWebhook": {"enabled": True, "url": "https://crm.example.com/hooks"},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": own},
            {"maxSkew": 1, "topologyKey": "node", "whenUnsatisfiable": "ScheduleAnyway"},
        ],
    }  # fmt: skip
    for deployment in of_kind(render(chart, values), "Deployment"):
        template = deployment["spec"]["template"]
        spread = template["spec"]["topologySpreadConstraints"]
        assert spread[0]["labelSelector"] == own
        assert spread[1]["labelSelector"]["matchLabels"].items() <= (
            template["metadata"]["labels"].items()
        )


MONITORING = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}


def monitoring_objects(objects: list[Manifest]) -> list[Manifest]:
    """The objects that may be sent to another namespace: ServiceMonitor, PrometheusRule and
    the dashboard ConfigMap."""
    kinds = ("ServiceMonitor", "PrometheusRule")
    return [o for o in objects if o["kind"] in kinds or is_dashboard(o)]


@pytest.mark.parametrize("release", ["typing", LONG_RELEASE])
def test_one_release_name_in_two_namespaces_can_share_a_monitoring_namespace(
    chart: helm.Chart, release: str
) -> None:
    """The same release name in two namespaces, both sending their monitoring objects to
    one central namespace: every object there has a name of its own (else the second
    `helm install` fails on an object the first release owns), and the dashboard's file
    name, which the Grafana sidecar writes into one folder, differs too."""
    central = {key: {**value, "namespace": "monitoring"} for key, value in MONITORING.items()}
    seen: dict[tuple[str, str], str] = {}
    files: dict[str, str] = {}
    for namespace in ("contact-centre-emea-production", "contact-centre-apac-production"):
        for obj in monitoring_objects(render(chart, central, release, namespace)):
            meta = obj["metadata"]
            assert meta["namespace"] == "monitoring"
            assert DNS_LABEL.match(meta["name"]), meta["name"]
            key = (obj["kind"], meta["name"])
            assert key not in seen, f"{key} of {namespace} is also {seen[key]}'s"
            seen[key] = namespace
            if is_dashboard(obj):
                (file,) = obj["data"]
                assert file not in files, f"{file} of {namespace} is also {files[file]}'s"
                files[file] = namespace
    assert (len(seen), len(files)) == (6, 2)


def test_monitoring_objects_in_the_release_namespace_keep_their_names(chart: helm.Chart) -> None:
    objects = render(chart, MONITORING)
    names = {o["kind"]: o["metadata"]["name"] for o in monitoring_objects(objects)}
    assert names == {
        "ServiceMonitor": "typing-genesys-typing-processor",
        "PrometheusRule": "typing-genesys-typing-processor",
        "ConfigMap": "typing-genesys-typing-processor-dashboard",
    }
    # the release's own namespace named explicitly is the default case too
    named = {key: {**value, "namespace": NAMESPACE} for key, value in MONITORING.items()}
    assert {o["metadata"]["name"] for o in monitoring_objects(render(chart, named))} == set(
        names.values()
    )


GRAFANA_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def dashboard(objects: list[Manifest]) -> dict[str, Any]:
    """The Grafana dashboard the chart ships, as Grafana reads it."""
    (data,) = dashboard_configmap(objects)["data"].values()
    loaded: dict[str, Any] = json.loads(data)
    return loaded


def variable(board: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in board["templating"]["list"] if v["name"] == name]
    return found


def test_each_release_has_a_dashboard_of_its_own(chart: helm.Chart) -> None:
    """Grafana keeps one dashboard per uid, and one title per folder: releases that
    shipped the same uid left one of their dashboards loaded, whichever Grafana read
    first, an older chart's as well as a newer one's. Each release's dashboard has a uid
    (at most 40 characters of Grafana's alphabet) and a title of its own, the same on every
    render, and opens on the release's namespace and, with the ServiceMonitor that gives
    the jobs their names, on the release's jobs."""
    releases = [
        ("typing", "contact-centre"),
        ("typing-b", "contact-centre"),
        ("typing", "contact-centre-b"),
        # a dash moved between namespace and release spells the same words
        ("b-typing", "contact-centre"),
        (LONG_RELEASE, "contact-centre-emea-production"),
        (LONG_RELEASE, "contact-centre-apac-production"),
    ]
    central = {key: {**value, "namespace": "monitoring"} for key, value in MONITORING.items()}
    uids: dict[str, tuple[str, str]] = {}
    titles: dict[str, tuple[str, str]] = {}
    for release, namespace in releases:
        board = dashboard(render(chart, central, release, namespace))
        assert GRAFANA_UID.match(board["uid"]), board["uid"]
        # a reader of Grafana's URLs can tell whose it is
        assert board["uid"].startswith(f"{namespace}-"[:20]), board["uid"]
        assert board["uid"] not in uids, (
            f"{board['uid']} of {release} is also {uids[board['uid']]}'s"
        )
        assert board["title"] not in titles, board["title"]
        uids[board["uid"]] = titles[board["title"]] = (release, namespace)
        assert dashboard(render(chart, central, release, namespace)) == board
        assert variable(board, "namespace")["current"]["value"] == namespace
        jobs = [
            s["metadata"]["name"]
            for s in of_kind(render(chart, central, release, namespace), "Service")
        ]
        assert variable(board, "job")["current"]["value"] == jobs

    # without the chart's ServiceMonitor the job names are another scrape's: all of them
    objects = render(chart, {"grafanaDashboard": {"enabled": True}})
    assert variable(dashboard(objects), "job")["current"]["value"] == "$__all"
    # a uid of one's own, e.g. the one links were made to
    values = {"grafanaDashboard": {"enabled": True, "uid": "genesys-typing-processor"}}
    assert dashboard(render(chart, values))["uid"] == "genesys-typing-processor"
    for uid in ("x" * 41, "typing/processor"):
        with pytest.raises(helm.HelmValuesError, match=r"at '/grafanaDashboard/uid'"):
            render(chart, {"grafanaDashboard": {"enabled": True, "uid": uid}})


def test_alerts_need_the_service_monitor_whose_job_they_select(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"needs serviceMonitor\.enabled"):
        render(chart, {"prometheusRule": {"enabled": True}})


def test_keda_refuses_more_replicas_than_input_partitions(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"exceeds typing\.topicPartitions"):
        render(chart, {"keda": {"enabled": True, "maxReplicaCount": 7}})
    # the minimum (replicaCount by default) above the maximum (the partitions by default)
    with pytest.raises(helm.HelmRenderError, match=r"minReplicaCount \(3\) exceeds"):
        render(
            chart, {"keda": {"enabled": True}, "replicaCount": 3, "typing": {"topicPartitions": 2}}
        )


# --------------------------------------------------------------------------- values schema


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "replica count as a word": ({"replicaCount": "three"}, "/replicaCount"),
    "a budget that hangs every drain": (
        {"podDisruptionBudget": {"maxUnavailable": 0}},
        "/podDisruptionBudget/maxUnavailable",
    ),
    "a budget of none in per cent": (
        {"crmWebhook": {"podDisruptionBudget": {"maxUnavailable": "0%"}}},
        "/crmWebhook/podDisruptionBudget/maxUnavailable",
    ),
    "unknown security protocol": (
        {"kafka": {"securityProtocol": "SASL_TLS"}},
        "/kafka/securityProtocol",
    ),
    "unknown SASL mechanism": (
        {"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "GSSAPI", "saslUsername": "u"}},
        "/kafka/saslMechanism",
    ),
    "SASL without a mechanism": (
        {"kafka": {"securityProtocol": "SASL_SSL", "saslUsername": "u"}},
        "/kafka/saslMechanism",
    ),
    "SASL user missing with the chart's secret": (
        {
            "kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN"},
            "secrets": {
                "oauthClientId": "id",
                "oauthClientSecret": "secret",
                "kafkaSaslPassword": "pw",
            },
        },
        "/kafka/saslUsername",
    ),
    "no credentials and no existing secret": (
        {"secrets": {"existingSecret": ""}},
        "/secrets/oauthClientId",
    ),
    "half the credentials": ({"secrets": {"oauthClientId": "id"}}, "/secrets/oauthClientSecret"),
    "SASL password missing from the chart's secret": (
        {
            "kafka": {
                "securityProtocol": "SASL_SSL",
                "saslMechanism": "PLAIN",
                "saslUsername": "u",
            },
            "secrets": {"oauthClientId": "id", "oauthClientSecret": "secret"},
        },
        "/secrets/kafkaSaslPassword",
    ),
    "readiness timeout below the broker check": (
        {"readinessProbe": {"timeoutSeconds": 1}},
        "/readinessProbe/timeoutSeconds",
    ),
    "webhook without a URL": ({"crmWebhook": {"enabled": True}}, "/crmWebhook/url"),
    "KEDA down to zero replicas": (
        {"keda": {"enabled": True, "minReplicaCount": 0}},
        "/keda/minReplicaCount",
    ),
    "commit interval out of the app's bounds": (
        {"typing": {"commitIntervalMs": 5}},
        "/typing/commitIntervalMs",
    ),
    "image digest that is no digest": ({"image": {"digest": "latest"}}, "/image/digest"),
    "misspelt resources": ({"resources": {"limit": {"memory": "1Gi"}}}, "/resources"),
    # the template sets the handler: a second one would be rejected by the API server
    "a probe handler of its own": (
        {"readinessProbe": {"exec": {"command": ["true"]}}},
        "/readinessProbe",
    ),
    "misspelt webhook resources": (
        {"crmWebhook": {"resources": {"limit": {"memory": "1Gi"}}}},
        "/crmWebhook/resources",
    ),
    # a misspelt key would otherwise be ignored in silence, its setting left at the default
    "misspelt top-level key": ({"replicaCout": 3}, ""),
    "misspelt setting": ({"typing": {"suppresionWindowMs": 800}}, "/typing"),
    "misspelt webhook setting": ({"crmWebhook": {"enabeld": True}}, "/crmWebhook"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_schema_refuses_bad_values(chart: helm.Chart, case: str) -> None:
    values, where = REFUSED[case]
    with pytest.raises(helm.HelmValuesError) as refused:
        render(chart, values)
    assert f"at '{where}'" in str(refused.value)


@pytest.mark.parametrize("port", [80, 443, 1023])
def test_a_privileged_http_port_is_refused(chart: helm.Chart, port: int) -> None:
    """Both workers run as user 10001 with every capability dropped: a port below 1024
    cannot be bound where the runtime keeps the kernel's unprivileged-port floor, and the
    worker then runs without /healthz (it only logs the error), so liveness restarts it
    without end. The Service may still listen on a low port (service.port)."""
    with pytest.raises(helm.HelmValuesError, match=r"at '/httpPort': minimum: .*want 1,?024"):
        render(chart, {"httpPort": port})
    values = {"httpPort": 1024, "service": {"port": 80}}
    processor = one(render(chart, values), "Deployment", "processor")
    (container,) = processor["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 1024


# Values the processor refuses at start-up (every pod stops with a ConfigError, and the
# Deployment crash-loops after a `helm install` that succeeded): the schema refuses them.
# Each case: the values, where the schema refuses them, and the environment the chart
# would give the processor for them.
STARTUP_REFUSALS: dict[str, tuple[dict[str, Any], str, dict[str, str]]] = {
    "sampling ratio in per cent": (
        {"otel": {"tracesSampler": "parentbased_traceidratio", "tracesSamplerArg": "10%"}},
        "/otel/tracesSamplerArg",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "10%"},
    ),
    "sampling ratio above one": (
        {"otel": {"tracesSampler": "traceidratio", "tracesSamplerArg": "1.5"}},
        "/otel/tracesSamplerArg",
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
    ),
    "resource attribute without =": (
        {"otel": {"resourceAttributes": "deployment.environment=prod,production"}},
        "/otel/resourceAttributes",
        {"OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=p,deployment.environment=prod,production"},
    ),
    "resource attribute without a key": (
        {"otel": {"resourceAttributes": "=production"}},
        "/otel/resourceAttributes",
        {"OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=p,=production"},
    ),
    "OTLP header without = in extraEnv": (
        {"extraEnv": [{"name": "OTEL_EXPORTER_OTLP_HEADERS", "value": "api-key"}]},
        "/extraEnv/0/value",
        {"OTEL_EXPORTER_OTLP_HEADERS": "api-key"},
    ),
    "OTLP trace header without = in the webhook's extraEnv": (
        {"crmWebhook": {"extraEnv": [{"name": "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "value": "k"}]}},
        "/crmWebhook/extraEnv/0/value",
        {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "k"},
    ),
    "blank service name": (
        {"otel": {"serviceName": " "}},
        "/otel/serviceName",
        {"OTEL_SERVICE_NAME": " "},
    ),
    "blank webhook service name": (
        {"crmWebhook": {"otelServiceName": " "}},
        "/crmWebhook/otelServiceName",
        {"OTEL_SERVICE_NAME": " "},
    ),
    "OTLP endpoint without a host": (
        {"otel": {"exporterOtlpEndpoint": "http://:4318"}},
        "/otel/exporterOtlpEndpoint",
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://:4318"},
    ),
    "bootstrap server with a scheme": (
        {"kafka": {"bootstrapServers": "PLAINTEXT://kafka:9092"}},
        "/kafka/bootstrapServers",
        {"KAFKA_BOOTSTRAP_SERVERS": "PLAINTEXT://kafka:9092"},
    ),
    "bootstrap server port out of range": (
        {"kafka": {"bootstrapServers": "kafka-0:9092,kafka-1:90920"}},
        "/kafka/bootstrapServers",
        {"KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9092,kafka-1:90920"},
    ),
    "bootstrap servers with an empty entry": (
        {"kafka": {"bootstrapServers": "kafka-0:9092,"}},
        "/kafka/bootstrapServers",
        {"KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9092,"},
    ),
    "bootstrap server as a bad IPv4 address": (
        {"kafka": {"bootstrapServers": "10.0.0.256:9092"}},
        "/kafka/bootstrapServers",
        {"KAFKA_BOOTSTRAP_SERVERS": "10.0.0.256:9092"},
    ),
    "blank SASL user": (
        {"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN", "saslUsername": " "}},
        "/kafka/saslUsername",
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": " ",
        },
    ),
    "blank Kafka client id": (
        {"kafka": {"clientId": " \t"}},
        "/kafka/clientId",
        {"KAFKA_CLIENT_ID": " \t"},
    ),
    "API URL with a space in the host": (
        {"genesys": {"apiUrl": "https://api example.com"}},
        "/genesys/apiUrl",
        {"GENESYSCLOUD_API_URL": "https://api example.com"},
    ),
    "API URL with a query": (
        {"genesys": {"apiUrl": "https://api.example.com/?region=eu", "region": "eu-west-1"}},
        "/genesys/apiUrl",
        {
            "GENESYSCLOUD_API_URL": "https://api.example.com/?region=eu",
            "GENESYSCLOUD_REGION": "eu-west-1",
        },
    ),
    "login URL with a fragment": (
        {"genesys": {"loginUrl": "https://login.example.com#eu", "region": "eu-west-1"}},
        "/genesys/loginUrl",
        {
            "GENESYSCLOUD_LOGIN_URL": "https://login.example.com#eu",
            "GENESYSCLOUD_REGION": "eu-west-1",
        },
    ),
    "API URL with a credential": (
        {"genesys": {"apiUrl": "https://user:pw@api.example.com", "region": "eu-west-1"}},
        "/genesys/apiUrl",
        {
            "GENESYSCLOUD_API_URL": "https://user:pw@api.example.com",
            "GENESYSCLOUD_REGION": "eu-west-1",
        },
    ),
    "OAuth scope with a letter that is no ASCII": (
        {"genesys": {"oauthScopes": "webchat:réad"}},
        "/genesys/oauthScopes",
        {"GENESYSCLOUD_OAUTH_SCOPES": "webchat:réad"},
    ),
    "login URL with a port out of range": (
        {"genesys": {"loginUrl": "https://login.example.com:70000"}},
        "/genesys/loginUrl",
        {"GENESYSCLOUD_LOGIN_URL": "https://login.example.com:70000"},
    ),
    "webhook URL without a host": (
        {"crmWebhook": {"enabled": True, "url": "https:///hooks/typing"}},
        "/crmWebhook/url",
        {"TYPING_CRM_WEBHOOK_URL": "https:///hooks/typing"},
    ),
    "webhook timeout past what a hand-over can wait": (
        {"crmWebhook": {"enabled": True, "url": "https://crm.example.com/h", "timeoutMs": 8001}},
        "/crmWebhook/timeoutMs",
        {"TYPING_CRM_WEBHOOK_TIMEOUT_MS": "8001"},
    ),
    "webhook authorization with a line break inside": (
        {"secrets": {"crmWebhookAuthorization": "Bearer a\nX-Injected: 1"}},
        "/secrets/crmWebhookAuthorization",
        {"TYPING_CRM_WEBHOOK_AUTHORIZATION": "Bearer a\nX-Injected: 1"},
    ),
    "blank webhook authorization": (
        {"secrets": {"crmWebhookAuthorization": " "}},
        "/secrets/crmWebhookAuthorization",
        {"TYPING_CRM_WEBHOOK_AUTHORIZATION": " "},
    ),
    "audit log file that is the root directory": (
        {"typing": {"auditLogFile": "/"}},
        "/typing/auditLogFile",
        {"TYPING_AUDIT_LOG_FILE": "/"},
    ),
    "audit log file that names a directory": (
        {"typing": {"auditLogFile": "/etc/"}},
        "/typing/auditLogFile",
        {"TYPING_AUDIT_LOG_FILE": "/etc/"},
    ),
}

# Valid settings near those edges: the schema keeps accepting what the processor accepts.
STARTUP_ACCEPTED: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "sampling ratios": (
        {"otel": {"tracesSampler": "traceidratio", "tracesSamplerArg": "0.05"}},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.05"},
    ),
    "resource attributes": (
        {"otel": {"resourceAttributes": "deployment.environment=prod, team = cx,"}},
        {"OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=p,deployment.environment=prod, team = cx,"},
    ),
    "webhook authorization from a file, its newline at the end": (
        {"secrets": {"crmWebhookAuthorization": "Bearer abc\n"}},
        {"TYPING_CRM_WEBHOOK_AUTHORIZATION": "Bearer abc\n"},
    ),
    "OTLP headers": (
        {"extraEnv": [{"name": "OTEL_EXPORTER_OTLP_HEADERS", "value": "api-key=k,x-org=a=b"}]},
        {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=k,x-org=a=b"},
    ),
    "bootstrap servers": (
        {"kafka": {"bootstrapServers": "b-1.kafka.example.com:9096, 10.0.0.7:9092,[::1]:9092,k_1"}},
        {"KAFKA_BOOTSTRAP_SERVERS": "b-1.kafka.example.com:9096, 10.0.0.7:9092,[::1]:9092,k_1"},
    ),
    "URLs": (
        {
            "genesys": {"apiUrl": "http://10.0.0.1:8080", "loginUrl": "https://[::1]:8443/x"},
            "otel": {"exporterOtlpEndpoint": "http://otel-collector.observability:4318"},
        },
        {
            "GENESYSCLOUD_API_URL": "http://10.0.0.1:8080",
            "GENESYSCLOUD_LOGIN_URL": "https://[::1]:8443/x",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        },
    ),
    "audit log file": (
        {"typing": {"auditLogFile": "/var/log/typing/audit.jsonl"}},
        {"TYPING_AUDIT_LOG_FILE": "/var/log/typing/audit.jsonl"},
    ),
}


def processor_environment_accepted(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> bool:
    """Whether `run` gets past its settings with `environment` over a valid one."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    base = {"GENESYSCLOUD_OAUTHCLIENT_ID": "id", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "secret"}
    if environment.get("KAFKA_SECURITY_PROTOCOL", "").startswith("SASL_"):
        base["KAFKA_SASL_PASSWORD"] = "pw"  # from the Secret: PLAINTEXT refuses it
    for name, value in {**base, **environment}.items():
        monkeypatch.setenv(name, value)
    try:
        load_settings()
        load_otel()
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("case", STARTUP_REFUSALS)
def test_schema_refuses_what_stops_the_processor_at_start_up(
    chart: helm.Chart, case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values, where, environment = STARTUP_REFUSALS[case]
    assert not processor_environment_accepted(environment, monkeypatch, tmp_path)
    with pytest.raises(helm.HelmValuesError) as refused:
        render(chart, values)
    assert f"at '{where}'" in str(refused.value)


@pytest.mark.parametrize("case", STARTUP_ACCEPTED)
def test_schema_accepts_what_the_processor_accepts(
    chart: helm.Chart, case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values, environment = STARTUP_ACCEPTED[case]
    assert processor_environment_accepted(environment, monkeypatch, tmp_path)
    chart.validate_schema(chart.merge_values(values))


MATRIX = (
    '{"typing": {"customer": 6000, "agent": 5000, "bot": 3000},'
    ' "paused": {"customer": 2000, "agent": 2500, "bot": 1500}}'
)
# Settings the schema cannot check (one value against another, JSON in a string) that the
# processor refuses at start-up: the template fails instead, naming the values.
TEMPLATE_REFUSALS: dict[str, tuple[dict[str, Any], str, dict[str, str]]] = {
    "dead letters into the input topic": (
        {"typing": {"dlqTopic": "genesys.typing.events"}},
        r"typing\.dlqTopic is the topic of typing\.inputTopic \(genesys\.typing\.events\)",
        {"TYPING_DLQ_TOPIC": "genesys.typing.events"},
    ),
    "the changelog on the audit topic": (
        {"typing": {"changelogTopic": "genesys.typing.audit"}},
        r"typing\.changelogTopic is the topic of typing\.auditTopic",
        {"TYPING_CHANGELOG_TOPIC": "genesys.typing.audit"},
    ),
    "the default changelog on the CRM topic": (
        {"typing": {"groupId": "typing.crm", "crmTopic": "typing.crm-state-changelog"}},
        r"typing\.changelogTopic is the topic of typing\.crmTopic",
        {"TYPING_GROUP_ID": "typing.crm", "TYPING_CRM_TOPIC": "typing.crm-state-changelog"},
    ),
    "a topic name Kafka does not take": (
        {"typing": {"inputTopic": "events v2"}},
        r'typing\.inputTopic is "events v2": no Kafka topic name',
        {"TYPING_INPUT_TOPIC": "events v2"},
    ),
    "a topic name too long": (
        {"typing": {"dlqTopic": "d" * 250}},
        r"typing\.dlqTopic is \"d{250}\": no Kafka topic name",
        {"TYPING_DLQ_TOPIC": "d" * 250},
    ),
    "a group id that makes no changelog topic": (
        {"typing": {"groupId": "a/b"}},
        r'typing\.changelogTopic is "a/b-state-changelog": no Kafka topic name',
        {"TYPING_GROUP_ID": "a/b"},
    ),
    "a timeout matrix that is no JSON": (
        {"typing": {"timeoutMatrix": '{"typing": {"customer": 4000'}},
        r"typing\.timeoutMatrix is not a JSON object",
        {"TYPING_TIMEOUT_MATRIX": '{"typing": {"customer": 4000'},
    ),
    "a timeout matrix with a role left out": (
        {"typing": {"timeoutMatrix": '{"typing": {"customer": 4000}}'}},
        r"typing\.timeoutMatrix\.typing needs customer, agent and bot",
        {"TYPING_TIMEOUT_MATRIX": '{"typing": {"customer": 4000}}'},
    ),
    "a timeout matrix with an unknown status": (
        {"typing": {"timeoutMatrix": '{"stopped": {"customer": 1, "agent": 1, "bot": 1}}'}},
        r"typing\.timeoutMatrix has stopped",
        {"TYPING_TIMEOUT_MATRIX": '{"stopped": {"customer": 1, "agent": 1, "bot": 1}}'},
    ),
    "a timeout matrix with an unknown role": (
        {"typing": {"timeoutMatrix": MATRIX.replace('"bot"', '"bots"')}},
        r"typing\.timeoutMatrix\.paused has bots",
        {"TYPING_TIMEOUT_MATRIX": MATRIX.replace('"bot"', '"bots"')},
    ),
    "a timeout out of the bounds of an event's": (
        {"typing": {"timeoutMatrix": MATRIX.replace("2000", "100")}},
        r"typing\.timeoutMatrix\.paused\.customer must be a whole number of ms in 500\.\.60000",
        {"TYPING_TIMEOUT_MATRIX": MATRIX.replace("2000", "100")},
    ),
    "a timeout with a fraction": (
        {"typing": {"timeoutMatrix": MATRIX.replace("2000", "2000.5")}},
        r"typing\.timeoutMatrix\.paused\.customer must be a whole number",
        {"TYPING_TIMEOUT_MATRIX": MATRIX.replace("2000", "2000.5")},
    ),
    # PLAINTEXT uses neither SASL nor a CA: the protocol was probably forgotten
    "a SASL mechanism with PLAINTEXT": (
        {"kafka": {"saslMechanism": "SCRAM-SHA-512"}},
        r"kafka\.saslMechanism is set while kafka\.securityProtocol is PLAINTEXT",
        {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
    ),
    "a SASL user with PLAINTEXT": (
        {"kafka": {"saslUsername": "typing"}},
        r"kafka\.saslUsername is set while kafka\.securityProtocol is PLAINTEXT",
        {"KAFKA_SASL_USERNAME": "typing"},
    ),
    "a SASL password with PLAINTEXT": (
        {
            "secrets": {
                "existingSecret": "",
                "oauthClientId": "id",
                "oauthClientSecret": "secret",
                "kafkaSaslPassword": "pw",
            }
        },
        r"secrets\.kafkaSaslPassword is set while kafka\.securityProtocol is PLAINTEXT",
        {"KAFKA_SASL_PASSWORD": "pw"},
    ),
    "a CA with PLAINTEXT": (
        {"kafka": {"caSecretName": "kafka-ca"}},
        r"kafka\.caSecretName is set while kafka\.securityProtocol is PLAINTEXT",
        {"KAFKA_SSL_CAFILE": certifi.where()},
    ),
    "a SASL mechanism with SSL": (
        {"kafka": {"securityProtocol": "SSL", "saslMechanism": "SCRAM-SHA-512"}},
        r"kafka\.saslMechanism is set while kafka\.securityProtocol is SSL",
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
    ),
    "a CA with SASL_PLAINTEXT": (
        {
            "kafka": {
                "securityProtocol": "SASL_PLAINTEXT",
                "saslMechanism": "SCRAM-SHA-512",
                "saslUsername": "typing",
                "caSecretName": "kafka-ca",
            }
        },
        r"kafka\.caSecretName is set while kafka\.securityProtocol is SASL_PLAINTEXT",
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "typing",
            "KAFKA_SSL_CAFILE": certifi.where(),
        },
    ),
    # the other URL would come from us-east-1: the OAuth secret to the real login there
    "an API URL alone, with no region": (
        {"genesys": {"apiUrl": "http://emulator:8787"}},
        r"genesys\.apiUrl is set without genesys\.loginUrl",
        {"GENESYSCLOUD_API_URL": "http://emulator:8787"},
    ),
    "a login URL alone, with no region": (
        {"genesys": {"loginUrl": "http://emulator:8787"}},
        r"genesys\.loginUrl is set without genesys\.apiUrl",
        {"GENESYSCLOUD_LOGIN_URL": "http://emulator:8787"},
    ),
}


def test_one_genesys_url_with_a_region_set_on_purpose_reaches_the_processor(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = settings(
        render(chart, {"genesys": {"region": "eu-west-1", "apiUrl": "https://proxy.example.com"}})
    )
    environment = {name: config[name] for name in ("GENESYSCLOUD_REGION", "GENESYSCLOUD_API_URL")}
    assert environment["GENESYSCLOUD_REGION"] == "eu-west-1"
    assert "GENESYSCLOUD_LOGIN_URL" not in config
    assert processor_environment_accepted(environment, monkeypatch, tmp_path)
    # no region given: none set, and the processor takes its own default
    assert "GENESYSCLOUD_REGION" not in settings(render(chart, {}))


def test_a_valid_timeout_matrix_reaches_the_processor(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = settings(render(chart, {"typing": {"timeoutMatrix": MATRIX}}))
    assert config["TYPING_TIMEOUT_MATRIX"] == MATRIX
    assert processor_environment_accepted({"TYPING_TIMEOUT_MATRIX": MATRIX}, monkeypatch, tmp_path)


@pytest.mark.parametrize("case", TEMPLATE_REFUSALS)
def test_template_refuses_settings_that_stop_the_processor_at_start_up(
    chart: helm.Chart, case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values, message, environment = TEMPLATE_REFUSALS[case]
    assert not processor_environment_accepted(environment, monkeypatch, tmp_path)
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


AUDIT_FILE = "/var/log/typing/audit.jsonl"


@pytest.mark.parametrize(
    "mounts",
    [
        [],
        [{"name": "audit", "mountPath": "/var/log/typing", "readOnly": True}],
        [{"name": "audit", "mountPath": "/var/log/typing-other"}],
    ],
)
def test_an_audit_file_on_the_read_only_root_is_refused(
    chart: helm.Chart, mounts: list[dict[str, Any]]
) -> None:
    """`run` opens the audit file before anything else and stops with a ConfigError when it
    cannot write it: on the read-only root filesystem, without a writable volume mounted
    above it, every pod crash-loops."""
    values = {
        "typing": {"auditLogFile": AUDIT_FILE},
        "extraVolumes": [{"name": "audit", "emptyDir": {}}],
        "extraVolumeMounts": mounts,
    }
    with pytest.raises(helm.HelmRenderError, match=r"typing\.auditLogFile .* no writable volume"):
        render(chart, values)


def test_an_audit_file_in_the_small_tmp_volume_is_refused(chart: helm.Chart) -> None:
    """The /tmp volume is a 64Mi emptyDir: an audit file growing there gets the pod evicted."""
    with pytest.raises(helm.HelmRenderError, match=r"typing\.auditLogFile .* /tmp"):
        render(chart, {"typing": {"auditLogFile": "/tmp/audit.jsonl"}})  # noqa: S108


def test_an_audit_file_on_a_writable_volume_or_root_is_accepted(chart: helm.Chart) -> None:
    mounted = {
        "typing": {"auditLogFile": AUDIT_FILE},
        "extraVolumes": [{"name": "audit", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "audit", "mountPath": "/var/log/"}],
    }
    assert settings(render(chart, mounted))["TYPING_AUDIT_LOG_FILE"] == AUDIT_FILE
    writable_root = {
        "typing": {"auditLogFile": AUDIT_FILE},
        "containerSecurityContext": {"readOnlyRootFilesystem": False},
    }
    assert settings(render(chart, writable_root))["TYPING_AUDIT_LOG_FILE"] == AUDIT_FILE


def test_schema_knows_the_regions_the_processor_knows(chart: helm.Chart) -> None:
    """An unknown region passed the schema and stopped every pod at start-up."""
    schema = json.loads((Path(CHART) / "values.schema.json").read_text())
    regions = schema["properties"]["genesys"]["properties"]["region"]["enum"]
    # empty: not set, the processor's default
    assert set(regions) == set(REGION_DOMAINS) | set(REGION_DOMAINS.values()) | {""}
    with pytest.raises(helm.HelmValuesError, match="/genesys/region"):
        render(chart, {"genesys": {"region": "eu-west-9"}})


def test_schema_accepts_every_ci_values_file(chart: helm.Chart) -> None:
    for name in CI_VALUES:
        chart.validate_schema(chart.merge_values(ci_values(name)))


# --------------------------------------------------------------------------- metrics


def _counters() -> Counters:
    return Counters(1, 1, 1, 1, 1, Counter({"applied": 1}))


@dataclass
class _Processor:
    counters: Counters = field(default_factory=_counters)
    ready: bool = True
    problem: str | None = None

    def partition_stats(self) -> list[PartitionStats]:
        return [PartitionStats(0, 1, 1, 1, 1)]

    def restores(self) -> list[RestoreStats]:
        return [RestoreStats(0, 1.0, 1, 1)]

    async def broker_reachable(self) -> bool:
        return True


@dataclass
class _Deliveries:
    delivered: int = 1
    refused: int = 1
    retries: int = 1
    dead_letters: int = 1
    restarts: int = 1


@dataclass
class _Worker:
    counters: _Deliveries = field(default_factory=_Deliveries)
    ready: bool = True
    held_s: float = 1.0


def _families(telemetry: Telemetry) -> set[str]:
    """Prometheus series names of every metric family `telemetry` exposes."""
    names: set[str] = set()
    for line in telemetry.render_prometheus().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = ("_bucket", "_count", "_sum") if kind == "histogram" else ("",)
            names |= {name + suffix for suffix in suffixes}
    return names


async def exported_metric_names() -> set[str]:
    """What `/metrics` of `run` and of `crm-webhook` expose once every instrument has data."""
    processor = Telemetry.from_environment({})
    sink = GenesysSink(
        SinkConfig.from_settings(
            GenesysSettings(oauthclient_id="id", oauthclient_secret="secret"), TypingSettings()
        )
    )
    try:
        processor.instrument_sink(sink)
        processor.observe(_Processor())
        processor.genesys_calls["PATCH", 200, "session"] += 1
        assert processor.call_duration is not None
        processor.call_duration.record(0.1)
        processor.record_budget_wait(0.2)
        processor.record_restore(0, 0.5, 10, 2)
        tracing = processor.partition_tracing("in", 0, {})
        assert tracing is not None
        tracing.end_to_end.record(0.3)
        names = _families(processor)
    finally:
        await sink.aclose()
        processor.shutdown()
    webhook = Telemetry.from_environment({}, processor_metrics=False)
    instrument_webhook(webhook, _Worker())
    names |= _families(webhook)
    webhook.shutdown()
    return names


async def test_the_readme_names_every_metric_the_processor_exports() -> None:
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"`((?:typing|genesys)_[a-z0-9_]+)", readme))
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in await exported_metric_names()}
    exported = {name for name in families if name.startswith(("typing_", "genesys_"))}
    assert exported - documented == set(), "exported but not in the README"
    assert documented - exported == set(), "in the README but not exported"


QUERIED = re.compile(r"\b((?:typing|genesys)_[a-z0-9_]+)\{")


async def test_alerts_and_dashboard_query_metrics_the_processor_exports(
    rendered: dict[str, list[Manifest]],
) -> None:
    exported = await exported_metric_names()
    objects = production(rendered)
    rules = [r for g in one(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    alerts = {rule["alert"] for rule in rules}
    assert {
        "TypingConsumerLagHigh",
        "TypingDeadLettersHigh",
        "TypingProcessorNotReady",
        "GenesysRateLimited",
        "GenesysCircuitBreakerOpen",
        "CrmWebhookNotReady",
        "CrmWebhookDeadLetters",
    } <= alerts
    rule_metrics = {name for rule in rules for name in QUERIED.findall(rule["expr"])}
    assert rule_metrics
    assert rule_metrics <= exported, rule_metrics - exported
    exprs = [t["expr"] for p in dashboard(objects)["panels"] for t in p.get("targets", [])]
    dashboard_metrics = {name for expr in exprs for name in QUERIED.findall(expr)}
    assert dashboard_metrics <= exported, dashboard_metrics - exported
    # lag, decisions, calls by status, end-to-end latency, rate-limit waits, phantom risk,
    # restores (under way, records, duration), the webhook's deliveries and held record
    assert {
        "typing_consumer_lag",
        "typing_events_total",
        "genesys_calls_total",
        "typing_end_to_end_duration_seconds_bucket",
        "genesys_ratelimit_wait_seconds_bucket",
        "genesys_circuit_breaker_state",
        "genesys_ratelimit_paused_seconds",
        "typing_reconciliations_queued",
        "typing_restore_elapsed_seconds",
        "typing_restore_remaining",
        "typing_restore_records_total",
        "typing_restore_duration_seconds_bucket",
        "typing_crm_webhook_deliveries_total",
        "typing_crm_webhook_held_seconds",
    } <= dashboard_metrics


def test_dashboard_panels_have_ids_and_places_of_their_own(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Grafana keys panel state by id, and draws panels that share grid cells on top of
    each other: every panel has its own id and its own cells of the 24-column grid."""
    panels = dashboard(production(rendered))["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} over {taken[x, y]}"
                taken[x, y] = panel["title"]


def test_alerts_select_the_series_the_service_monitor_scrapes(
    rendered: dict[str, list[Manifest]],
) -> None:
    objects = rendered["production-long-name"]
    services = {s["metadata"]["name"] for s in of_kind(objects, "Service")}
    monitor = one(objects, "ServiceMonitor")
    # the monitor's selector picks both workers' Services; job = the Service name
    for service in of_kind(objects, "Service"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (
            service["metadata"]["labels"].items()
        )
    for group in one(objects, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            jobs = set(re.findall(r'job="([^"]+)"', rule["expr"]))
            assert jobs, rule["alert"]
            assert jobs <= services, rule["alert"]
            assert f'namespace="{NAMESPACE}"' in rule["expr"]


def test_the_webhook_authorization_comes_from_the_secret_never_the_configmap(
    chart: helm.Chart,
) -> None:
    """The chart's own Secret holds `secrets.crmWebhookAuthorization`; an existing Secret
    holds it under `crmWebhook.authorizationSecretKey`. Only the webhook reads it by key."""
    token = "Bearer t0k3n"
    own = {
        "secrets": {
            "oauthClientId": "id",
            "oauthClientSecret": "secret",
            "crmWebhookAuthorization": token,
        },
        "crmWebhook": {"enabled": True, "url": "https://crm.example.com/hooks/typing"},
    }
    objects = render(chart, own)
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert secret["stringData"]["TYPING_CRM_WEBHOOK_AUTHORIZATION"] == token
    ref = webhook_env(objects)["TYPING_CRM_WEBHOOK_AUTHORIZATION"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (
        secret["metadata"]["name"],
        "TYPING_CRM_WEBHOOK_AUTHORIZATION",
    )
    assert "TYPING_CRM_WEBHOOK_AUTHORIZATION" not in settings(objects)
    assert "t0k3n" not in str([o for o in objects if o["kind"] != "Secret"])

    existing = {
        "secrets": {"existingSecret": "typing-credentials"},
        "crmWebhook": {
            "enabled": True,
            "url": "https://crm.example.com/hooks/typing",
            "authorizationSecretKey": "CRM_AUTHORIZATION",
        },
    }
    objects = render(chart, existing)
    ref = webhook_env(objects)["TYPING_CRM_WEBHOOK_AUTHORIZATION"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("typing-credentials", "CRM_AUTHORIZATION")
    # none set: no header
    assert "TYPING_CRM_WEBHOOK_AUTHORIZATION" not in webhook_env(
        render(chart, {**existing, "crmWebhook": own["crmWebhook"]})
    )

    with pytest.raises(helm.HelmRenderError, match=r"authorizationSecretKey names a key"):
        render(chart, {**own, "crmWebhook": existing["crmWebhook"]})
    with pytest.raises(
        helm.HelmRenderError, match=r"crmWebhookAuthorization is only used"
    ) as refused:
        render(chart, {**existing, "secrets": {"crmWebhookAuthorization": token}})
    assert "t0k3n" not in str(refused.value)
