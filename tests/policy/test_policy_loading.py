"""Policy v1: the documented example loads unchanged, and every mistake is reported with its field path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuguard.policy.loading import PolicyError, default_policy_text, parse_policy
from gpuguard.policy.model import parse_duration
from gpuguard.policy.resolve import namespace_mode_and_limits
from tests.conftest import ROOT


def test_the_documented_example_loads_and_means_what_its_comments_say() -> None:
    policy = parse_policy(default_policy_text())
    assert policy.mode == "enforce"
    assert namespace_mode_and_limits(policy, "sandbox-bob")[0] == "warn"
    assert namespace_mode_and_limits(policy, "models")[0] == "enforce"
    assert policy.defaults.gpu.count == 1
    assert policy.defaults.scheduler_name == "gpuguard-scheduler"
    assert [r.name for r in policy.rules] == ["llm", "cpu-only-servers", "small-models-on-mig"]
    assert policy.rules[1].gpu is not None and policy.rules[1].gpu.count == 0
    assert policy.rules[1].match.runtimes == ("sklearn", "lightgbm", "pmml", "xgboost")
    assert policy.rules[2].gpu is not None and policy.rules[2].gpu.mig_profile == "1g.10gb"
    assert policy.rules[2].match.labels == {"gpuguard.io/model-size": "small"}
    assert policy.limits.max_gpus_per_pod == 4
    assert policy.scheduling.metrics_max_age == 120.0
    assert policy.time_slicing.nodes[0].replicas == 4
    assert policy.user_overrides == ("gpu-count", "mig-profile", "gpu-product", "sharing")


def test_the_shipped_example_file_is_the_embedded_default() -> None:
    shipped = yaml.safe_load((ROOT / "examples" / "policy.yaml").read_text())
    assert shipped == yaml.safe_load(default_policy_text())


def test_a_minimal_policy_needs_only_version_and_kind() -> None:
    policy = parse_policy("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\n")
    assert policy.mode == "enforce"
    assert policy.rules == ()
    assert policy.user_overrides == ()


def _with(**changes: object) -> str:
    document = yaml.safe_load(default_policy_text())
    document.update(changes)
    return yaml.safe_dump(document)


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (_with(apiVersion="gpuguard.io/v2"), "apiVersion", "this gpuguard reads gpuguard.io/v1"),
        (_with(mode="block"), "mode", "'enforce', 'warn' or 'audit'"),
        (_with(modes="warn"), "modes", "unknown field"),
        (_with(namespaces={"team-*": {"mode": "loud"}}), "namespaces['team-*'].mode", "got 'loud'"),
        (_with(defaults={"gpu": {"count": 1, "migProfile": "1g.10gb"}}), "defaults.gpu", "exactly one of"),
        (_with(defaults={"tolerations": [{"key": "a", "operator": "Exists", "value": "x"}]}),
         "defaults.tolerations[0]", "must not set value"),
        (_with(rules=[{"name": "a", "gpu": {"migProfile": "1g.11gb"}}]), "rules[0].gpu.migProfile",
         "unknown MIG profile '1g.11gb'"),
        (_with(rules=[{"name": "a", "gpu": {"migProfile": "1g.5gb"}}]), "rules[0].gpu.migProfile",
         "not in limits.allowedMigProfiles"),
        (_with(rules=[{"name": "a", "gpu": {"migProfile": "1g.10gb"},
                       "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"}}]),
         "rules[0].gpu.migProfile", "does not exist on NVIDIA-H200"),
        (_with(rules=[{"name": "a", "gpu": {"count": 8}}]), "rules[0].gpu.count", "exceeds limits.maxGpusPerPod"),
        (_with(rules=[{"name": "a"}, {"name": "a"}]), "rules[1].name", "duplicate rule name"),
        (_with(rules=[{"name": "a", "match": {"runtimes": ["tensorrt-llm"]}}]), "rules[0].match.runtimes[0]",
         "'triton'"),
        (_with(limits={"allowedMigProfiles": ["9g.9gb"]}), "limits.allowedMigProfiles[0]", "unknown MIG profile"),
        (_with(userOverrides=["gpu-colour"]), "userOverrides[0]", "'gpu-count'"),
        (_with(scheduling={"metricsMaxAge": "two minutes"}), "scheduling.metricsMaxAge", "write it like 120s"),
        (_with(scheduling={"maxGpuUtilization": 150}), "scheduling.maxGpuUtilization", "less than or equal to 100"),
        (_with(timeSlicing={"nodes": [{"match": {"nodeLabels": {}}, "replicas": 1}]}),
         "timeSlicing.nodes[0].replicas", "must be at least 2"),
        ("- just\n- a list\n", "", "must be a mapping"),
        ("mode: [unclosed\n", "", "not valid YAML: line"),
        ("", "", "the policy is empty"),
    ],
)
def test_each_mistake_is_reported_at_its_field_path(text: str, path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    matching = [i for i in caught.value.issues if i.path == path]
    assert matching, [str(i) for i in caught.value.issues]
    assert fragment in matching[0].message


def test_every_error_is_reported_not_only_the_first() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(_with(mode="x", modes="y", limits={"maxGpusPerPod": 0}))
    assert {i.path for i in caught.value.issues} == {"mode", "modes", "limits.maxGpusPerPod"}


@pytest.mark.parametrize(
    ("text", "seconds"), [("120s", 120.0), ("2m", 120.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), (45, 45.0)]
)
def test_durations_are_read_like_kubernetes_writes_them(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuguard", "policy", "check", str(path)],
        cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_policy_check_accepts_the_example() -> None:
    result = _check(ROOT / "examples" / "policy.yaml")
    assert result.returncode == 0, result.stderr
    assert "valid GpuPolicy" in result.stdout


def test_policy_check_prints_every_error_with_its_path_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(_with(mode="x", timeSlicing={"nodes": [{"match": {"nodeLabels": {}}, "replicas": 1}]}))
    result = _check(bad)
    assert result.returncode == 1
    assert "2 problems" in result.stderr
    assert ": mode: Input should be 'enforce', 'warn' or 'audit' (got 'x')" in result.stderr
    assert ": timeSlicing.nodes[0].replicas: replicas is 1, must be at least 2" in result.stderr
