"""The policy ConfigMap: the documented example by default, valid in every scenario, and reloadable without restarts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuguard.cli import main
from gpuguard.policy.loading import default_policy, parse_policy
from tests.chart.helm import (
    ROOT,
    SCENARIOS,
    Obj,
    Rendered,
    load_values,
    render,
    run_helm,
    template_args,
)

POLICY_CONFIGMAP = "gpuguard-policy"
DEFAULT_POLICY_FILE = ROOT / "gpuguard" / "policy" / "default-policy.yaml"


def policy_text(rendered: Rendered) -> str:
    return str(rendered.get("ConfigMap", POLICY_CONFIGMAP)["data"]["policy.yaml"])


def test_the_default_policy_is_the_documented_example_line_for_line() -> None:
    lines = DEFAULT_POLICY_FILE.read_text().splitlines()
    assert lines[0].startswith("#"), "default-policy.yaml opens with one comment line, then the documented example"
    assert load_values()["policy"].splitlines() == lines[1:]
    assert parse_policy(load_values()["policy"]) == default_policy()


def test_the_configmap_carries_the_policy_unchanged(default_render: Rendered) -> None:
    assert policy_text(default_render) == load_values()["policy"]


@pytest.mark.parametrize("values", [(), *((s,) for s in SCENARIOS)], ids=["defaults", *SCENARIOS])
def test_the_rendered_policy_passes_gpuguard_policy_check(values: tuple[str, ...], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`gpuguard policy check FILE`, in this process (the pre-install Job tests below run it as a program)."""
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(render(values)))
    code = main(["policy", "check", str(path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "valid GpuPolicy" in captured.out


def gpuguard_containers(rendered: Rendered) -> list[tuple[str, Obj, Obj]]:
    """(workload name, pod spec, container) for every container that runs a gpuguard service with a policy."""
    found = []
    for obj, spec in rendered.workloads():
        for container in spec["containers"]:
            if any(str(a).startswith("--policy=") for a in container.get("args", [])):
                found.append((obj["metadata"]["name"], spec, container))
    return found


@pytest.mark.parametrize("values", [(), ("agent-off-values.yaml",)])
def test_every_service_reads_the_policy_from_the_whole_configmap_directory(values: tuple[str, ...]) -> None:
    rendered = render(values)
    containers = gpuguard_containers(rendered)
    expected = {"webhook", "extender"} | ({"agent"} if not values else set())
    assert {c["name"] for _, _, c in containers} == expected
    for workload, spec, container in containers:
        volume = next(v for v in spec["volumes"] if v.get("configMap", {}).get("name") == POLICY_CONFIGMAP)
        assert "items" not in volume["configMap"], f"{workload}: mount the whole ConfigMap"
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert "subPath" not in mount, f"{workload}: kubelet never updates subPath mounts; the policy would not reload"
        policy = next(a for a in container["args"] if a.startswith("--policy=")).split("=", 1)[1]
        assert policy == f"{mount['mountPath']}/policy.yaml"


def test_a_policy_edit_changes_the_configmap_and_restarts_no_gpuguard_pod() -> None:
    edited = load_values()["policy"].replace("mode: enforce", "mode: warn")
    before, after = render(), render(extra=yaml.safe_dump({"policy": edited}))
    assert policy_text(after) != policy_text(before)
    for obj in before.objects:
        if obj["kind"] in ("Deployment", "DaemonSet", "CronJob"):  # not the hook Jobs: they run once per upgrade
            same = after.get(obj["kind"], obj["metadata"]["name"])
            assert same["spec"] == obj["spec"], f"{obj['kind']} {obj['metadata']['name']} would roll its pods"


def test_a_policy_file_can_be_handed_to_helm_as_it_is_with_set_file(tmp_path: Path) -> None:
    """The README's way to install your own policy: `--set-file policy=FILE`."""
    path = tmp_path / "my-policy.yaml"
    path.write_text(DEFAULT_POLICY_FILE.read_text().replace("mode: enforce", "mode: audit"))
    result = run_helm(*template_args(), "--set-file", f"policy={path}")
    assert result.returncode == 0, result.stderr
    configmap = next(d for d in yaml.safe_load_all(result.stdout) if d and d["metadata"]["name"] == POLICY_CONFIGMAP)
    assert configmap["data"]["policy.yaml"] == path.read_text().strip() + "\n"
    assert parse_policy(configmap["data"]["policy.yaml"]).mode == "audit"


def run_policy_check_job(rendered: Rendered, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the pre-install Job's container command here, with `gpuguard` on PATH meaning this checkout's CLI."""
    job = rendered.get("Job", "gpuguard-policy-check")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    shim = tmp_path / "bin" / "gpuguard"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gpuguard "$@"\n')
    shim.chmod(0o755)
    env = {e["name"]: e["value"] for e in container["env"]}
    env |= {"PATH": f"{shim.parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(container["command"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_pre_install_check_passes_a_good_policy(default_render: Rendered, tmp_path: Path) -> None:
    job = default_render.get("Job", "gpuguard-policy-check")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    result = run_policy_check_job(default_render, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "standard input: valid GpuPolicy (3 rules, mode enforce)"


def test_the_pre_install_check_fails_the_install_on_a_broken_policy_naming_the_field(tmp_path: Path) -> None:
    broken = load_values()["policy"].replace("maxGpusPerPod: 4", "maxGpusPerPod: many")
    result = run_policy_check_job(render(extra=yaml.safe_dump({"policy": broken})), tmp_path)
    assert result.returncode == 1
    assert "limits.maxGpusPerPod" in result.stderr
