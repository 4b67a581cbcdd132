"""`simulate --dynamic-mig`: waiting pods, the planner's layout changes with their delay, and the report."""

from __future__ import annotations

import json

from gpuguard.policy import mig
from gpuguard.policy.gpustate import GpuRequest
from gpuguard.policy.loading import default_policy
from gpuguard.simulate.dynamic import DYNAMIC, Dynamics, replay_waiting
from gpuguard.simulate.engine import Picker, pickers
from gpuguard.simulate.model import H100, SimCluster, SimPod, build_cluster, build_mig_trace, named_mig_node
from gpuguard.simulate.report import DYNAMIC_MEASURES, MEASURES
from tests.simulate.test_simulate import simulate


def mig_pods(profile: str, arrivals: list[float], lifetime: float = 10_000.0) -> tuple[SimPod, ...]:
    request = GpuRequest(resources=((mig.mig_resource_name(profile), 1),), product=H100)
    return tuple(SimPod(i, "mig", request, at, lifetime) for i, at in enumerate(arrivals))


def one_node(config: str) -> SimCluster:
    return SimCluster((named_mig_node("m", H100, config),), {}, {}, mig_configs={"m": config})


def gpuguard(cluster: SimCluster) -> Picker:
    return pickers(cluster, default_policy().scheduling)["gpuguard"]


def test_a_pod_waits_for_the_layout_change_and_no_longer() -> None:
    cluster = one_node("all-1g.10gb")
    outcome = replay_waiting(cluster, mig_pods("3g.40gb", [5.0]), DYNAMIC, gpuguard(cluster), seed=1,
                             patience=600, dynamics=Dynamics(layout_delay=100.0, minimum=0))
    assert (outcome.mig_placed, outcome.unschedulable, outcome.layout_changes) == (1, 0, 1)
    assert outcome.mean_mig_pending == 100.0


def test_without_the_planner_a_pod_no_layout_offers_is_unschedulable_after_its_patience() -> None:
    cluster = one_node("all-1g.10gb")
    outcome = replay_waiting(cluster, mig_pods("3g.40gb", [5.0, 6.0]), "gpuguard", gpuguard(cluster), seed=1,
                             patience=600)
    assert (outcome.mig_placed, outcome.unschedulable, outcome.layout_changes) == (0, 2, 0)


def test_a_waiting_pod_takes_the_instance_a_departing_pod_frees() -> None:
    cluster = one_node("all-7g.80gb")
    first = mig_pods("7g.80gb", [0.0] * 8, lifetime=50.0)
    late = SimPod(8, "mig", first[0].request, 10.0, 50.0)
    outcome = replay_waiting(cluster, (*first, late), "gpuguard", gpuguard(cluster), seed=1, patience=600)
    assert (outcome.mig_placed, outcome.unschedulable) == (9, 0)
    assert outcome.mig_pending_total == 40.0, "placed at 50 s, when the first pods leave"


def test_a_node_in_its_cool_down_is_not_changed_again() -> None:
    cluster = one_node("all-1g.10gb")
    trace = (*mig_pods("3g.40gb", [0.0], lifetime=20.0), *mig_pods("1g.10gb", [300.0]))
    outcome = replay_waiting(cluster, trace, DYNAMIC, gpuguard(cluster), seed=1, patience=100,
                             dynamics=Dynamics(layout_delay=10.0, cooldown=10_000.0, minimum=0))
    assert outcome.layout_changes == 1 and outcome.unschedulable == 1


def test_dynamic_mig_places_more_mig_pods_than_the_fixed_layout_it_started_in() -> None:
    cluster = build_cluster(20, 1, mig_start="all-1g")
    trace = build_mig_trace(500, 1, nodes=20, load=0.6)
    fixed = replay_waiting(cluster, trace, "gpuguard", gpuguard(cluster), seed=1, patience=600)
    moving = replay_waiting(cluster, trace, DYNAMIC, gpuguard(cluster), seed=1, patience=600, dynamics=Dynamics())
    assert moving.layout_changes > 0
    assert moving.mig_placed_before_first_failure > 1.3 * fixed.mig_placed_before_first_failure
    assert moving.mig_placed > fixed.mig_placed


def test_simulate_dynamic_mig_json_reports_every_scheduler_with_the_mig_fields() -> None:
    result = simulate("--dynamic-mig", "--trace", "mig", "--nodes", "10", "--pods", "200", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["schedulers"]
    assert list(report) == ["gpuguard", "default", "best-fit", DYNAMIC]
    for fields in report.values():
        assert list(fields) == [m.name for m in MEASURES + DYNAMIC_MEASURES]
    assert report["gpuguard"]["layout changes"] == 0


def test_simulate_dynamic_mig_compares_it_with_gpuguard_on_the_fixed_layout() -> None:
    result = simulate("--dynamic-mig", "--trace", "mig", "--mig-start", "all-1g", "--nodes", "10", "--pods", "200",
                      "--layout-delay", "60")
    assert result.returncode == 0, result.stderr
    assert "a layout change takes 60 s" in result.stdout.splitlines()[0]
    assert any(line.startswith("dynamic-mig vs gpuguard:") for line in result.stdout.splitlines())
    assert any(line.startswith("mean MIG pending (s)") for line in result.stdout.splitlines())


def test_an_unknown_starting_layout_is_refused() -> None:
    result = simulate("--dynamic-mig", "--mig-start", "all-4g")
    assert result.returncode == 2 and "--mig-start 'all-4g' is not one of" in result.stderr
