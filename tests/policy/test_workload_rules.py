"""Rules that match KServe's LLM workloads: kinds, llm-d roles and places in a multi-node group."""

from __future__ import annotations

import re

import pytest
import yaml

from gpuguard.policy.loading import PolicyError, parse_policy
from gpuguard.policy.resolve import matching_rule
from gpuguard.policy.workload import Workload
from tests.conftest import ROOT, policy_with


def readme_rules() -> list[dict[str, object]]:
    """The rules example of the README's policy section."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(  rules:\n.*?)```", text, re.S)
    assert block is not None
    rules: list[dict[str, object]] = yaml.safe_load(block.group(1).replace("\n  ", "\n"))["rules"]
    return rules


@pytest.mark.parametrize(("workload", "expected"), [
    (Workload("LLMInferenceService", "m", "single", "prefill"), "prefill-on-a100"),
    (Workload("LLMInferenceService", "m", "leader", "prefill"), "prefill-on-a100"),
    (Workload("LLMInferenceService", "m", "worker", "decode", "ns/lws/k"), "multi-node-whole-gpus"),
    (Workload("InferenceService", "m", "leader", "", "ns/isvc/m"), "multi-node-whole-gpus"),
    (Workload("LLMInferenceService", "m", "single", "decode"), None),
    (None, None),
])
def test_the_readme_rules_match_as_the_readme_says(workload: Workload | None, expected: str | None) -> None:
    policy = policy_with(rules=readme_rules())
    rule = matching_rule(policy, namespace="llm-prod", runtime="vllm", labels={}, workload=workload)
    assert (rule.name if rule else None) == expected


@pytest.mark.parametrize(("match", "field"), [
    ({"roles": ["decoder"]}, "roles"),
    ({"nodeRoles": ["head"]}, "nodeRoles"),
    ({"kinds": ["LLMInferenceServices"]}, "kinds"),
])
def test_a_misspelt_kind_or_role_is_refused_naming_the_field(match: dict[str, list[str]], field: str) -> None:
    document = yaml.safe_load(yaml.safe_dump({"apiVersion": "gpuguard.io/v1", "kind": "GpuPolicy",
                                              "rules": [{"name": "r", "match": match}]}))
    with pytest.raises(PolicyError) as raised:
        parse_policy(yaml.safe_dump(document))
    assert field in str(raised.value)


def test_group_placement_is_on_by_default_with_the_nvlink_clique_as_topology() -> None:
    placement = policy_with().scheduling.group_placement
    assert placement.enabled and placement.topology_key == "nvidia.com/gpu.clique"
    changed = policy_with(scheduling={"groupPlacement": {"topologyKey": "topology.kubernetes.io/zone"}})
    assert changed.scheduling.group_placement.topology_key == "topology.kubernetes.io/zone"
