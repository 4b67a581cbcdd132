"""Render the chart with the real helm 3 binary and hand the objects to the tests.

helm is the pinned helm 3 that `.ci/run` installs into `.ci-cache/bin/` (see `.ci/install_helm.py`); the tests take
that one first, else `helm` on PATH, and fail (never skip) when there is none or it is not helm 3, so a CI without
helm cannot pass by testing nothing.
Renders are cached per (values files, --set, kube version, API versions): each scenario is rendered once per run.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gpuguard"
SCENARIOS = sorted(path.name for path in (CHART / "ci").glob("*-values.yaml"))
KUBE_VERSIONS = ("1.29.0", "1.37.0")
NAMESPACE = "gpuguard"
RELEASE = "gpuguard"
CRD_API_VERSIONS = ("cert-manager.io/v1", "monitoring.coreos.com/v1")
"""Passed as --api-versions, as a cluster with cert-manager and prometheus-operator would report them."""

Obj = dict[str, Any]


@functools.lru_cache(maxsize=1)
def helm_binary() -> str:
    pinned = ROOT / ".ci-cache" / "bin" / "helm"
    found = str(pinned) if os.access(pinned, os.X_OK) else shutil.which("helm")
    if found is None:
        pytest.fail(
            "helm 3 not found at .ci-cache/bin/helm or on PATH; install the pinned one with\n"
            "  python .ci/install_helm.py .venv/bin/python\n(.ci/run does this)",
            pytrace=False,
        )
    version = subprocess.run([found, "version", "--short"], capture_output=True, text=True, timeout=60).stdout
    if not version.startswith("v3."):
        pytest.fail(f"{found} is helm {version.strip() or '(unknown)'}; the chart tests need helm 3", pytrace=False)
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@dataclass(frozen=True)
class Rendered:
    """The objects of one `helm template`, with lookups the tests keep needing."""

    objects: tuple[Obj, ...]

    def of_kind(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        matches = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def names(self, kind: str) -> set[str]:
        return {obj["metadata"]["name"] for obj in self.of_kind(kind)}

    def workloads(self) -> Iterator[tuple[Obj, Obj]]:
        """(object, pod spec) for every Deployment, DaemonSet, Job, CronJob and Pod."""
        for obj in self.objects:
            spec = pod_spec(obj)
            if spec is not None:
                yield obj, spec


def pod_spec(obj: Obj) -> Obj | None:
    kind = obj["kind"]
    if kind in ("Deployment", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return obj["spec"]
    return None


def template_args(
    values: tuple[str, ...] = (), sets: tuple[str, ...] = (), kube_version: str = KUBE_VERSIONS[0]
) -> list[str]:
    """`values` are ci/ scenario names, or absolute paths of other values files."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
    for api in CRD_API_VERSIONS:
        args += ["--api-versions", api]
    for name in values:
        args += ["--values", str(CHART / "ci" / name)]
    for item in sets:
        args += ["--set", item]
    return args


@functools.lru_cache(maxsize=None)
def render(
    values: tuple[str, ...] = (), sets: tuple[str, ...] = (), kube_version: str = KUBE_VERSIONS[0],
    *, extra: str = "",
) -> Rendered:
    """`extra`: YAML of more values (for values --set cannot carry, such as a policy text with commas)."""
    result = _template(values, sets, kube_version, extra)
    assert result.returncode == 0, result.stderr
    return Rendered(tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc))


def render_error(*sets: str, values: tuple[str, ...] = (), extra: str = "") -> str:
    """The stderr of a render expected to fail (schema or validation.yaml)."""
    result = _template(values, sets, KUBE_VERSIONS[0], extra)
    assert result.returncode != 0, "the render should have failed"
    return result.stderr


def _template(
    values: tuple[str, ...], sets: tuple[str, ...], kube_version: str, extra: str
) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra_file:
        extra_file.write(extra)
        extra_file.flush()
        paths = (*values, extra_file.name) if extra else values
        return run_helm(*template_args(paths, sets, kube_version))


def load_values() -> Obj:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def render_with_existing_secret(tmp_path: Path, ca_bundle: str, *sets: str) -> Rendered:
    """Render as `helm upgrade` does once the Secret exists. `helm template` never reaches a cluster, so `lookup`
    always finds nothing there; a copy of the chart reads the looked-up Secret from a value instead."""
    chart = tmp_path / "gpuguard"
    shutil.copytree(CHART, chart)
    helpers = chart / "templates" / "webhook" / "_webhook.tpl"
    call = 'lookup "v1" "Secret" $ctx.Release.Namespace (include "gpuguard.webhookTlsSecret" $ctx)'
    assert call in helpers.read_text(), "the chart must look up the webhook's own TLS Secret"
    helpers.write_text(helpers.read_text().replace(call, "$ctx.Values.existingSecret"))
    (chart / "values.schema.json").unlink()
    args = ["template", "gpuguard", str(chart), "--namespace", NAMESPACE,
            "--set", f"existingSecret.data.ca\\.crt={ca_bundle}"]
    for item in sets:
        args += ["--set", item]
    result = run_helm(*args)
    assert result.returncode == 0, result.stderr
    return Rendered(tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc))
