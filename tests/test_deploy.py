"""The Helm chart and the Dockerfile speak the documented configuration contract; the image
is pinned (base by digest, dependencies by constraints.txt) and passes hadolint."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import helm_python as helm
import pytest
import yaml
from helmchart import CHART, REPO, ci_values, environment, one, render
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pipeline import UNREACHED_ENV

from processor.asgi import serve_in_background
from processor.childproc import free_port
from processor.settings import setting_names
from processor.telemetry import OpsEndpoint, Telemetry

DOCKERFILE = (REPO / "Dockerfile").read_text()

KNOWN = setting_names()


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


@pytest.mark.parametrize("values", ["default", "chart-secret", "production"])
def test_every_variable_a_rendered_container_gets_is_a_setting(values: str) -> None:
    with helm.Chart.load(CHART) as chart:
        names = environment(render(chart, ci_values(values)))
    assert "TYPING_GROUP_ID" in names
    # POD_*: the pod's own name and namespace, for OTEL_RESOURCE_ATTRIBUTES
    unknown = {n for n in names if n not in KNOWN and not n.startswith(("OTEL_", "POD_"))}
    assert unknown == set()


def test_chart_metadata_and_values_parse() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["name"] == "genesys-typing-processor"
    assert values["typing"]["groupId"] == "genesys-typing-processor"
    assert values["typing"]["inputTopic"] == "genesys.typing.events"
    with helm.Chart.load(CHART) as loaded:
        container = one(render(loaded), "Deployment", "processor")["spec"]["template"]["spec"][
            "containers"
        ][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_chart_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # maps that stand for one Kubernetes structure are listed whole
    whole = {"resources", "crmWebhook.resources", "podSecurityContext", "containerSecurityContext"}

    def leaves(tree: dict[str, object], prefix: str = "") -> list[str]:
        out = []
        for key, value in tree.items():
            path = prefix + key
            if isinstance(value, dict) and value and path not in whole:
                out += leaves(value, path + ".")
            else:
                out.append(path)
        return out

    missing = [path for path in leaves(values) if f"| `{path}` |" not in readme]
    assert missing == []


def test_chart_readme_gives_every_bounded_processor_setting_its_range() -> None:
    readme = (CHART / "README.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = {}
    for key, spec in schema["properties"]["typing"]["properties"].items():
        if spec.get("type") != "integer" or "minimum" not in spec or "maximum" not in spec:
            continue
        row = next(line for line in readme.splitlines() if line.startswith(f"| `typing.{key}` |"))
        shown = f"{spec['minimum']}..{spec['maximum']}"
        if shown not in row:
            missing[key] = shown
    assert missing == {}, "the chart README does not give these ranges"


def readme_block_after(heading: str) -> list[str]:
    """The lines of the first ```sh block after `heading` in the README."""
    readme = (REPO / "README.md").read_text()
    block = readme.split(heading, 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    return block.splitlines()


def test_ci_runs_the_readme_s_checks_and_its_test_command_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    (test_command,) = readme_block_after("Run the tests")
    assert ci[-1] == test_command
    development = readme_block_after("## Development")
    checks = [
        step
        for line in development
        for step in line.split(" && ")
        if step.startswith((".venv/bin/ruff", ".venv/bin/mypy", ".venv/bin/hadolint"))
    ]
    assert len(checks) == 4, checks  # ruff check, ruff format, mypy, hadolint
    for step in checks:
        assert step in ci, f"{step!r} is not in .ci/run"


def test_dockerfile_runs_the_processor_as_non_root() -> None:
    assert 'ENTRYPOINT ["dumb-init", "--", "typing-processor"]' in DOCKERFILE
    assert 'CMD ["run"]' in DOCKERFILE
    assert re.search(r"^USER \d+", DOCKERFILE, flags=re.MULTILINE)


def _exec_form(instruction: str) -> list[str]:
    """The JSON list of the Dockerfile's `ENTRYPOINT` or `CMD`."""
    line = re.search(rf"^{instruction} (\[.*\])$", DOCKERFILE, flags=re.MULTILINE)
    assert line is not None, instruction
    return list(json.loads(line.group(1)))


def _status(pid: str) -> dict[str, str]:
    """The fields of a process's /proc status (empty once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _children(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []


def test_the_image_s_pid_1_passes_on_a_sigterm_that_comes_while_the_processor_starts(
    tmp_path: Path,
) -> None:
    """The image's command, run as PID 1 of a PID namespace of its own (as in a container).
    The kernel drops a signal PID 1 has not asked for, and the interpreter asks only after
    about a second of imports: a processor that was PID 1 lost a SIGTERM then, and the pod
    waited for its grace period's SIGKILL. PID 1 is an init that forwards signals: once it
    runs the processor, a SIGTERM stops the container at once."""
    if subprocess.run(["unshare", "--user", "--map-root-user", "--pid", "--fork", "true"],
                      capture_output=True, check=False).returncode != 0:  # fmt: skip
        pytest.skip("this machine cannot make a user and PID namespace (unshare)")
    bin_dir = Path(sys.executable).parent
    program, *arguments = _exec_form("ENTRYPOINT") + _exec_form("CMD")
    env = {
        **os.environ,
        **UNREACHED_ENV,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # --kill-child: the namespace's PID 1 dies with `unshare`, and every process in it with
    # that PID 1, so that a failed run leaves nothing behind
    namespace = [
        *("unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"),
        "--kill-child",
    ]
    container = subprocess.Popen(
        [*namespace, str(bin_dir / program), *arguments],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        pid_1 = None
        while time.monotonic() < deadline:  # polls /proc: nothing to wait on
            pid_1 = next(iter(_children(str(container.pid))), None)
            init = _status(pid_1) if pid_1 else {}
            if init.get("Name") not in (None, "unshare") and any(
                _status(child).get("Name") not in (None, init["Name"])
                for child in _children(pid_1 or "")
            ):
                break  # PID 1 has started the command (its child has exec'd it)
            time.sleep(0.005)  # the poll's interval, not a wait for the outcome
        else:
            pytest.fail("PID 1 never started a child: the processor itself is PID 1")
        assert pid_1 is not None
        os.kill(int(pid_1), signal.SIGTERM)
        # 0: the processor's own handler was in place; 143: the signal ended it while it
        # imported (nothing to drain yet)
        assert container.wait(timeout=10) in (0, 128 + signal.SIGTERM)
    finally:
        container.kill()
        container.wait()


def test_dockerfile_pins_its_base_by_digest_and_labels_the_image() -> None:
    args = dict(re.findall(r"^ARG (PYTHON_\w+)=(\S+)$", DOCKERFILE, flags=re.MULTILINE))
    assert re.fullmatch(r"3\.11\.\d+-slim", args["PYTHON_TAG"])
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", args["PYTHON_DIGEST"])
    assert args["PYTHON_IMAGE"] == "python:${PYTHON_TAG}@${PYTHON_DIGEST}"
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    labels = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", DOCKERFILE))
    assert {
        "org.opencontainers.image.title",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.source",
        "org.opencontainers.image.licenses",
        "org.opencontainers.image.base.name",
        "org.opencontainers.image.base.digest",
    } <= labels
    # every dependency checked by hash, and the code packaged by the pinned backend
    assert "--require-hashes --only-binary=:all: --requirement /src/constraints.txt" in DOCKERFILE
    assert "--no-deps --no-build-isolation /src" in DOCKERFILE


def test_constraints_pin_every_dependency_within_its_range_with_hashes() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    text = (REPO / "constraints.txt").read_text()
    assert "Generated by .ci/constraints" in text.splitlines()[1]
    pins = {}
    # one entry per pin: "name==version \" then its "--hash=sha256:..." lines
    for entry in text.replace("\\\n", " ").splitlines():
        if entry and not entry.startswith("#"):
            pin, *hashes = entry.split()
            name, _, version = pin.partition("==")
            assert version, f"not a pin: {pin}"
            assert hashes, f"{pin} has no hash"
            assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), pin
            pins[canonicalize_name(name)] = version
    wanted_by_image = (
        pyproject["project"]["dependencies"]
        + pyproject["project"]["optional-dependencies"]["image"]
        + pyproject["build-system"]["requires"]
    )
    for wanted in wanted_by_image:
        requirement = Requirement(wanted)
        version = pins.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(version), f"{requirement.name}=={version}"
    assert "h2" in pins  # httpx[http2]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def healthcheck_command() -> list[str]:
    match = re.search(r"HEALTHCHECK [^\n]*\\\n\s+CMD (\[.*\])$", DOCKERFILE, flags=re.MULTILINE)
    assert match is not None
    command: list[str] = json.loads(match.group(1))
    return command


async def run_healthcheck(port: int) -> int:
    argv = healthcheck_command()
    assert argv[0] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv[1:],
        env={"TYPING_HTTP_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_the_image_healthcheck_asks_healthz() -> None:
    endpoint = OpsEndpoint(Telemetry.disabled())
    async with endpoint.monitoring(), serve_in_background(endpoint.app) as listening:
        assert await run_healthcheck(listening.port) == 0
    # nothing listens: the container counts as unhealthy
    assert await run_healthcheck(free_port()) != 0
