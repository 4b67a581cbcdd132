"""`gpuguard mutate -f` and `gpuguard validate -f`: the webhook's decisions on manifests, as a command.

Every test runs the real console entry point in a subprocess, so the exit status and output are what a user sees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

EXAMPLES = ROOT / "examples" / "inferenceservices.yaml"
OFFLINE = ROOT / "tests" / "data" / "offline"


def gpuguard(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuguard", *args], cwd=ROOT, capture_output=True, text=True, input=stdin,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_mutate_prints_every_object_as_admitted_with_what_changed() -> None:
    result = gpuguard("mutate", "-f", str(EXAMPLES))
    assert result.returncode == 1, "tiny-bert would be denied, and mutate says so as validate does"
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
    assert "ok     InferenceService llm-prod/llama3-8b (rule llm)" in lines
    assert "DENIED InferenceService models/tiny-bert (rule defaults)" in lines
    assert any("nvidia.com/gpu limit '0.5' is not a whole number. Fix:" in line for line in lines)


def test_validate_exits_0_when_everything_is_fine_and_reads_stdin() -> None:
    good = EXAMPLES.read_text().split("# A bad request")[0]
    result = gpuguard("validate", "-f", "-", stdin=good)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("ok ") == 4


def test_validate_uses_the_given_policy_and_a_warned_object_is_admitted(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "examples" / "policy.yaml").read_text().replace("mode: enforce", "mode: warn"))
    result = gpuguard("validate", "-f", str(EXAMPLES), "--policy", str(policy))
    assert result.returncode == 0, "in warn mode the webhook admits it, with warnings"
    assert "WARN   InferenceService models/tiny-bert (rule defaults)" in result.stdout
    assert result.stdout.splitlines()[-1] == "6 objects: 5 admitted, 1 warned"


def test_an_invalid_policy_is_reported_not_crashed_on(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nmode: sometimes\n")
    result = gpuguard("mutate", "-f", str(EXAMPLES), "--policy", str(policy))
    assert result.returncode == 2
    assert "mode: Input should be" in result.stderr


def report(*args: str, stdin: str | None = None) -> tuple[int, dict[str, Any]]:
    result = gpuguard(*args, "-o", "json", stdin=stdin)
    assert result.returncode in (0, 1), result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["exitCode"] == result.returncode
    return result.returncode, document


def decisions(document: dict[str, Any]) -> dict[str, str]:
    return {f"{item['namespace']}/{item['name']}": item["decision"] for item in document["items"]}


@pytest.mark.parametrize("command", ["validate", "mutate"])
def test_each_item_of_a_list_is_judged_and_a_denied_item_fails_the_run(command: str) -> None:
    code, document = report(command, "-f", str(OFFLINE / "list.yaml"))
    assert code == 1
    assert decisions(document) == {"models/fine": "admitted", "models/greedy": "denied"}
    greedy = document["items"][1]
    assert greedy["document"] == "1.items[1]"
    assert "asks for 8 GPUs in all" in greedy["problems"][0]["message"]


def test_several_files_are_all_checked_in_order_with_stdin_among_them() -> None:
    stdin = (OFFLINE / "tree" / "a.yaml").read_text()
    code, document = report("validate", "-f", str(OFFLINE / "list.yaml"), "-f", "-",
                            "-f", str(OFFLINE / "bad-annotations.yaml"), stdin=stdin)
    assert code == 1
    assert list(decisions(document)) == ["models/fine", "models/greedy", "models/from-a", "models/small-profile",
                                         "models/count-in-words", "models/typo", "models/small-on-a30"]
    assert [item["source"] for item in document["items"]][2] == "-"


def test_a_directory_is_read_recursively_for_yaml_and_json_files_like_kubectl() -> None:
    result = gpuguard("validate", "-f", str(OFFLINE / "tree"))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ok     InferenceService models/from-a (rule cpu-only-servers)"
    assert lines[1] == "DENIED InferenceService models/from-b (rule defaults)", "a typed list in a .json file, nested"
    assert lines[3].startswith("skip   Pod models/not-kserve: not a KServe predictor pod")
    assert lines[-1] == "3 objects: 1 admitted, 1 denied, 1 skipped", "README.md is not read"


def test_kinds_and_versions_the_webhook_never_sees_are_reported_as_skipped_not_ok() -> None:
    result = gpuguard("validate", "-f", str(OFFLINE / "other-kinds.yaml"))
    assert result.returncode == 0, "the webhook admits them unchecked; the output must say so"
    lines = result.stdout.splitlines()
    assert not any(line.startswith("ok") for line in lines)
    assert lines[0].startswith("skip   KFService models/legacy: serving.kubeflow.org/v1alpha2 KFService is not checked")
    assert lines[1].startswith("skip   InferenceService models/kfserving: serving.kubeflow.org/v1beta1")
    assert "convert it to that version" in lines[1]
    assert lines[2].startswith("skip   LLMInferenceService models/llm: not checked")
    assert lines[-1] == "4 objects: 4 skipped"


@pytest.mark.parametrize(
    ("content", "name", "says"),
    [
        ('"just a string"\n', "string.yaml", "document 1 is the string 'just a string', not a Kubernetes object"),
        ("---\n---\n", "dashes.yaml", "no Kubernetes objects in it"),
        ("", "empty.yaml", "no Kubernetes objects in it"),
        ("- a\n- b\n", "sequence.yaml", "document 1 is a list, not a Kubernetes object"),
        ("metadata: {name: x}\n", "nokind.yaml", "document 1 has no kind"),
        ("kind: List\nitems: [{kind: Pod, apiVersion: v1}, 7]\n", "list.yaml", "document 1.items[1] is a int"),
        ("kind: [unclosed\n", "broken.yaml", "not valid YAML: line 2, column 1"),
        ("{", "broken.json", "not valid JSON: line 1"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "mutate"])
def test_unusable_input_is_an_error_with_exit_2_never_a_pass(
    tmp_path: Path, command: str, content: str, name: str, says: str
) -> None:
    (tmp_path / name).write_text(content)
    result = gpuguard(command, "-f", str(tmp_path / name))
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert f"{tmp_path / name}: " in result.stderr and says in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-f", "/nonexistent/x.yaml"], "/nonexistent/x.yaml: no such file or directory"),
        (["-f", "-", "-f", "-"], "standard input (-) can be given only once"),
    ],
)
def test_paths_that_cannot_be_read_are_errors(args: list[str], says: str) -> None:
    result = gpuguard("validate", *args, stdin="")
    assert result.returncode == 2 and says in result.stderr


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("kind: Pod\n")
    result = gpuguard("validate", "-f", str(tmp_path))
    assert result.returncode == 2 and "a directory with no .yaml, .yml, .json files" in result.stderr


def test_mutate_json_carries_each_admitted_object_and_mutate_fails_like_validate() -> None:
    code, document = report("mutate", "-f", str(EXAMPLES))
    assert code == 1, "the webhook would refuse tiny-bert"
    pod = document["items"][-1]["object"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert document["summary"] == {"objects": 6, "admitted": 5, "denied": 1, "warned": 0, "audited": 0, "skipped": 0}


def _said(text: str, *, headline: str, indent: str) -> dict[str, list[str]]:
    """Each object's warning (`! `) and problem (`- `) lines, keyed by its `Kind namespace/name`."""
    said: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith((f"{indent}! ", f"{indent}- ")):
            said.setdefault(current, []).append(line.removeprefix(indent))
        elif line.startswith(headline):
            current = " ".join(line.removeprefix(headline).split()[1:3])
    return said


@pytest.mark.parametrize("manifest", [EXAMPLES, OFFLINE / "bad-annotations.yaml", OFFLINE / "list.yaml"])
def test_mutate_shows_every_warning_and_problem_validate_gives_for_the_same_object(manifest: Path) -> None:
    validated = gpuguard("validate", "-f", str(manifest))
    mutated = gpuguard("mutate", "-f", str(manifest))
    assert validated.returncode == mutated.returncode
    from_validate = _said(validated.stdout, headline="", indent="       ")
    assert from_validate, "each of these manifests has something to say"
    assert _said(mutated.stdout, headline="# gpuguard: ", indent="#   ") == from_validate
    _, as_validated = report("validate", "-f", str(manifest))
    _, as_mutated = report("mutate", "-f", str(manifest))
    assert [i["messages"] for i in as_mutated["items"]] == [i["messages"] for i in as_validated["items"]]


@pytest.mark.parametrize(
    ("name", "warning"),
    [
        ("small-profile", "annotation gpuguard.io/mig-profile: MIG profile '1g.5gb' is not allowed here"),
        ("count-in-words", "annotation gpuguard.io/gpu-count: 'two' is not a whole number of GPUs"),
        ("typo", "'gpuguard.io/gpu-cout' is not one gpuguard reads and was ignored; did you mean gpuguard.io/gpu-count?"),
    ],
)
def test_mutate_warns_about_bad_override_annotations(name: str, warning: str) -> None:
    result = gpuguard("mutate", "-f", str(OFFLINE / "bad-annotations.yaml"))
    block = result.stdout.split(f"InferenceService models/{name}")[1].split("\napiVersion")[0]
    assert warning in block


def test_an_inferenceservice_is_refused_when_its_pods_would_be() -> None:
    _, document = report("validate", "-f", str(OFFLINE / "bad-annotations.yaml"))
    pinned = next(item for item in document["items"] if item["name"] == "small-on-a30")
    assert pinned["decision"] == "denied" and pinned["rule"] == "small-models-on-mig"
    assert "nvidia.com/mig-1g.10gb does not exist on NVIDIA-A30 (A30)" in pinned["problems"][0]["message"]
