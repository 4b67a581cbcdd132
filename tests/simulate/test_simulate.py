"""The simulator: the same pure scoring as the extender, replayed against kube-scheduler's default and a best fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from gpuguard.policy.loading import default_policy
from gpuguard.simulate.engine import SCHEDULERS, Outcome, pickers, replay, stranded
from gpuguard.simulate.model import GPU, build_cluster, build_trace
from gpuguard.simulate.report import MEASURES, table
from tests.conftest import ROOT


def run(nodes: int, pods: int, seed: int, **trace_options: float) -> dict[str, Outcome]:
    cluster = build_cluster(nodes, seed)
    trace = build_trace(pods, seed, **trace_options)
    schedulers = pickers(cluster, default_policy().scheduling)
    return {name: replay(cluster, trace, name, picker, seed=seed) for name, picker in schedulers.items()}


def test_the_default_trace_asks_for_4_or_8_gpus_in_at_least_a_fifth_of_its_pods() -> None:
    trace = build_trace(3000, 1)
    big = [p for p in trace if p.request.count(GPU) in (4, 8) and p.kind == "llm"]
    assert len(big) >= len(trace) / 5
    assert {p.kind for p in trace} == {"llm", "mig", "dev"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gpuguard_places_twice_the_default_scheduler_and_matches_best_fit(seed: int) -> None:
    outcomes = run(60, 3000, seed)
    ours, default, best = outcomes["gpuguard"], outcomes["default"], outcomes["best-fit"]
    assert ours.placed_before_first_failure >= 2 * default.placed_before_first_failure
    assert ours.placed_before_first_failure >= 0.95 * best.placed_before_first_failure
    assert ours.stranded_gpus < default.stranded_gpus


def test_a_replay_is_the_same_every_time() -> None:
    assert run(20, 800, 7) == run(20, 800, 7)


def test_when_every_pod_has_left_nothing_is_held() -> None:
    cluster = build_cluster(12, 3)
    trace = build_trace(300, 3, lifetime=5.0)
    schedulers = pickers(cluster, default_policy().scheduling)
    outcome = replay(cluster, trace, "gpuguard", schedulers["gpuguard"], seed=3)
    assert outcome.unschedulable == 0, "short-lived pods on an ample cluster all fit"
    assert stranded(cluster.states) == (0, 0)


def test_utilization_weighting_prefers_idle_nodes_among_equal_fits() -> None:
    cluster = build_cluster(60, 1)
    trace = build_trace(40, 1)  # the cluster is far from full: every whole-GPU pod has equal fits to choose from
    schedulers = pickers(cluster, default_policy().scheduling)
    ours = replay(cluster, trace, "gpuguard", schedulers["gpuguard"], seed=1)
    best = replay(cluster, trace, "best-fit", schedulers["best-fit"], seed=1)
    assert ours.mean_utilization_of_used < best.mean_utilization_of_used


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    """`gpuguard simulate ARGS` as a command."""
    return subprocess.run(
        [sys.executable, "-m", "gpuguard", "simulate", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_gpuguard_simulate_prints_every_measure_and_names_the_ones_gpuguard_loses() -> None:
    # 20 nodes, 600 pods, seed 2: gpuguard places more pods before the first unschedulable one, fewer over the trace
    result = simulate("--nodes", "20", "--pods", "600", "--seed", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for measure in MEASURES:
        assert any(line.startswith(measure.name) for line in lines), measure.name
    verdict = next(line for line in lines if line.startswith("gpuguard vs default:"))
    assert "WORSE on" in verdict and "placed (whole trace)" in verdict and "unschedulable" in verdict
    assert "placed before 1st unschedulable" not in verdict
    assert any(line.startswith("gpuguard vs best-fit:") for line in lines)
    assert "whole-GPU pods ask for" in lines[0]
    assert "target" not in result.stdout


def test_gpuguard_simulate_json_has_the_tables_fields_for_every_scheduler() -> None:
    result = simulate("--nodes", "20", "--pods", "600", "--seed", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    outcomes = run(20, 600, 2)
    assert set(report) == {"schedulers"}
    assert set(report["schedulers"]) == set(SCHEDULERS)
    for name, fields in report["schedulers"].items():
        assert list(fields) == [m.name for m in MEASURES]
        assert fields["placed (whole trace)"] == outcomes[name].placed
        assert fields["unschedulable"] == outcomes[name].unschedulable
        assert fields["placed before 1st unschedulable"] == outcomes[name].placed_before_first_failure


def test_a_verdict_lists_every_measure_gpuguard_does_worse_on_and_none_it_wins() -> None:
    outcomes = run(20, 600, 2)
    text = table(list(outcomes.values()), heading="h")
    ours, default = outcomes["gpuguard"], outcomes["default"]
    worse = [m.name for m in MEASURES
             if m.value(ours) != m.value(default) and (m.value(ours) > m.value(default)) != m.higher_is_better]
    verdict = next(line for line in text.splitlines() if line.startswith("gpuguard vs default:"))
    assert worse and verdict.endswith(", ".join(worse) + ".")


def test_over_the_whole_trace_packing_loses_pods_only_to_small_ones_the_default_scheduler_places() -> None:
    outcomes = run(20, 600, 2)
    ours, default = outcomes["gpuguard"].placed_by_kind, outcomes["default"].placed_by_kind
    assert sum(ours.values()) < sum(default.values())
    assert ours["8-GPU"] + ours["4-GPU"] > default["8-GPU"] + default["4-GPU"]
    assert outcomes["gpuguard"].whole_gpus_placed > outcomes["default"].whole_gpus_placed


def test_a_cluster_too_small_for_every_node_kind_is_refused() -> None:
    result = simulate("--nodes", "2")
    assert result.returncode == 2
    assert "--nodes must be at least 5" in result.stderr


def group_run(seed: int, *, aware: bool) -> Outcome:
    cluster = build_cluster(60, seed)
    trace = build_trace(2000, seed, lifetime=60.0, llm_groups=100)
    scheduling = default_policy().scheduling
    if not aware:
        scheduling = scheduling.model_copy(update={"group_placement": scheduling.group_placement.model_copy(
            update={"enabled": False})})
    return replay(cluster, trace, "gpuguard", pickers(cluster, scheduling)["gpuguard"], seed=seed)


def test_a_trace_with_llm_groups_mixes_in_whole_groups_of_8_gpu_pods() -> None:
    plain, grouped = build_trace(500, 4), build_trace(500, 4, llm_groups=20)
    members = [p for p in grouped if p.group]
    sizes = Counter(p.group for p in members)
    assert len(sizes) == 20 and set(sizes.values()) <= {2, 4}
    assert all(p.request.count(GPU) == 8 and p.request.product == "NVIDIA-H100-80GB-HBM3" for p in members)
    assert [p.index for p in grouped] == list(range(len(grouped)))
    assert [p.request for p in grouped if not p.group] == [p.request for p in plain]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_group_awareness_keeps_more_groups_inside_one_nvlink_clique(seed: int) -> None:
    aware, unaware = group_run(seed, aware=True), group_run(seed, aware=False)
    assert aware.groups == unaware.groups == 100
    assert aware.groups_placed >= 0.9 * unaware.groups_placed
    assert aware.groups_split <= 0.6 * unaware.groups_split


def test_without_groups_the_trace_and_its_outcome_are_unchanged() -> None:
    assert build_trace(300, 5) == build_trace(300, 5, llm_groups=0)
    outcome = run(20, 300, 5)["gpuguard"]
    assert (outcome.groups, outcome.groups_placed, outcome.groups_split) == (0, 0, 0)


def test_llm_groups_are_refused_where_the_waiting_replay_would_not_count_them() -> None:
    result = simulate("--pods", "50", "--llm-groups", "2", "--dynamic-mig")
    assert result.returncode == 2
    assert "--llm-groups" in result.stderr and "--dynamic-mig" in result.stderr


def test_gpuguard_simulate_reports_split_groups_with_and_without_group_awareness() -> None:
    result = simulate("--pods", "400", "--lifetime", "60", "--llm-groups", "10")
    assert result.returncode == 0, result.stderr
    assert "10 in the trace" in result.stdout
    assert "with group awareness" in result.stdout
    assert "split across NVLink cliques" in result.stdout
