"""`gpuguard mutate -f` and `gpuguard validate -f`: the webhook's decisions on manifests, as a command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

from tests.conftest import ROOT

EXAMPLES = ROOT / "examples" / "inferenceservices.yaml"


def gpuguard(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuguard", *args], cwd=ROOT, capture_output=True, text=True, input=stdin,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_mutate_prints_every_object_as_admitted_with_what_changed() -> None:
    result = gpuguard("mutate", "-f", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [d["kind"] for d in documents] == ["InferenceService"] * 5 + ["Pod"]
    pod = documents[-1]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["schedulerName"] == "gpuguard-scheduler"
    kubernetes_validate.validate(pod, "1.29.0", strict=True)
    assert "#   + predictor pods get: limits nvidia.com/mig-1g.10gb=1 on kserve-container" in result.stdout
    assert "#   + predictor pods get: nodeSelector nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3" in result.stdout


def test_validate_exits_1_and_names_the_bad_object_and_the_fix() -> None:
    result = gpuguard("validate", "-f", str(EXAMPLES))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "ok     InferenceService llm-prod/llama3-8b" in lines
    assert "DENIED InferenceService models/tiny-bert (rule defaults)" in lines
    assert any("nvidia.com/gpu limit '0.5' is not a whole number. Fix:" in line for line in lines)


def test_validate_exits_0_when_everything_is_fine_and_reads_stdin() -> None:
    good = EXAMPLES.read_text().split("# A bad request")[0]
    result = gpuguard("validate", "-f", "-", stdin=good)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("ok ") == 4


def test_validate_uses_the_given_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "examples" / "policy.yaml").read_text().replace("mode: enforce", "mode: warn"))
    result = gpuguard("validate", "-f", str(EXAMPLES), "--policy", str(policy))
    assert result.returncode == 1
    assert "WARN   InferenceService models/tiny-bert (rule defaults)" in result.stdout


def test_an_invalid_policy_is_reported_not_crashed_on(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nmode: sometimes\n")
    result = gpuguard("mutate", "-f", str(EXAMPLES), "--policy", str(policy))
    assert result.returncode == 2
    assert "mode: Input should be" in result.stderr
