"""Values: every key documented and in the schema; wrong types, enums and impossible combinations refused early,
with a message that names the value and the fix."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, load_values, render, render_error, run_helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
FREE_FORM = ("resources", "podSecurityContext", "securityContext", "labels", "issuerRef")
"""Maps passed through to Kubernetes as they are: one value each, documented and typed as a whole."""
TEMPLATES = "\n".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())


def leaves(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the values that are not maps with keys of their own (free-form maps count as leaves)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not path.endswith(FREE_FORM):
            yield from leaves(value, f"{path}.")
        else:
            yield path


def schema_at(path: str) -> dict[str, Any]:
    node = SCHEMA
    for key in path.split("."):
        node = node["properties"][key] if "properties" in node else SCHEMA["definitions"]["resources"]
    return node


def test_every_value_has_a_schema_entry_with_a_type() -> None:
    for path in leaves(load_values()):
        entry = schema_at(path)
        assert "type" in entry or "$ref" in entry, path


def test_every_key_in_values_yaml_is_documented_by_a_comment() -> None:
    """Each key has a `# --` comment above it, unless it only groups documented keys, or it is part of the value of
    a documented key (the requests of documented `resources`, the keys of the default podSecurityContext)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w]*):(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = _comment_block_above(lines, index).startswith("# --")
        inherited = any(doc for _, doc in stack)
        groups = match.group(3).strip() == "" and _next_key_is_nested(lines, index, indent)
        if not (documented or inherited or groups):
            undocumented.append(f"{match.group(2)} (line {index + 1})")
        stack.append((indent, documented or inherited))
        if match.group(3).strip() == "|":  # the policy text: its keys belong to the policy, not to the values
            stack.append((indent, True))
    assert undocumented == []


def _comment_block_above(lines: list[str], index: int) -> str:
    block: list[str] = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("#"):
            break
        block.insert(0, line.strip())
    return block[0] if block else ""


def _next_key_is_nested(lines: list[str], index: int, indent: int) -> bool:
    for line in lines[index + 1:]:
        if line.strip() and not line.strip().startswith("#"):
            return len(line) - len(line.lstrip()) > indent and not line.strip().startswith("- ")
    return False


def test_every_value_is_used_by_a_template() -> None:
    unused = [path for path in leaves(load_values()) if path.rsplit(".", 1)[-1] not in TEMPLATES]
    assert unused == []


@pytest.mark.parametrize(("setting", "field"), [
    ("webhook.failurePolicy.pods=Sometimes", "failurePolicy.pods"),
    ("webhook.timeoutSeconds=31", "timeoutSeconds"),
    ("webhook.timeoutSeconds=0", "timeoutSeconds"),
    ("webhook.replicas=zero", "replicas"),
    ("certificates.mode=vault", "mode"),
    ("scheduler.extender.weight=0", "weight"),
    ("webhook.connections.idleTimeout=0", "idleTimeout"),
    ("scheduler.extender.connections.maxConnections=0", "maxConnections"),
    ("scheduler.extender.connections.tlsHandshakeTimeout=5", "tlsHandshakeTimeout"),
    ("scheduler.extender.httpTimeout=5", "httpTimeout"),
    ("scheduler.extender.managedResources[0]=nvidia.com/mig-*", "managedResources"),
    ("agent.backend=fake", "backend"),
    ("logLevel=TRACE", "logLevel"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("webhook.enabeld=true", "enabeld"),
    ("unknownTopLevel=1", "unknownTopLevel"),
    ("webhook.hostNetwork=yes", "hostNetwork"),
    ("webhook.extraArgs=--verbose", "extraArgs"),
    ("agent.extraEnv[0].value=1", "name"),
    ("networkPolicy.enabeld=true", "enabeld"),
    ("metrics.prometheusRule.staleAfterSeconds=10", "staleAfterSeconds"),
    ("metrics.grafanaDashboard.namespace=Monitoring", "namespace"),
    ("webhook.serviceAccount.name=x", "name"),
])
def test_the_schema_refuses_wrong_types_enums_and_unknown_keys(setting: str, field: str) -> None:
    error = render_error(setting)
    assert "values don't meet the specifications of the schema" in error
    # helm up to 3.17 names the field with dots, later ones as a JSON pointer (/webhook/failurePolicy/pods).
    assert field in error or field.replace(".", "/") in error


def policy_values(policy: str, **values: Any) -> str:
    return yaml.safe_dump({"policy": policy, **values})


def default_policy_with(old: str, new: str) -> str:
    text = str(load_values()["policy"])
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(("extra", "sets", "message"), [
    (policy_values("kind: GpuPolicy\nmode: enforce\n"), (), "policy: not a gpuguard policy"),
    (policy_values("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nrules: [unclosed\n"), (),
     "policy: not a gpuguard policy"),
    ("", ("scheduler.enabled=false",), 'pods would be sent to schedulerName "gpuguard-scheduler", but scheduler.enabled'),
    ("", ("scheduler.schedulerName=other",), "but this chart's scheduler is named \"other\""),
    (policy_values(default_policy_with("  - name: llm\n", "  - name: llm\n    schedulerName: gpu-sched\n")), (),
     'pods would be sent to schedulerName "gpu-sched"'),
    ("", ("scheduler.extender.managedResources={nvidia.com/mig-1g.10gb}",), "must list nvidia.com/gpu"),
    ("", ("scheduler.extender.managedResources={nvidia.com/gpu,nvidia.com/gpu}",), "lists a name twice"),
    ("", ("scheduler.leaderElection.enabled=false",), "scheduler.replicas is 2 but scheduler.leaderElection"),
    ("", ("scheduler.extender.metricsPort=8888",), "give /metrics its own port"),
    ("", ("certificates.mode=certManager", "certificates.certManager.issuerRef.name=ca"), "issuerRef.kind"),
    ("", ("webhook.connections.bodyTimeout=5",), "webhook.connections.bodyTimeout (5 s) is not above webhook.timeoutSeconds"),
    ("", ("webhook.timeoutSeconds=30", "webhook.connections.headerTimeout=30"), "headerTimeout (30 s) is not above"),
])
def test_impossible_combinations_fail_with_a_message_that_says_how_to_fix_them(extra: str, sets: tuple[str, ...],
                                                                              message: str) -> None:
    assert message in render_error(*sets, extra=extra)


def test_default_scheduler_and_an_empty_scheduler_name_are_always_allowed() -> None:
    policy = default_policy_with("schedulerName: gpuguard-scheduler", 'schedulerName: ""')
    policy = policy.replace("  - name: llm\n", "  - name: llm\n    schedulerName: default-scheduler\n")
    assert render(sets=("scheduler.enabled=false",), extra=policy_values(policy)).of_kind("MutatingWebhookConfiguration")


@pytest.mark.parametrize("namespace", ["default", "kube-system"])
def test_installing_into_a_shared_namespace_is_refused(namespace: str) -> None:
    result = run_helm("template", "gpuguard", str(CHART), "--namespace", namespace)
    assert result.returncode != 0
    assert f'The release namespace is "{namespace}"' in result.stderr
    assert "--namespace gpuguard --create-namespace" in result.stderr
