"""The dynamic-MIG planner and the MIG manager's layouts: properties over random clusters, and worked examples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from gpuguard.policy import mig
from gpuguard.policy.gpustate import GpuRequest, NodeGpuState
from gpuguard.policy.migconfig import DEFAULT_CONFIGS, gpu_layouts, load_configs, placed
from gpuguard.policy.migplan import MigNode, Plan, PoolRules, busy_gpus, plan
from gpuguard.simulate.dynamic import relaid
from gpuguard.simulate.model import B200, H100, MIG_CONFIGS, mig_node_of, named_mig_node
from tests.strategies.profiles import fewer

CONFIG_FILE = Path(mig.__file__).with_name("mig-parted-config.yaml")
H100_LAYOUTS = tuple(MIG_CONFIGS[H100].values())
B200_LAYOUTS = tuple(MIG_CONFIGS[B200].values())


def mig_pod(profile: str, product: str = H100, count: int = 1) -> GpuRequest:
    return GpuRequest(resources=((mig.mig_resource_name(profile), count),), product=product)


def mig_parted_would_make(name: str, device_id: str, gpus: int) -> list[dict[str, int]] | None:
    """mig-parted's choice read straight from the data file: per GPU, the first entry whose device filter names the
    device id (or that has none) and whose devices are `all` or list the index."""
    entries: list[dict[str, Any]] = yaml.safe_load(CONFIG_FILE.read_text())["configs"].get(name, [])
    found = []
    for index in range(gpus):
        for entry in entries:
            filters = entry.get("deviceFilter", [])
            filters = [filters] if isinstance(filters, str) else filters
            devices = entry.get("devices", "all")
            if (not filters or any(f.lower().startswith(device_id.lower()) for f in filters)) and (
                    devices == "all" or index in devices):
                found.append(dict(entry["migDevices"]))
                break
        else:
            return None
    return found


def slice_counts(state: NodeGpuState) -> list[Counter[str]]:
    return [Counter(s.profile for s in gpu.slices) for gpu in state.mig_gpus]


# ------------------------------------------------------------------------------------------ the MIG manager's layouts


def test_every_default_layout_fits_the_catalog_models_it_names_by_device_id() -> None:
    for name, entries in DEFAULT_CONFIGS.items():
        for entry in (e for e in entries if e.device_filter):
            selected = [m for m in mig.CATALOG if entry.applies_to(m, 0)]
            assert selected, f"{name}: no catalogued model has device ids {entry.device_filter}"
            for model in selected:
                assert placed(model, entry.mig_devices) is not None, f"{name} on {model.name}"


def test_every_default_layout_applies_to_a_catalog_model_unless_no_model_offers_its_profiles() -> None:
    for name, entries in DEFAULT_CONFIGS.items():
        offered = all(mig.is_known_profile(p) for e in entries for p in e.mig_devices)
        applies = any(gpu_layouts(name, model, 8) is not None for model in mig.CATALOG)
        assert applies == offered, name


def test_an_all_profile_layout_has_as_many_instances_as_the_catalog_allows_per_gpu() -> None:
    # the models the default config was written for (GB300 has none: there, H200's 2-slot `1g.35gb` name means a
    # 1-slot profile and mig-parted would make 4 of its 7)
    for model in (m for m in mig.CATALOG if m.device_ids):
        for profile in model.profiles:
            found = gpu_layouts(f"all-{profile.name.replace('+', '.')}", model, 1)
            if found is not None:
                assert found[0] == {profile.name: profile.max_count}, (model.name, profile.name)


def test_all_balanced_is_the_gpu_operators_per_model_layout() -> None:
    h100, b200 = mig.model_for_product(H100), mig.model_for_product(B200)
    assert h100 is not None and b200 is not None
    assert gpu_layouts("all-balanced", h100, 1) == ({"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},)
    assert gpu_layouts("all-balanced", b200, 1) == ({"1g.23gb": 2, "2g.45gb": 1, "3g.90gb": 1},)
    assert gpu_layouts("all-3g.40gb", b200, 8) is None, "B200 has no 3g.40gb: mig-parted would fail"


def test_a_layout_may_name_gpus_by_index_as_mig_parted_does() -> None:
    configs = load_configs(yaml.safe_dump({"version": 1, "source": "admin", "configs": {"half": [
        {"devices": [0, 1], "migDevices": {"3g.40gb": 2}}, {"devices": "all", "migDevices": {"1g.10gb": 7}}]}}))
    h100 = mig.model_for_product(H100)
    assert h100 is not None
    assert gpu_layouts("half", h100, 4, configs) == ({"3g.40gb": 2}, {"3g.40gb": 2}, {"1g.10gb": 7}, {"1g.10gb": 7})


# ----------------------------------------------------------------------------------------------------- worked examples


def pool(*layouts: str, minimum: dict[str, int] | None = None, cooldown: float = 600.0) -> dict[str, PoolRules]:
    return {"serving": PoolRules("serving", layouts, minimum or {}, cooldown)}


def test_waiting_3g_pods_move_an_idle_all_1g_node_to_all_3g() -> None:
    nodes = [MigNode(named_mig_node("a", H100, "all-1g.10gb"), "serving", "all-1g.10gb", "success")]
    made = plan([mig_pod("3g.40gb")] * 10, nodes, pool(*H100_LAYOUTS), now=0.0)
    assert [(m.node, m.to_config) for m in made.moves] == [("a", "all-3g.40gb")]
    assert (made.waiting, made.fit_before, made.fit_after) == (10, 0, 10)
    assert "a (serving): all-1g.10gb -> all-3g.40gb" in str(made)


def test_pods_that_already_fit_change_nothing() -> None:
    nodes = [MigNode(named_mig_node("a", H100, "all-balanced"), "serving", "all-balanced", "success")]
    made = plan([mig_pod("3g.40gb")] * 8, nodes, pool(*H100_LAYOUTS), now=0.0)
    assert made.moves == () and made.fit_after == 8


def test_a_node_in_cool_down_or_mid_change_is_held_back_with_the_reason() -> None:
    nodes = [MigNode(named_mig_node("a", H100, "all-1g.10gb"), "serving", "all-1g.10gb", "success", changed_at=900),
             MigNode(named_mig_node("b", H100, "all-1g.10gb"), "serving", "all-1g.10gb", "pending")]
    made = plan([mig_pod("3g.40gb")], nodes, pool(*H100_LAYOUTS, cooldown=600), now=1000.0)
    assert made.moves == ()
    reasons = dict(made.held_back)
    assert "cool-down" in reasons["a"] and "pending" in reasons["b"]


def test_the_pool_minimum_keeps_a_node_in_its_layout() -> None:
    nodes = [MigNode(named_mig_node(n, H100, "all-1g.10gb"), "serving", "all-1g.10gb", "success") for n in "ab"]
    made = plan([mig_pod("3g.40gb")] * 40, nodes, pool(*H100_LAYOUTS, minimum={"all-1g.10gb": 1}), now=0.0)
    assert len(made.moves) == 1


def test_a_gpu_holding_a_pod_is_never_repartitioned() -> None:
    state = named_mig_node("a", H100, "all-1g.10gb")
    held = [tuple(i == 0 and j == 0 for j in range(len(g.slices))) for i, g in enumerate(state.mig_gpus)]
    busy = mig_node_of("a", H100, [g.slices for g in state.mig_gpus], held)
    made = plan([mig_pod("3g.40gb")] * 4, [MigNode(busy, "serving", "all-1g.10gb", "success")],
                pool(*H100_LAYOUTS), now=0.0)
    assert made.moves == (), "the all-* names change every GPU, and GPU 0 holds a pod"


def test_nodes_outside_the_pools_are_left_alone() -> None:
    nodes = [MigNode(named_mig_node("a", H100, "all-1g.10gb"), "other", "all-1g.10gb", "success")]
    assert plan([mig_pod("3g.40gb")], nodes, pool(*H100_LAYOUTS), now=0.0).moves == ()


# ---------------------------------------------------------------------------------------------------------- properties


def _held(draw: st.DrawFn, slices: int) -> tuple[bool, ...]:
    """A GPU no pod holds, or one where pods hold at least one instance."""
    if draw(st.booleans()):
        return (False,) * slices
    flags = draw(st.lists(st.booleans(), min_size=slices, max_size=slices))
    return tuple(flags) if any(flags) else (True,) + tuple(flags[1:])


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[MigNode], dict[str, PoolRules], list[GpuRequest], float]:
    nodes: list[MigNode] = []
    for i in range(draw(st.integers(1, 6))):
        product, names = draw(st.sampled_from([(H100, H100_LAYOUTS), (B200, B200_LAYOUTS)]))
        config = draw(st.sampled_from(names))
        fresh = named_mig_node(f"n{i}", product, config)
        idle = draw(st.booleans())  # a node whose pods have all left, as the MIG manager needs for an all-* name
        held = [(False,) * len(g.slices) if idle else _held(draw, len(g.slices)) for g in fresh.mig_gpus]
        state = mig_node_of(fresh.name, product, [g.slices for g in fresh.mig_gpus], held)
        changed = draw(st.sampled_from([None, None, 0.0, 1500.0]))
        label = draw(st.sampled_from(["success", "success", "", "pending", "rebooting"]))
        nodes.append(MigNode(state, product, config, label, changed))
    pools = {p: PoolRules(p, names, draw(st.dictionaries(st.sampled_from(names), st.integers(0, 3), max_size=2)),
                          draw(st.sampled_from([0.0, 600.0])))
             for p, names in ((H100, H100_LAYOUTS), (B200, B200_LAYOUTS))}
    profiles = [(H100, p) for p in ("1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb")] + [
        (B200, p) for p in ("1g.23gb", "2g.45gb", "3g.90gb")]
    pending = [mig_pod(p, product, draw(st.integers(1, 2)))
               for product, p in draw(st.lists(st.sampled_from(profiles), min_size=1, max_size=60))]
    return nodes, pools, pending, 2000.0


def test_the_random_clusters_include_plans_that_move_several_nodes() -> None:
    def moves(case: Any) -> int:
        return len(plan(case[2], case[0], case[1], now=case[3]).moves)

    assert moves(find(clusters(), lambda case: moves(case) >= 2,
                      settings=settings(database=None, phases=[Phase.generate]))) >= 2


def after(nodes: list[MigNode], made: Plan) -> dict[str, str]:
    configs = {n.name: n.config for n in nodes}
    configs.update({m.node: m.to_config for m in made.moves})
    return configs


@fewer(2)
@given(clusters())
def test_a_plan_never_repartitions_a_gpu_that_holds_a_pod(case: Any) -> None:
    nodes, pools, pending, now = case
    made = plan(pending, nodes, pools, now=now)
    by = {n.name: n for n in nodes}
    for move in made.moves:
        node = by[move.node]
        assert not set(move.gpus) & set(busy_gpus(node.state))
        assert node.config_state not in ("pending", "rebooting")
        assert node.changed_at is None or now - node.changed_at >= pools[node.pool].cooldown
        result = relaid(node.state, move)
        for i in busy_gpus(node.state):
            assert result.mig_gpus[i] == node.state.mig_gpus[i]
            assert result.held is not None and node.state.held is not None
            assert result.held[i] == node.state.held[i]


@fewer(2)
@given(clusters())
def test_a_plan_never_takes_a_pool_below_its_minimum_of_a_layout(case: Any) -> None:
    nodes, pools, pending, now = case
    made = plan(pending, nodes, pools, now=now)
    before = Counter((n.pool, n.config) for n in nodes)
    configs = after(nodes, made)
    later = Counter((n.pool, configs[n.name]) for n in nodes)
    for (pool_name, layout), count in before.items():
        floor = pools[pool_name].minimum.get(layout, 0)
        assert later[(pool_name, layout)] >= min(count, floor)
    assert made.fit_before <= made.fit_after <= made.waiting
    assert len({m.node for m in made.moves}) == len(made.moves)


@fewer(2)
@given(clusters())
def test_an_applied_plan_is_the_layout_the_mig_manager_would_produce(case: Any) -> None:
    nodes, pools, pending, now = case
    made = plan(pending, nodes, pools, now=now)
    by = {n.name: n for n in nodes}
    for move in made.moves:
        node = by[move.node]
        model = mig.model_for_product(node.state.product)
        assert model is not None and move.to_config in pools[node.pool].layouts
        expected = mig_parted_would_make(move.to_config, model.device_ids[0], len(node.state.mig_gpus))
        assert expected is not None
        result = relaid(node.state, move)
        assert [dict(c) for c in slice_counts(result)] == expected
        assert set(move.gpus) == {i for i, c in enumerate(slice_counts(node.state)) if dict(c) != expected[i]}
        assert {r: n for r, n in result.free.items() if n} == {r: n for r, n in move.free_after.items() if n}
