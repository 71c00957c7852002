"""Test support for the Helm chart: rendering with the real Helm engine (helm-python-sdk's
`libhelm_c`, no helm binary) and reading the rendered objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "genesys-typing-processor"
NAMESPACE = "typing"
RELEASE = "typing"
# Helm's longest release name (53 characters): every object name must still fit in 63.
LONG_RELEASE = "genesys-typing-processor-production-eu-central-1-blue"

Manifest = dict[str, Any]


def ci_values(name: str) -> dict[str, Any]:
    """The chart's `ci/<name>-values.yaml`."""
    values = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return values or {}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with a key twice, as the Kubernetes API and
    Helm's own YAML-to-JSON step do (PyYAML keeps the last one in silence)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        twice = sorted({str(key) for key in keys if keys.count(key) > 1})
        if twice:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate keys {twice}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def render(
    chart: helm.Chart,
    values: dict[str, Any] | None = None,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[Manifest]:
    """Every object the chart renders for `values` (NOTES.txt left out); a key that a
    mapping holds twice fails, as it fails `helm install`."""
    rendered = chart.render(values=values or {}, name=release, namespace=namespace)
    objects: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            objects.extend(doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc)
    return objects


def notes(chart: helm.Chart, values: dict[str, Any] | None = None) -> str:
    """The rendered NOTES.txt."""
    rendered = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    """The objects of one kind."""
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    """The single object of `kind` (and `app.kubernetes.io/component`, when given)."""
    found = [
        obj
        for obj in of_kind(objects, kind)
        if component is None
        or obj["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects for component {component}"
    return found[0]


def settings(objects: list[Manifest]) -> dict[str, str]:
    """The data of the settings ConfigMap (the one every worker reads through envFrom)."""
    (found,) = [o for o in of_kind(objects, "ConfigMap") if not is_dashboard(o)]
    data: dict[str, str] = found["data"]
    return data


def is_dashboard(obj: Manifest) -> bool:
    """The ConfigMap that carries the Grafana dashboard."""
    return obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-dashboard")


def pod_specs(objects: list[Manifest]) -> Iterator[tuple[str, Manifest, Manifest]]:
    """(name, pod metadata, pod spec) of every pod the chart makes: Deployments and Pods."""
    for obj in objects:
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]
            yield obj["metadata"]["name"], template["metadata"], template["spec"]
        elif obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj["metadata"], obj["spec"]


def environment(objects: list[Manifest]) -> set[str]:
    """Every variable the chart gives a container: ConfigMap and Secret keys, and `env`."""
    names: set[str] = set()
    for obj in of_kind(objects, "ConfigMap") + of_kind(objects, "Secret"):
        if is_dashboard(obj):
            continue
        names |= set(obj.get("data", {})) | set(obj.get("stringData", {}))
    for _, _, spec in pod_specs(objects):
        for container in spec["containers"]:
            names |= {entry["name"] for entry in container.get("env", [])}
    return names
