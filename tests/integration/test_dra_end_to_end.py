"""On a DRA cluster modelled in `--cluster-state`: a plain InferenceService gets a claim from the policy, its pod
passes the extender's filter on a DRA node and is scored by fit and utilization, and `gpuguard dra templates`
prints the valid templates that claim comes from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpuguard.cli import main
from gpuguard.contracts.extender import parse_args
from gpuguard.policy import inferenceservice
from gpuguard.policy.admission import admit
from gpuguard.policy.gpustate import GpuSample, NodeUtilization
from gpuguard.policy.loading import parse_policy
from scheduler_ext.extender import decide_filter_names, decide_priorities_names
from tests.extender.test_dra import NOW, SCHEDULING, loaded
from tests.webhook.test_dra_claims import DRA_VERSIONS

POLICY = """\
apiVersion: gpuguard.io/v1
kind: GpuPolicy
namespaces:
  models: {allocation: dra}
defaults:
  gpu: {count: 1}
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  schedulerName: gpuguard-scheduler
rules:
  - name: small
    match: {labels: {gpuguard.io/model-size: small}}
    gpu: {migProfile: 1g.10gb}
"""
ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "sst2", "namespace": "models", "labels": {"gpuguard.io/model-size": "small"}},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": "hf://distilbert/sst2"}}},
}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def printed_templates(policy_file: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["dra", "templates", "--policy", str(policy_file), "--namespace", "models"]) == 0
    return [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]


def test_gpuguard_dra_templates_prints_valid_templates(policy_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    templates = printed_templates(policy_file, capsys)
    assert [t["metadata"]["labels"]["gpuguard.io/gpu-shape"] for t in templates] == ["mig-1g-10gb", "1"]
    for version in DRA_VERSIONS:
        for template in templates:
            kubernetes_validate.validate(template, version, strict=True)


def test_a_namespace_without_dra_gets_no_templates(policy_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dra", "templates", "--policy", str(policy_file), "--namespace", "elsewhere"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no pod in namespace elsewhere" in captured.err


def test_a_broken_policy_exits_1_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace("models: {allocation: dra}", "models: {allocation: claims}"))
    assert main(["dra", "templates", "--policy", str(broken), "-n", "models"]) == 1
    assert "namespaces.models.allocation" in capsys.readouterr().err


def test_an_inferenceservice_gets_a_claim_that_the_extender_places_on_a_dra_node(
    policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    templates = printed_templates(policy_file, capsys)
    admitted = admit(inferenceservice.predictor_pod(ISVC), parse_policy(POLICY), namespace="models")
    assert admitted.problems == ()
    pod = admitted.pod
    (entry,) = pod["spec"]["resourceClaims"]
    template = next(t for t in templates if t["metadata"]["name"] == entry["resourceClaimTemplateName"])

    store = loaded()  # tests/data/extender/dra-cluster.json
    store.upsert_dra("ResourceClaimTemplate", template)
    pod["metadata"].update(name="sst2-predictor-00001-deployment-7c9d8-abcde", namespace="models")  # as bound
    args = parse_args(json.dumps({"Pod": pod, "NodeNames": ["dra-h100-0", "dra-h100-1", "dra-a100-0"]}).encode())
    busy = store.state("dra-h100-0")
    assert busy is not None
    hot = {"dra-h100-0": NodeUtilization((GpuSample(busy.mig_gpus[0].uuid, 99.0, NOW, mig=True),))}
    result = decide_filter_names(args, store.index, utilization=hot, scheduling=SCHEDULING, now=NOW,
                                 claims=store.claims).result
    assert result.node_names == ["dra-h100-1", "dra-a100-0"]
    assert list(result.failed_and_unresolvable_nodes) == ["dra-h100-0"]  # no eviction lowers the samples
    _, scores = decide_priorities_names(args, store.index, utilization=hot, scheduling=SCHEDULING, now=NOW,
                                        claims=store.claims)
    assert scores[1] > 0 and scores[2] == 0  # a free 1g.10gb on dra-h100-1; none on the A100 node
