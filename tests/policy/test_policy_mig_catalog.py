"""The policy's `migCatalog` key: GPU models an admin adds to (or replaces in) gpuguard's MIG catalog, validated like
the shipped catalog file, and honoured by the policy's own semantic checks."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuguard.policy import mig
from gpuguard.policy.loading import PolicyError, parse_policy
from tests.conftest import DATA, ROOT

BASE: dict[str, Any] = yaml.safe_load((DATA / "policy-mig-models.yaml").read_text())


def policy_text(**changes: Any) -> str:
    document = copy.deepcopy(BASE)
    document.update(changes)
    return yaml.safe_dump(document)


def with_model(**changes: Any) -> str:
    model = {**BASE["migCatalog"]["models"][0], **changes}
    return policy_text(migCatalog={"models": [model]})


def next_gpu_rule(profile: str, product: str = "NVIDIA-Next-GPU") -> list[dict[str, Any]]:
    return [{"name": "next", "gpu": {"migProfile": profile}, "nodeSelector": {"nvidia.com/gpu.product": product}}]


def test_an_added_model_makes_its_profiles_known_to_rules_and_limits() -> None:
    policy = parse_policy(policy_text(rules=next_gpu_rule("1g.25gb"), limits={"allowedMigProfiles": ["1g.25gb"]}))
    model = policy.catalog.model_for_product("NVIDIA-Next-GPU")
    assert model is not None and model.name == "NEXT-GPU"
    assert policy.catalog.knows("3g.100gb") and not mig.BUILTIN.knows("3g.100gb")


def test_without_the_entry_the_same_profile_is_refused_with_how_to_add_it() -> None:
    document = {k: v for k, v in BASE.items() if k != "migCatalog"}
    with pytest.raises(PolicyError) as caught:
        parse_policy(yaml.safe_dump({**document, "limits": {"allowedMigProfiles": ["1g.25gb"]}}))
    (issue,) = caught.value.issues
    assert issue.path == "limits.allowedMigProfiles[0]"
    assert "unknown MIG profile '1g.25gb'" in issue.message and "migCatalog.models" in issue.message


def test_a_rule_is_checked_against_the_added_models_own_profiles() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_text(rules=next_gpu_rule("1g.23gb")))
    (issue,) = caught.value.issues
    assert issue.path == "rules[0].gpu.migProfile"
    assert "does not exist on NVIDIA-Next-GPU (NEXT-GPU); it offers 1g.25gb, 3g.100gb, 7g.200gb" in issue.message


def test_an_entry_named_like_a_shipped_model_replaces_it() -> None:
    h100 = {**BASE["migCatalog"]["models"][0], "name": "H100-80GB", "products": ["NVIDIA-H100-80GB-HBM3"],
            "memoryGb": 80, "profiles": [{"name": "3g.40gb", "memorySlices": 4, "maxCount": 2, "starts": [0, 4]}]}
    text = policy_text(migCatalog={"models": [h100]}, rules=next_gpu_rule("1g.10gb", "NVIDIA-H100-80GB-HBM3"))
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert "it offers 3g.40gb" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (with_model(profiles=[{"name": "1g.26gb", "memorySlices": 1, "maxCount": 7, "starts": [0]}]),
         "migCatalog.models[0]", "1/8 of 200 GB is 25 GB, not 26: fix memorySlices or the name"),
        (with_model(profiles=[{"name": "3g.100gb", "memorySlices": 4, "maxCount": 2, "starts": [0, 2]}]),
         "migCatalog.models[0]", "cannot start at 2"),
        (with_model(products=["NVIDIA Next GPU"]), "migCatalog.models[0]", "GFD would write 'NVIDIA-Next-GPU'"),
        (with_model(profiles=[{"name": "1g.25gb", "maxCount": 7, "starts": [0]}]),
         "migCatalog.models[0].profiles[0].memorySlices", "required field is missing"),
        (with_model(profiles=[{"name": "one slice", "memorySlices": 1, "maxCount": 1, "starts": [0]}]),
         "migCatalog.models[0].profiles[0].name", "should match pattern"),
        (with_model(colour="green"), "migCatalog.models[0].colour", "unknown field"),
        (policy_text(migCatalog={"models": [BASE["migCatalog"]["models"][0]] * 2}), "migCatalog",
         "model name 'NEXT-GPU' is listed more than once"),
    ],
)
def test_a_broken_entry_is_refused_at_its_field_path(text: str, path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    by_path = {issue.path: issue.message for issue in caught.value.issues}
    assert fragment in by_path.get(path, ""), by_path


def test_policy_check_names_the_broken_entry_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(with_model(memorySlices=9))
    result = subprocess.run([sys.executable, "-m", "gpuguard", "policy", "check", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "migCatalog.models[0]: profiles[0] (1g.25gb): 1/9 of 200 GB is 22 GB, not 25" in result.stderr


def test_the_readmes_example_entry_loads() -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("  ```yaml\n  migCatalog:")[1].split("  ```")[0]
    document = yaml.safe_load("migCatalog:" + snippet)
    policy = parse_policy(yaml.safe_dump({"apiVersion": "gpuguard.io/v1", "kind": "GpuPolicy", **document}))
    assert policy.catalog.model_for_product("NVIDIA-Next-GPU") is not None
