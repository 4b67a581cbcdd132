"""A MIG request valid on a node's GPU is admitted by /validate and kept by the extender's /filter, for every new
model; one that is not is refused by both, naming the model. Real pod shapes: the canonical KServe predictor pod of
tests/data, asking for the MIG resource and selecting the product as the webhook's rules write it."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from gpuguard.policy import mig
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import create_app as create_extender
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import UtilizationBoard
from tests.conftest import DATA, load_data
from webhook.app import create_app as create_webhook
from webhook.settings import WebhookSettings

Client = TestClient[Any, Any]
POLICY = DATA / "policy-mig-models.yaml"
B200, GB300 = "NVIDIA-B200", "NVIDIA-GB300"
GH200, RTX6000 = "NVIDIA-GH200-480GB", "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"
NEXT = "NVIDIA-Next-GPU"

# (node product, requested profile)
VALID = [
    (B200, "1g.23gb"), (B200, "1g.23gb+me"), (B200, "3g.90gb"), (B200, "7g.180gb"),
    (GB300, "1g.35gb"), (GB300, "2g.70gb"), (GB300, "7g.278gb"),
    (GH200, "1g.12gb"), (GH200, "3g.48gb"), ("NVIDIA-GH200-144G-HBM3e", "1g.18gb"),
    (RTX6000, "1g.24gb"), (RTX6000, "1g.24gb+gfx"), (RTX6000, "1g.24gb+me.all"), (RTX6000, "2g.48gb-me"),
    (RTX6000, "4g.96gb+gfx"),
    (NEXT, "1g.25gb"),  # known only through the policy's migCatalog
]
# (node product, requested profile, the model the refusal names, a profile it offers instead)
INVALID = [
    (B200, "1g.10gb", "B200", "1g.23gb"),
    (GB300, "1g.18gb", "GB300", "1g.35gb"),
    (GH200, "3g.47gb", "H100-96GB", "3g.48gb"),
    (RTX6000, "1g.23gb", "RTX-PRO-6000", "1g.24gb"),
    (RTX6000, "3g.72gb", "RTX-PRO-6000", "4g.96gb"),
]


def predictor(resource: str, product: str | None) -> dict[str, Any]:
    """The canonical Standard-mode predictor pod, asking for one MIG device, pinned to `product` if given."""
    pod = copy.deepcopy(load_data("review-standard-custom.json")["request"]["object"])
    pod["spec"]["containers"][0]["resources"] = {"limits": {resource: "1"}, "requests": {resource: "1"}}
    if product is not None:
        pod["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": product}
    return dict(pod)


def review(pod: dict[str, Any]) -> bytes:
    body = load_data("review-standard-custom.json")
    body["request"]["object"] = pod
    return json.dumps(body).encode()


def node(name: str, product: str, allocatable: dict[str, int]) -> dict[str, Any]:
    """A MIG-mixed node as GFD labels it and the device plugin sizes it (one GPU, no agent annotation)."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "7", "annotations": {}, "labels": {
            "nvidia.com/gpu.product": product, "nvidia.com/gpu.count": "1", "nvidia.com/mig.strategy": "mixed"}},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110",
                                   **{r: str(n) for r, n in allocatable.items()}}},
    }


def offered(product: str, profile: str) -> dict[str, int]:
    """What a node of `product` offers in the all-<profile> layout: the profile's most instances."""
    model = PolicySource(POLICY, registry=CollectorRegistry()).policy.catalog.model_for_product(product)
    assert model is not None
    entry = model.profile(profile)
    assert entry is not None
    return {mig.mig_resource_name(profile): entry.max_count}


async def post(client: Client, path: str, body: bytes) -> Any:
    reply = await client.post(path, data=io.BytesIO(body), headers={"Content-Type": "application/json"})
    assert reply.status == 200
    return await reply.json(content_type=None)


@pytest.fixture
async def webhook(aiohttp_client: Callable[[web.Application], Awaitable[Client]]) -> Client:
    registry = CollectorRegistry()
    settings = WebhookSettings(host="127.0.0.1", port=0, policy_path=POLICY)
    return await aiohttp_client(create_webhook(settings, policy=PolicySource(POLICY, registry=registry),
                                               registry=registry))


@pytest.fixture
async def extender(aiohttp_client: Callable[[web.Application], Awaitable[Client]]) -> Client:
    registry = CollectorRegistry()
    app = create_extender(ExtenderSettings(policy_path=POLICY), policy=PolicySource(POLICY, registry=registry),
                          registry=registry, store=InventoryStore(pods_known=False), board=UtilizationBoard())
    return await aiohttp_client(app)


async def filtered(extender: Client, pod: dict[str, Any], nodes: list[dict[str, Any]]) -> Any:
    return await post(extender, "/filter", json.dumps({"Pod": pod, "Nodes": {"items": nodes}}).encode())


@pytest.mark.parametrize(("product", "profile"), VALID)
async def test_a_profile_the_nodes_gpu_offers_is_admitted_and_scheduled_there(
    webhook: Client, extender: Client, product: str, profile: str
) -> None:
    resource = mig.mig_resource_name(profile)
    pod = predictor(resource, product)
    answer = (await post(webhook, "/validate", review(pod)))["response"]
    assert answer["allowed"] is True, answer.get("status")
    nodes = [node("fits", product, offered(product, profile)), node("h100", "NVIDIA-H100-80GB-HBM3", {
        "nvidia.com/mig-1g.10gb": 7})]
    result = await filtered(extender, pod, nodes)
    assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["fits"], result
    assert "h100" in result["FailedAndUnresolvableNodes"] and result["Error"] == ""


@pytest.mark.parametrize(("product", "profile"), [(p, q) for p, q in VALID if p != NEXT])
async def test_without_a_product_selector_any_model_offering_the_profile_admits_it(
    webhook: Client, product: str, profile: str
) -> None:
    answer = (await post(webhook, "/validate", review(predictor(mig.mig_resource_name(profile), None))))["response"]
    assert answer["allowed"] is True, answer.get("status")


@pytest.mark.parametrize(("product", "profile", "model", "instead"), INVALID)
async def test_a_profile_the_nodes_gpu_lacks_is_refused_naming_the_model(
    webhook: Client, extender: Client, product: str, profile: str, model: str, instead: str
) -> None:
    resource = mig.mig_resource_name(profile)
    pod = predictor(resource, product)
    answer = (await post(webhook, "/validate", review(pod)))["response"]
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert f"{resource} does not exist on {product} ({model})" in message and instead in message
    result = await filtered(extender, pod, [node("node", product, offered(product, instead))])
    assert result["Nodes"]["items"] == []
    assert result["FailedAndUnresolvableNodes"] == {"node": f"no {profile} MIG instances here (it offers {instead})"}


async def test_a_profile_no_model_offers_is_refused_with_how_to_add_one(webhook: Client) -> None:
    answer = (await post(webhook, "/validate", review(predictor("nvidia.com/mig-1g.99gb", None))))["response"]
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert "unknown MIG profile '1g.99gb'" in message and "migCatalog.models" in message
    assert "1g.70gb" in message, "the nearest known profiles are suggested"


async def test_the_policy_added_model_is_still_checked_per_model(webhook: Client) -> None:
    answer = (await post(webhook, "/validate", review(predictor("nvidia.com/mig-1g.35gb", NEXT))))["response"]
    assert answer["allowed"] is False
    assert f"nvidia.com/mig-1g.35gb does not exist on {NEXT} (NEXT-GPU)" in answer["status"]["message"]

