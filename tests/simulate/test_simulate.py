"""The simulator: the same pure scoring as the extender, replayed against kube-scheduler's default and a best fit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gpuguard.policy.loading import default_policy
from gpuguard.simulate.engine import Outcome, pickers, replay, stranded
from gpuguard.simulate.model import GPU, build_cluster, build_trace
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


def test_gpuguard_simulate_prints_the_table_and_the_ratios() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuguard", "simulate", "--nodes", "20", "--pods", "600", "--seed", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "placed before 1st unschedulable" in result.stdout
    assert "gpuguard / default scheduler" in result.stdout
    assert "gpuguard / offline best fit" in result.stdout


def test_a_cluster_too_small_for_every_node_kind_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuguard", "simulate", "--nodes", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert "--nodes must be at least 5" in result.stderr
