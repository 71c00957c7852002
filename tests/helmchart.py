"""Test support for the Helm chart: rendering with the real Helm engine (helm-python-sdk's
`libhelm_c`, no helm binary) and reading the rendered objects."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    return _objects(chart.render(values=values or {}, name=release, namespace=namespace))


@contextmanager
def _api_server(live: list[Manifest]) -> Iterator[str]:
    """A Kubernetes API server holding `live` (namespaced objects), for `lookup`: it
    answers the discovery of apps/v1 and of the objects' group versions, and GETs of each
    object; the URL."""

    def resource(kind: str) -> dict[str, Any]:
        return {"name": kind.lower() + "s", "namespaced": True, "kind": kind, "verbs": ["get"]}

    resources: dict[str, list[dict[str, Any]]] = {"/apis/apps/v1": [resource("Deployment")]}
    objects: dict[str, Manifest] = {}
    for obj in live:
        group_version, kind = obj["apiVersion"], obj["kind"]
        plural = kind.lower() + "s"
        prefix = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        if resource(kind) not in resources.setdefault(prefix, []):
            resources[prefix].append(resource(kind))
        meta = obj["metadata"]
        objects[f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"] = obj

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            body: Manifest
            if path in resources:
                group_version = path.split("/", 2)[2]
                body = {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": group_version,
                    "resources": resources[path],
                }
                status = 200
            elif path in objects:
                body, status = objects[path], 200
            else:
                body = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
                body |= {"reason": "NotFound", "code": 404}
                status = 404
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def render_in_cluster(
    chart: helm.Chart, values: dict[str, Any], live: list[Manifest]
) -> list[Manifest]:
    """What `helm upgrade` renders against a cluster that holds `live`: `lookup` finds
    those objects (with `helm template` it finds nothing)."""
    with _api_server(live) as url:
        config = helm.Config(
            kube_apiserver=url, kube_token="test", namespace=NAMESPACE, storage_driver="memory"
        )
        with config:
            rendered = config.render(chart, values, name=RELEASE, namespace=NAMESPACE)
    return _objects(rendered)


def _objects(rendered: dict[str, str]) -> list[Manifest]:
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
