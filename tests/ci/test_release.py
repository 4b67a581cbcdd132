"""The release recipe, as far as it runs without a registry: the chart packaged by .ci/package_chart.py renders the
image by digest, the workflow is a valid GitHub workflow wired to the same scripts and helm, and the image's pinned
versions cover every runtime dependency. (The image build itself needs Docker and a base image from a registry;
.ci/image_recipe_without_docker.sh runs its Python steps on a plain machine.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.chart.helm import NAMESPACE, helm_binary, run_helm
from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"
CONSTRAINTS = ROOT / ".ci" / "image-constraints.txt"
DIGEST = "sha256:" + "0123456789abcdef" * 4


def package(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "package_chart.py"), *args, "--out", str(tmp_path),
                           "--helm", helm_binary()], capture_output=True, text=True, timeout=120)


def workflow() -> Any:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(job: str) -> list[dict[str, Any]]:
    return list(workflow()["jobs"][job]["steps"])


def test_the_packaged_chart_carries_the_release_version_and_pins_the_image_by_digest(tmp_path: Path) -> None:
    result = package(tmp_path, "v1.4.0", "--digest", DIGEST)
    assert result.returncode == 0, result.stdout + result.stderr
    archive = Path(result.stdout.strip().splitlines()[-1])
    assert archive == tmp_path / "gpuguard-1.4.0.tgz"
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        chart = yaml.safe_load(tar.extractfile("gpuguard/Chart.yaml").read())  # type: ignore[union-attr]
    assert (chart["version"], chart["appVersion"]) == ("1.4.0", "1.4.0")
    for name in ("files/mig-catalog.yaml", "files/grafana-dashboard.json", "values.schema.json"):
        assert members[f"gpuguard/{name}"].isfile(), name
    rendered = run_helm("template", "gpuguard", str(archive), "--namespace", NAMESPACE)
    assert rendered.returncode == 0, rendered.stderr
    images = set(re.findall(r"image: (\S+)", rendered.stdout))
    assert f"ghcr.io/gpuguard/gpuguard@{DIGEST}" in images
    assert not {i for i in images if "gpuguard/gpuguard" in i} - {f"ghcr.io/gpuguard/gpuguard@{DIGEST}"}


def test_a_fork_packages_for_its_own_registry(tmp_path: Path) -> None:
    result = package(tmp_path, "0.2.0-rc.1", "--registry", "registry.example:5000", "--repository", "me/gpuguard")
    assert result.returncode == 0, result.stderr
    rendered = run_helm("template", "gpuguard", str(tmp_path / "gpuguard-0.2.0-rc.1.tgz"), "--namespace", NAMESPACE)
    assert "image: registry.example:5000/me/gpuguard:0.2.0-rc.1" in rendered.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("1.4",), "is not a semantic version"),
    (("1.4.0", "--digest", "sha256:abc"), "is not sha256: and 64 lower-case hex digits"),
])
def test_packaging_refuses_a_bad_version_or_digest(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = package(tmp_path, *args)
    assert result.returncode != 0 and message in result.stderr
    assert not list(tmp_path.iterdir())


def test_the_release_workflow_is_a_valid_github_workflow() -> None:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker, "check-jsonschema is a test dependency (pyproject.toml)"
    result = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_would_catch_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "release.yaml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04", 1))
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker
    result = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", str(broken)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


def test_the_workflow_tests_on_debian_12_then_builds_then_packages_with_the_digest() -> None:
    jobs = workflow()["jobs"]
    assert jobs["test"]["container"] == "debian:bookworm"
    assert any(step.get("run") == "bash .ci/run" for step in steps("test"))
    assert jobs["image"]["needs"] == "test" and jobs["chart"]["needs"] == "image"
    build = next(step for step in steps("image") if step.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert "rewrite-timestamp=true" in build["with"]["outputs"]
    packaging_step = next(step for step in steps("chart") if ".ci/package_chart.py" in step.get("run", ""))
    assert "needs.image.outputs.digest" in packaging_step["env"]["DIGEST"]
    assert "--digest" in packaging_step["run"]


def test_the_workflow_uses_the_helm_the_tests_use() -> None:
    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        import install_helm
    finally:
        sys.path.remove(str(ROOT / ".ci"))
    setup = next(step for step in steps("chart") if step.get("uses", "").startswith("azure/setup-helm"))
    assert setup["with"]["version"] == install_helm.VERSION


def test_the_image_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, dependencies):
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{name} is not pinned: run .venv/bin/python .ci/lock_image.py"
        assert dependency.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {dependency.specifier}"


def test_the_dockerfile_builds_with_the_constraints_and_copies_only_what_dockerignore_lets_in() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PIP_CONSTRAINT=/src/.ci/image-constraints.txt" in dockerfile
    assert "--no-index" in dockerfile
    admitted = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {source for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line
              for source in line.split()[1:-1]}
    assert copied and copied <= admitted, copied - admitted
    for source in copied:
        assert (ROOT / source).exists(), source
