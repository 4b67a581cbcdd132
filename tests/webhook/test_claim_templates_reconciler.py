"""The ResourceClaimTemplates reconciler: what it plans, and what it does against the stand-in API server."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuguard.k8s.claim_templates import Leadership, LeaseSettings
from gpuguard.k8s.client import api_client
from gpuguard.k8s.watch import WatchSettings
from gpuguard.policy.claim_templates import GpuShape, plan_templates, template, templates_for
from gpuguard.policy.model import Dra, Policy
from tests.conftest import policy_with
from tests.extender.fake_apiserver import FakeApiServer
from webhook.templates import ClaimTemplates, build_claim_templates

FAST_WATCH = WatchSettings(page_size=50, watch_seconds=1, backoff=0.05, max_backoff=0.2, pod_field_selector="")
FAST_LEASE = {"lease_seconds": 4, "renew_seconds": 3, "retry_seconds": 1}


def dra_policy(**changes: Any) -> Policy:
    return policy_with(namespaces={"dra-*": {"allocation": "dra"}}, rules=[
        {"name": "small", "match": {"labels": {"gpuguard.io/model-size": "small"}}, "gpu": {"migProfile": "1g.10gb"}},
    ], userOverrides=[], **changes)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def old_template(ns: str, count: int) -> dict[str, Any]:
    """A template gpuguard made under an earlier policy (another shape)."""
    return template(GpuShape(count=count), Dra(), namespace=ns)


def pod(ns: str, name: str, template_name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name},
            "spec": {"containers": [{"name": "kserve-container", "image": "x", "resources": {"claims": [{"name": "gpu"}]}}],
                     "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template_name}]}}


# ---------------------------------------------------------------------------------------------------------- the plan


def test_missing_templates_are_created_and_unneeded_unreferenced_ones_deleted() -> None:
    policy = dra_policy()
    wanted = templates_for(policy, "dra-a")
    stale, kept = old_template("dra-a", 5), old_template("dra-a", 6)
    existing = {("dra-a", t["metadata"]["name"]): t["spec"]["spec"] for t in (wanted[0], stale, kept)}
    plan = plan_templates(policy, namespaces=["dra-a", "models"], existing=existing,
                          referenced={("dra-a", kept["metadata"]["name"])})
    assert [t["metadata"]["name"] for t in plan.create] == [t["metadata"]["name"] for t in wanted[1:]]
    assert plan.delete == (("dra-a", stale["metadata"]["name"]),)
    assert plan.drifted == ()


def test_a_hand_edited_template_is_never_edited_back_or_deleted_while_wanted() -> None:
    policy = dra_policy()
    wanted = templates_for(policy, "dra-a")
    edited = copy.deepcopy(wanted[0]["spec"]["spec"])
    edited["devices"]["requests"][0]["exactly"]["count"] = 3
    existing = {("dra-a", t["metadata"]["name"]): t["spec"]["spec"] for t in wanted}
    existing[("dra-a", wanted[0]["metadata"]["name"])] = edited
    plan = plan_templates(policy, namespaces=["dra-a"], existing=existing, referenced=())
    assert plan.empty and plan.drifted == (("dra-a", wanted[0]["metadata"]["name"]),)


def test_a_changed_policy_means_new_names_never_new_content_under_an_old_name() -> None:
    before = {t["metadata"]["name"] for t in templates_for(dra_policy(), "dra-a")}
    renamed = dra_policy(dra={"deviceClasses": {"gpu": "big-gpus.example.com"}})
    after = {t["metadata"]["name"] for t in templates_for(renamed, "dra-a")}
    mig_only = {n for n in before if "-mig-" in n}
    assert after & before == mig_only  # the whole-GPU template changed content, so it changed name


# ------------------------------------------------------------------------------------- against the API server


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()
    fake.start()
    for obj in [namespace("dra-a"), namespace("dra-b", **{"gpuguard.io/webhook": "ignore"}), namespace("models"),
                namespace("kube-system"), namespace("gpuguard"), namespace("dra-excluded")]:
        fake.put(obj)
    yield fake
    fake.stop()


def until(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("not seen in time")


def running(server: FakeApiServer, tmp_path: Path, identity: str, policy: Policy) -> ClaimTemplates:
    api = api_client(kubeconfig=server.write_kubeconfig(tmp_path / f"kubeconfig-{identity}"))
    parts = build_claim_templates(api, lambda: policy, lease_namespace="gpuguard", identity=identity,
                                  excluded=["dra-excluded"], watch=FAST_WATCH, resync=0.5,
                                  lease=LeaseSettings(namespace="gpuguard", identity=identity, **FAST_LEASE))
    parts.start()
    return parts


def templates_in(server: FakeApiServer) -> dict[str, dict[str, Any]]:
    return {f"{t['metadata']['namespace']}/{t['metadata']['name']}": t for t in server.objects("ResourceClaimTemplate")}


def test_the_leader_keeps_the_templates_of_every_namespace_in_scope(server: FakeApiServer, tmp_path: Path) -> None:
    policy = dra_policy()
    stale, referenced = old_template("dra-a", 5), old_template("dra-a", 6)
    foreign = {**old_template("dra-a", 7), "metadata": {"namespace": "dra-a", "name": "team-gpus"}}
    for obj in (stale, referenced, foreign, pod("dra-a", "still-running", referenced["metadata"]["name"])):
        server.put(obj)
    wanted = {f"dra-a/{t['metadata']['name']}" for t in templates_for(policy, "dra-a")}
    parts = running(server, tmp_path, "replica-a", policy)
    try:
        until(lambda: wanted <= templates_in(server).keys()
              and f"dra-a/{stale['metadata']['name']}" not in templates_in(server))
        names = set(templates_in(server))
        assert f"dra-a/{referenced['metadata']['name']}" in names  # a pod still names it
        assert "dra-a/team-gpus" in names  # not gpuguard's
        assert not any(n.split("/")[0] in ("dra-b", "models", "kube-system", "gpuguard", "dra-excluded")
                       for n in names)  # opted out, devicePlugin, never in scope, excluded
        server.delete("Pod", "dra-a/still-running")
        until(lambda: f"dra-a/{referenced['metadata']['name']}" not in templates_in(server))
        server.put(namespace("dra-c"))
        until(lambda: {f"dra-c/{t['metadata']['name']}" for t in templates_for(policy, "dra-c")}
              <= templates_in(server).keys())
    finally:
        parts.stop()
    assert {verb for verb, _ in server.writes} <= {"create", "delete"}  # never an update
    assert server.leases["gpuguard/gpuguard-claim-templates"]["spec"]["holderIdentity"] == "replica-a"


def test_only_the_lease_holder_writes(server: FakeApiServer, tmp_path: Path) -> None:
    policy = dra_policy()
    first = running(server, tmp_path, "replica-a", policy)
    try:
        until(lambda: first.leadership.leading)
        second = running(server, tmp_path, "replica-b", policy)
        try:
            until(lambda: bool(templates_in(server)))
            time.sleep(1.5)
            assert not second.leadership.leading and second.reconciler.pass_once() is None
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_stopped_leader_hands_over_when_its_lease_expires(server: FakeApiServer, tmp_path: Path) -> None:
    policy = dra_policy()
    first = running(server, tmp_path, "replica-a", policy)
    until(lambda: first.leadership.leading)
    second = running(server, tmp_path, "replica-b", policy)
    try:
        first.stop()
        until(lambda: second.leadership.leading, timeout=20)
        assert server.leases["gpuguard/gpuguard-claim-templates"]["spec"]["holderIdentity"] == "replica-b"
    finally:
        second.stop()


def test_leadership_is_lost_when_renewals_fail(tmp_path: Path) -> None:
    fake = FakeApiServer()
    fake.start()
    api = api_client(kubeconfig=fake.write_kubeconfig(tmp_path / "kubeconfig"))
    changes: list[bool] = []
    leadership = Leadership(api, LeaseSettings(namespace="gpuguard", identity="a", **FAST_LEASE),
                            on_change=changes.append)
    leadership.start()
    try:
        until(lambda: leadership.leading)
        fake.stop()
        until(lambda: not leadership.leading, timeout=20)
    finally:
        leadership.stop()
    assert changes[:2] == [True, False]
