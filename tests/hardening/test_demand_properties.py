"""Every decision counts a pod's GPUs the same way, and the way kube-scheduler does.

For generated predictor pods (every GPU kind, native sidecars, init containers, device access by env, KAI and HAMi
shapes, DRA claims), an independent reference written here from Kubernetes' rules (app containers plus sidecars,
against each regular init container plus the sidecars started before it; requests default to limits; zero is no
GPU) must agree with: the GPU-demand model validation reads, the extender's request, the simulator's request, and
the mutation's answer to "does this pod already get a GPU".
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import jsonpatch
from hypothesis import given
from hypothesis import strategies as st

from gpuguard.contracts.admission import decode_patch, parse_review
from gpuguard.policy.demand import device_share, pod_demand
from gpuguard.policy.gpustate import gpu_request
from gpuguard.policy.quantity import QuantityError, parse_quantity
from gpuguard.simulate.model import admitted_pod
from tests.conftest import policy_with
from tests.strategies import kserve
from webhook.review import mutate, validate

GPU_PREFIXES = ("nvidia.com/gpu", "nvidia.com/mig-", "amd.com/gpu", "intel.com/gpu", "gpu.intel.com/", "habana.ai/")
NOT_GPUS = ("nvidia.com/gpumem", "nvidia.com/gpucores", "nvidia.com/gpumem-percentage", "nvidia.com/priority")
POLICY = policy_with(namespaces={}, limits={"maxGpusPerPod": 4})


def is_gpu(name: str) -> bool:
    return name.startswith(GPU_PREFIXES) and name not in NOT_GPUS


def count_of(container: Any, name: str) -> int | None:
    """The whole count a container asks for (request, else limit), None when unreadable or not whole."""
    resources = container.get("resources") if isinstance(container, dict) else None
    if not isinstance(resources, dict):
        return 0
    sections = [resources.get(k) if isinstance(resources.get(k), dict) else {} for k in ("requests", "limits")]
    raw = next((s[name] for s in sections if name in s), None)
    if raw is None:
        return 0
    try:
        value = parse_quantity(raw)
    except QuantityError:
        return None
    return int(value) if value.denominator == 1 and value >= 0 else None


def names_in(container: Any) -> set[str]:
    resources = container.get("resources") if isinstance(container, dict) else None
    found: set[str] = set()
    for key in ("limits", "requests"):
        section = resources.get(key) if isinstance(resources, dict) else None
        if isinstance(section, dict):
            found |= {n for n in section if is_gpu(n)}
    return found


def reference_counts(pod: dict[str, Any]) -> dict[str, int]:
    """kube-scheduler's effective request per GPU resource, written out plainly."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    app = [c for c in spec.get("containers") or [] if isinstance(c, dict)] if isinstance(spec.get("containers"), list) else []
    inits = [c for c in spec.get("initContainers") or [] if isinstance(c, dict)] \
        if isinstance(spec.get("initContainers"), list) else []
    names = set().union(*(names_in(c) for c in app + inits))
    counts = {}
    for name in names:
        running = sum(max(count_of(c, name) or 0, 0) for c in app)
        started_sidecars, peak = 0, 0
        for c in inits:
            n = count_of(c, name) or 0
            if c.get("restartPolicy") == "Always":
                started_sidecars += n
            else:
                peak = max(peak, n + started_sidecars)
        counts[name] = max(running + started_sidecars, peak)
    return {k: v for k, v in counts.items() if v > 0}


@given(pod=kserve.predictor_pods(realistic=False, in_scope=True))
def test_validation_the_extender_and_the_simulator_count_what_kube_scheduler_counts(pod: dict[str, Any]) -> None:
    expected = reference_counts(pod)
    assert dict(pod_demand(pod).resources) == expected
    assert dict(gpu_request(pod).resources) == expected
    model_limits = {name: n for name, n in expected.items()}
    assert dict(gpu_request(admitted_pod(model_limits, {}, [])).resources) == model_limits


@given(review=kserve.pod_reviews(realistic=False, in_scope=True, operations=("CREATE",)))
def test_a_pod_that_already_gets_a_gpu_is_never_given_another(review: dict[str, Any]) -> None:
    pod = review["request"]["object"]
    demand = pod_demand(pod, schedulers=frozenset(POLICY.externally_managed.schedulers))
    ops = decode_patch(mutate(parse_review(kserve.compact(review)).request, POLICY).response)
    added = [op for op in ops if "/resources" in op["path"]]
    if demand.gets_gpu or demand.owner:
        after = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
        assert reference_counts(after) == reference_counts(pod), f"a GPU was added to a pod that had one: {added}"


@given(review=kserve.pod_reviews(realistic=False, in_scope=True, operations=("CREATE",)))
def test_validation_refuses_exactly_the_pods_over_the_limit(review: dict[str, Any]) -> None:
    request = parse_review(kserve.compact(review)).request
    assert request.object is not None
    stored = jsonpatch.apply_patch(copy.deepcopy(request.object), decode_patch(mutate(request, POLICY).response))
    counts = reference_counts(stored)
    product = (stored.get("spec") or {}).get("nodeSelector") if isinstance(stored.get("spec"), dict) else None
    pinned = product.get("nvidia.com/gpu.product") if isinstance(product, dict) else None
    demand = pod_demand(stored, schedulers=frozenset(POLICY.externally_managed.schedulers))
    total = sum((n * device_share(name, product=pinned if isinstance(pinned, str) else None)
                 for name, n in counts.items()), Fraction(0))
    total += demand.kai.gpus if demand.kai else 0
    outcome = validate(request.model_copy(update={"object": stored}), POLICY)
    counted = any("GPUs in all" in p.message for p in outcome.problems)
    assert counted == (total > 4), (counts, total, [str(p) for p in outcome.problems])


@given(isvc=kserve.inference_services(), namespace=st.sampled_from(kserve.NAMESPACES))
def test_an_inference_service_is_told_what_its_predictor_pod_will_be_told(isvc: dict[str, Any], namespace: str) -> None:
    from gpuguard.policy import inferenceservice
    from gpuguard.policy.admission import admit

    verdict = inferenceservice.judge(isvc, POLICY, namespace=namespace)
    pod = admit(inferenceservice.predictor_pod(isvc), POLICY, namespace=namespace)
    predictor_problems = {(p.message, p.fix) for p in pod.problems}
    assert predictor_problems <= {(p.message, p.fix) for p in verdict.problems}
    if verdict.problems and not pod.problems:
        workers = "workerSpec" in isvc["spec"]["predictor"]
        assert workers or any(p.code == "quantity" for p in verdict.problems), [str(p) for p in verdict.problems]
