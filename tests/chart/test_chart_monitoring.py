"""The chart's alert rules and Grafana dashboard: rendered only when enabled, checked and unit-tested by Debian's real
promtool, and referencing only series the webhook, the extender and the node agent export (tests/chart/
exported_metrics.py builds their registries; promql-parser finds every selector in every expression)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.chart.exported_metrics import exported_names
from tests.chart.helm import CHART, NAMESPACE, Obj, Rendered, render
from tests.conftest import ROOT

MONITORING = ("monitoring-values.yaml",)
ALERT_TESTS = ROOT / "tests" / "data" / "chart-alert-tests.yaml"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$namespace": NAMESPACE}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install Debian's prometheus package (.ci/run does)", pytrace=False)
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=120)


def groups(rendered: Rendered) -> list[Obj]:
    """A copy: renders are cached, and some tests edit what they get."""
    (rule,) = rendered.of_kind("PrometheusRule")
    return copy.deepcopy(list(rule["spec"]["groups"]))


def alerts(rendered: Rendered) -> dict[str, Obj]:
    return {rule["alert"]: rule for group in groups(rendered) for rule in group["rules"]}


def dashboard(rendered: Rendered) -> Any:
    config_map = rendered.get("ConfigMap", "gpuguard-dashboard")
    return json.loads(config_map["data"]["gpuguard.json"])


def selectors(expression: str) -> Iterator[Any]:
    """Every VectorSelector in a PromQL expression."""
    stack = [promql_parser.parse(expression)]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            yield node
        elif isinstance(node, promql_parser.MatrixSelector):
            stack.append(node.vector_selector)
        elif isinstance(node, promql_parser.Call):
            stack.extend(node.args)
        elif isinstance(node, promql_parser.BinaryExpr):
            stack.extend((node.lhs, node.rhs))
        elif isinstance(node, promql_parser.AggregateExpr):
            stack.extend(n for n in (node.expr, node.param) if n is not None)
        elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
            stack.append(node.expr)


def metric_names(expression: str) -> set[str]:
    names = {selector.name for selector in selectors(expression)}
    assert None not in names, f"a selector without a metric name in {expression!r}"
    return names


def dashboard_expressions(board: Any) -> list[str]:
    expressions = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for name, value in GRAFANA_VARIABLES.items():
        expressions = [e.replace(name, value) for e in expressions]
    return expressions


# ------------------------------------------------------------------------------------------------ rendering


def test_alerts_and_the_dashboard_are_rendered_only_when_enabled(default_render: Rendered) -> None:
    assert default_render.of_kind("PrometheusRule") == []
    assert "gpuguard-dashboard" not in default_render.names("ConfigMap")
    rendered = render(MONITORING)
    assert len(rendered.of_kind("PrometheusRule")) == 1
    assert rendered.get("ConfigMap", "gpuguard-dashboard")


def test_the_dashboard_config_map_carries_the_grafana_sidecars_label_in_the_namespace_asked_for() -> None:
    config_map = render(MONITORING).get("ConfigMap", "gpuguard-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "GPU"}
    default_namespace = render(sets=("metrics.grafanaDashboard.enabled=true",)).get("ConfigMap", "gpuguard-dashboard")
    assert default_namespace["metadata"]["namespace"] == NAMESPACE


def test_the_rule_carries_the_labels_prometheus_selects_rules_by() -> None:
    (rule,) = render(MONITORING).of_kind("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["namespace"] == NAMESPACE


def test_alerts_of_disabled_components_are_left_out() -> None:
    sets = ("metrics.prometheusRule.enabled=true", "agent.enabled=false", "webhook.enabled=false")
    assert set(alerts(render(sets=sets))) == {"GpuguardPolicyReloadFailing", "GpuguardUtilizationStale",
                                              "GpuguardExtenderCacheNotReady"}


def test_thresholds_come_from_values() -> None:
    rendered = render(sets=("metrics.prometheusRule.enabled=true", "metrics.prometheusRule.staleAfterSeconds=900",
                            "metrics.prometheusRule.certificateExpiryDays=10"))
    found = alerts(rendered)
    assert "> 900" in found["GpuguardAgentReportStale"]["expr"]
    assert "[900s]" in found["GpuguardUtilizationStale"]["expr"]
    assert f"< {10 * 86400}" in found["GpuguardCertificateExpiresSoon"]["expr"]


# ------------------------------------------------------------------------------------------------- promtool


@pytest.mark.parametrize("sets", [(), ("certificates.mode=certManager",), ("agent.enabled=false",)],
                         ids=["defaults", "cert-manager", "agent-off"])
def test_the_alert_rules_pass_promtool_check_rules(tmp_path: Path, sets: tuple[str, ...]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups(render(MONITORING, sets))}))
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_rules_refuses_a_broken_expression(tmp_path: Path) -> None:
    """The check above is worth something only if promtool reads the expressions."""
    broken = groups(render(MONITORING))
    broken[0]["rules"][0]["expr"] = "sum by (rule) (increase(gpuguard_webhook_admissions_total[15m]) > 0"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": broken}))
    assert promtool("check", "rules", str(rules)).returncode != 0


def test_each_alert_fires_on_its_condition_and_not_without_it(tmp_path: Path) -> None:
    rendered_groups = groups(render(MONITORING))
    for group in rendered_groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rendered_groups}))
    shutil.copy(ALERT_TESTS, tmp_path / "tests.yaml")
    result = promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == set(alerts(render(MONITORING))), "every alert needs a case where it fires"


def test_promtool_test_rules_fails_when_an_alert_stops_firing(tmp_path: Path) -> None:
    rendered_groups = groups(render(MONITORING))
    for group in rendered_groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
            if rule["alert"] == "GpuguardPodsDenied":
                rule["expr"] = rule["expr"].replace('decision="denied"', 'decision="refused"')
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rendered_groups}))
    shutil.copy(ALERT_TESTS, tmp_path / "tests.yaml")
    assert promtool("test", "rules", str(tmp_path / "tests.yaml")).returncode != 0


# --------------------------------------------------------------------------------------------- metric names


def test_the_services_export_the_names_the_alerts_need() -> None:
    """A sanity check of the collection itself: it must find the families of all three services."""
    names = exported_names()
    assert {"gpuguard_webhook_admissions_total", "gpuguard_extender_filter_denials_total",
            "gpuguard_agent_last_report_timestamp_seconds", "gpuguard_policy_last_reload_failed",
            "gpuguard_webhook_certificate_expiry_timestamp_seconds", "DCGM_FI_DEV_GPU_UTIL",
            "process_resident_memory_bytes"} <= names
    assert "gpuguard_webhook_admissions" not in names  # counters are scraped with _total


def test_the_alert_rules_reference_only_series_the_services_export() -> None:
    for name, rule in alerts(render(MONITORING)).items():
        unknown = metric_names(str(rule["expr"])) - exported_names()
        assert not unknown, f"{name} uses {unknown}, which no gpuguard service exports"


def test_every_alert_keeps_to_the_release_namespace() -> None:
    for name, rule in alerts(render(MONITORING)).items():
        for selector in selectors(str(rule["expr"])):
            assert f'namespace="{NAMESPACE}"' in str(selector.matchers), f"{name}: {selector}"


def test_the_dashboard_is_json_whose_every_query_parses_and_uses_only_exported_series() -> None:
    board = dashboard(render(MONITORING))
    assert board["uid"] == "gpuguard-overview" and board["title"] == "gpuguard"
    expressions = dashboard_expressions(board)
    assert len(expressions) >= 20
    used: set[str] = set()
    for expression in expressions:
        names = metric_names(expression)
        unknown = names - exported_names()
        assert not unknown, f"{expression!r} uses {unknown}, which no gpuguard service exports"
        used |= names
        for selector in selectors(expression):
            assert f'namespace="{NAMESPACE}"' in str(selector.matchers), expression
    variable = next(v for v in board["templating"]["list"] if v["name"] == "namespace")
    assert variable["query"]["query"] == "label_values(gpuguard_policy_generation, namespace)"
    assert "gpuguard_policy_generation" in exported_names()
    # Each service has panels.
    assert {n.split("_")[1] for n in used if n.startswith("gpuguard_")} >= {"webhook", "extender", "agent", "policy"}


def test_every_dashboard_panel_asks_for_the_chosen_prometheus_data_source() -> None:
    board = dashboard(render(MONITORING))
    source = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["description"], panel["title"]


def test_the_packaged_dashboard_file_is_the_one_rendered() -> None:
    assert dashboard(render(MONITORING)) == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
