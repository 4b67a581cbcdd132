"""`gpuguard policy check`: every mistake in one run, each at its line and column, with the spelling it probably meant."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpuguard.policy.loading import PolicyError, parse_policy
from gpuguard.policy.positions import Positions, parse_path
from gpuguard.policy.schema import keys_at, reference_markdown
from gpuguard.policy.suggest import did_you_mean
from tests.conftest import ROOT

MISTAKES = ROOT / "tests" / "data" / "policy-many-mistakes.yaml"
SOURCE = "tests/data/policy-many-mistakes.yaml"


def gpuguard(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuguard", *args], cwd=ROOT, capture_output=True, text=True, input=stdin,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_every_mistake_is_reported_in_one_run_each_at_its_line_and_column() -> None:
    result = gpuguard("policy", "check", SOURCE)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"{SOURCE}: 10 problems:"
    where = [line.split(": ", 2)[:2] for line in lines[1:]]
    assert where == [
        [f"  {SOURCE}:4:1", "mode"],
        [f"  {SOURCE}:6:27", "namespaces['sandbox-*'].limit"],
        [f"  {SOURCE}:10:29", "defaults.tolerations[0].operator"],
        [f"  {SOURCE}:11:3", "defaults.nodeSelectr"],
        [f"  {SOURCE}:15:11", "rules[0].gpu.count"],
        [f"  {SOURCE}:16:5", "rules[1].name"],
        [f"  {SOURCE}:17:11", "rules[1].gpu.migProfile"],
        [f"  {SOURCE}:19:11", "rules[2].gpu.migProfile"],
        [f"  {SOURCE}:22:42", "limits.allowedMigProfiles[2]"],
        [f"  {SOURCE}:24:3", "scheduling.maxGpuUtilization"],
    ], "schema errors and catalog checks come together, in file order, a rule's bad name hiding nothing else in it"


@pytest.mark.parametrize(
    ("path", "meant"),
    [
        ("mode", "did you mean 'enforce'?"),
        ("namespaces['sandbox-*'].limit", "did you mean 'limits'?"),
        ("defaults.tolerations[0].operator", "did you mean 'Exists'?"),
        ("defaults.nodeSelectr", "did you mean 'nodeSelector'?"),
        ("rules[1].name", "did you mean 'small'?"),
        ("rules[2].gpu.migProfile", "did you mean '1g.10gb'?"),
        ("limits.allowedMigProfiles[2]", "did you mean '3g.40gb'?"),
    ],
)
def test_misspelt_keys_values_and_profiles_get_a_did_you_mean(path: str, meant: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(MISTAKES.read_text())
    messages = {issue.path: issue.message for issue in caught.value.issues}
    assert meant in messages[path]


def test_a_profile_that_is_not_even_a_profile_name_is_matched_by_spelling() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nlimits: {allowedMigProfiles: [1g10gb]}\n")
    assert "did you mean '1g.10gb'?" in caught.value.issues[0].message


def test_an_unknown_key_with_no_close_match_lists_what_the_section_takes() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nscheduling: {zzz: 1}\n")
    message = caught.value.issues[0].message
    assert "this section takes: weights, maxGpuUtilization" in message and "did you mean" not in message


def test_a_check_about_a_broken_field_is_not_reported_against_its_default() -> None:
    text = "apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nlimits: {maxGpusPerPod: four}\nrules: [{name: a, gpu: {count: 9}}]\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert [issue.path for issue in caught.value.issues] == ["limits.maxGpusPerPod"], (
        "9 > the default 8 says nothing about the file, whose limit is unreadable"
    )


def test_a_policy_with_only_catalog_mistakes_still_gives_positions() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nrules:\n  - name: a\n    gpu: {migProfile: 1g.11gb}\n")
    issue = caught.value.issues[0]
    assert (issue.path, issue.line, issue.column) == ("rules[0].gpu.migProfile", 5, 11)


def test_positions_follow_anchors_and_merge_keys_to_where_the_value_is_written() -> None:
    text = "base: &b\n  mode: warn\nnamespaces:\n  team-a:\n    <<: *b\n    limits: {}\n"
    positions = Positions(text)
    assert positions.of(parse_path("namespaces['team-a'].mode")) == (2, 3)
    assert positions.of(parse_path("namespaces['team-a'].limits")) == (6, 5)
    assert positions.of(parse_path("namespaces['team-a'].limits.missing")) == (6, 5), "the deepest part that exists"
    assert Positions("a: [unclosed").of(("a",)) is None


def test_paths_print_and_parse_the_same_way() -> None:
    assert parse_path("namespaces['llm-*'].limits.allowedMigProfiles[2]") == (
        "namespaces", "llm-*", "limits", "allowedMigProfiles", 2)


def test_did_you_mean_says_nothing_when_nothing_is_close() -> None:
    assert did_you_mean("zzzz", ["mode", "limits"]) == ""
    assert did_you_mean("LIMITS", ["mode", "limits"]) == "; did you mean 'limits'?"


def test_the_schema_knows_the_keys_of_every_section() -> None:
    assert "migProfile" in keys_at(("rules", 3, "gpu"))
    assert "maxGpusPerPod" in keys_at(("namespaces", "any-*", "limits"))
    assert keys_at(("defaults", "nodeSelector")) == (), "a map of labels takes any key"


def test_the_committed_policy_reference_is_what_the_models_say() -> None:
    committed = (ROOT / "docs" / "policy-reference.md").read_text()
    assert committed == reference_markdown(), "regenerate it: gpuguard policy schema > docs/policy-reference.md"


def test_every_policy_key_is_documented_in_the_reference() -> None:
    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `")]
    assert len(rows) > 60
    undocumented = [row.split(" | ")[0] for row in rows if row.rstrip().endswith("|  |")]
    assert undocumented == [], "give each field a docstring in its model"


def test_policy_schema_prints_the_reference() -> None:
    result = gpuguard("policy", "schema")
    assert result.returncode == 0 and result.stdout == reference_markdown()


def test_policy_check_reads_standard_input() -> None:
    result = gpuguard("policy", "check", "-", stdin="apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nmod: warn\n")
    assert result.returncode == 1
    assert "standard input:3:1: mod: unknown field 'mod'; did you mean 'mode'?" in result.stderr


def test_a_rule_whose_name_stands_in_reports_no_duplicate_of_the_stand_in() -> None:
    text = "apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nrules: [{name: llm}, {name: LLM}, {name: x, gpu: {count: 9}}]\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert [issue.path for issue in caught.value.issues] == ["rules[1].name", "rules[2].gpu.count"]


def test_a_list_item_cut_out_does_not_shift_the_paths_of_those_after_it() -> None:
    text = ("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\n"
            "rules: [just-a-name, {name: b, gpu: {migProfile: 1g.11gb}}]\n")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert [issue.path for issue in caught.value.issues] == ["rules[0]", "rules[1].gpu.migProfile"]
