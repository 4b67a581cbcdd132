"""Hypothesis strategies for what KServe and kube-apiserver send: predictor pods, InferenceServices, AdmissionReviews.

The pods look like the ones KServe creates (a `kserve-container` with a model server image and its command line,
`queue-proxy` in Knative mode, the `agent` sidecar for logging and batching, the `storage-initializer` init
container), with the things users and policies vary drawn at random: resources (whole, fractional and odd GPU
quantities, MIG and time-sliced resources, CPU and memory), tolerations, node selectors, scheduler names, labels,
annotations including the `gpuguard.io/*` overrides, privileged containers and Triton flags.

`realistic=True` keeps every object valid against the Kubernetes schemas (what kube-apiserver can send after its
own decoding); otherwise sections may also be null or of an unexpected type, as a hand-written object or a hostile
client could send. The strategies are plain data builders shared by every service's property tests and by the fuzz
harness in `bench/fuzz/`: the extender's tests can draw pods from `predictor_pods()` the same way.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import strategies as st

Json = dict[str, Any]

MODEL_CONTAINER = "kserve-container"
SIDECARS = ("queue-proxy", "agent", "istio-proxy")
NAMESPACES = ("models", "llm-prod", "sandbox-a", "default", "team-x")
WHOLE_GPU = "nvidia.com/gpu"
GPU_RESOURCES = (
    WHOLE_GPU, WHOLE_GPU, WHOLE_GPU, "nvidia.com/gpu.shared", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-2g.20gb",
    "nvidia.com/mig-3g.40gb", "nvidia.com/mig-7g.80gb", "nvidia.com/mig-1g.5gb", "nvidia.com/mig-1g.18gb",
    "nvidia.com/mig-3g.71gb", "nvidia.com/mig-9g.99gb", "nvidia.com/mig-1g.10gb.me", "amd.com/gpu",
    "intel.com/gpu", "habana.ai/gaudi", "nvidia.com/mig-1g.10gb.shared",
)
VISIBLE_DEVICES = ("all", "0,1", "GPU-5a1b2c3d-0000-1111-2222-333344445555", "none", "void", "")
WHOLE_QUANTITIES = ("1", "2", "4", "8", "0", "1000m", "2000m", "1e0", "10e-1", "+1", "01", "1.0", "1.", "0.1e1")
FRACTIONAL_QUANTITIES = ("0.5", "500m", "1.5", "250m", "0.1", "1e-1", ".5", "1500m", "0.25", "999m", "1001m")
ODD_QUANTITIES = ("-1", "1Ki", "1k", "5", "16", "1e3", "1E1", "1M")
"""Whole numbers, but not sensible GPU counts: too many, negative, binary suffixes."""
CPU_QUANTITIES = ("100m", "1", "2", "500m", "0.5", "4", "1500m")
MEMORY_QUANTITIES = ("100Mi", "1Gi", "2Gi", "16Gi", "512M", "1e9", "80Gi")
PRODUCTS = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-H200", "Tesla-T4", "NVIDIA-L4", "Unknown-GPU")
OVERRIDE_VALUES = {
    "gpuguard.io/gpu-count": ("1", "2", "4", "0", "9", "0.5", "two", ""),
    "gpuguard.io/mig-profile": ("1g.10gb", "2g.20gb", "3g.40gb", "1g.5gb", "1g.11gb", "7g.80gb"),
    "gpuguard.io/gpu-product": PRODUCTS,
    "gpuguard.io/sharing": ("time-slicing", "mps", ""),
    "gpuguard.io/skip": ("true", "false", "TRUE"),
    "gpuguard.io/applied": ("defaults", "llm", "stale-rule"),
}
RUNTIME_CONTAINERS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("nvcr.io/nvidia/tritonserver:24.08-py3", ("tritonserver",), ("--model-store=/mnt/models", "--grpc-port=9000")),
    ("vllm/vllm-openai:v0.6.3", ("python3", "-m", "vllm.entrypoints.openai.api_server"), ("--model", "/mnt/models")),
    ("kserve/huggingfaceserver:v0.14.0", (), ("--model_name=llama", "--model_id=meta-llama/Llama-3-8B")),
    ("kserve/sklearnserver:v0.14.0", (), ("--model_name=iris", "--model_dir=/mnt/models", "--http_port=8080")),
    ("kserve/xgbserver:v0.14.0", (), ("--model_name=xgb",)),
    ("ghcr.io/huggingface/text-generation-inference:2.4", ("text-generation-launcher",), ("--port", "8080")),
    ("registry.example.com:5000/team/custom-model@sha256:" + "ab" * 32, (), ()),
    ("pytorch/torchserve-kfs:0.9.0", ("torchserve",), ("--start",)),
)
TRITON_FLAGS = (
    ("--metrics-port=8003",), ("--metrics-port", "9102"), ("--allow-metrics=false",), ("--allow-metrics=true",),
    ("--allow-metrics", "false"), ("--metrics-port",),
)
FORMATS = ("sklearn", "xgboost", "lightgbm", "onnx", "tensorflow", "pytorch", "triton", "tensorrt", "huggingface",
           "vllm", "custom-format")
FRAMEWORK_KEYS = ("sklearn", "xgboost", "lightgbm", "tensorflow", "pytorch", "triton", "onnx", "pmml", "paddle",
                  "huggingface")

label_keys = st.sampled_from(("app", "team", "tier", "version", "example.com/owner", "pod-template-hash"))
label_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(
    lambda s: f"v{s}z")
uids = st.uuids().map(str)


def quantities(kind: str = "any") -> st.SearchStrategy[Any]:
    """GPU quantities: `whole`, `fractional`, or `any` (also odd ones, and plain JSON integers)."""
    whole = st.one_of(st.sampled_from(WHOLE_QUANTITIES), st.integers(min_value=0, max_value=8))
    if kind == "whole":
        return whole
    fractional = st.sampled_from(FRACTIONAL_QUANTITIES)
    if kind == "fractional":
        return fractional
    return st.one_of(whole, fractional, st.sampled_from(ODD_QUANTITIES))


@st.composite
def resources(draw: st.DrawFn, *, gpu: bool | None = None, fractional: bool = False) -> Json:
    """A container's `resources`: CPU and memory, and maybe GPU resources (always when `gpu`, never when False)."""
    limits: Json = {}
    requests: Json = {}
    if draw(st.booleans()):
        limits["cpu"] = draw(st.sampled_from(CPU_QUANTITIES))
        requests["cpu"] = draw(st.sampled_from(CPU_QUANTITIES))
    if draw(st.booleans()):
        limits["memory"] = draw(st.sampled_from(MEMORY_QUANTITIES))
    with_gpu = draw(st.booleans()) if gpu is None else gpu
    if with_gpu:
        for name in draw(st.lists(st.sampled_from(GPU_RESOURCES), min_size=1, max_size=2, unique=True)):
            value = draw(quantities("fractional" if fractional else "any"))
            where = draw(st.sampled_from(("limits", "limits", "both", "requests", "both-different")))
            if where in ("limits", "both", "both-different"):
                limits[name] = value
            if where in ("requests", "both"):
                requests[name] = value
            if where == "both-different":
                requests[name] = draw(quantities("whole"))
    result: Json = {}
    if limits or draw(st.booleans()):
        result["limits"] = limits
    if requests:
        result["requests"] = requests
    return result


@st.composite
def model_container(draw: st.DrawFn, *, gpu: bool | None = None, fractional: bool = False) -> Json:
    image, command, args = draw(st.sampled_from(RUNTIME_CONTAINERS))
    container: Json = {"name": MODEL_CONTAINER, "image": image}
    args = list(args)
    if "tritonserver" in image and draw(st.booleans()):
        args += list(draw(st.sampled_from(TRITON_FLAGS)))
    if command:
        container["command"] = list(command)
    if args:
        container["args"] = args
    container["ports"] = [{"name": "user-port", "containerPort": 8080, "protocol": "TCP"}]
    container["env"] = [{"name": "PORT", "value": "8080"}, {"name": "STORAGE_URI", "value": "gs://bucket/model"}]
    if draw(st.booleans()) or gpu or fractional:
        container["resources"] = draw(resources(gpu=gpu, fractional=fractional))
    if draw(st.integers(0, 9)) == 0:
        container["securityContext"] = {"privileged": draw(st.booleans())}
    return container


@st.composite
def sidecar(draw: st.DrawFn, name: str, *, gpu: bool | None = False, fractional: bool = False) -> Json:
    images = {"queue-proxy": "gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:" + "cd" * 32,
              "agent": "kserve/agent:v0.14.0", "istio-proxy": "docker.io/istio/proxyv2:1.22.0",
              "storage-initializer": "kserve/storage-initializer:v0.14.0"}
    container: Json = {"name": name, "image": images[name]}
    if name == "storage-initializer":
        container["args"] = ["gs://bucket/model", "/mnt/models"]
    if name == "queue-proxy":
        container["ports"] = [{"name": "http-queueadm", "containerPort": 8022, "protocol": "TCP"}]
    container["resources"] = draw(resources(gpu=gpu, fractional=fractional))
    return container


@st.composite
def native_sidecar(draw: st.DrawFn) -> Json:
    """An init container with `restartPolicy: Always` (runs beside the app containers since Kubernetes 1.28)."""
    container: Json = {"name": "embedder", "image": "ghcr.io/acme/embedder:1.0", "restartPolicy": "Always",
                       "resources": draw(resources(gpu=draw(st.booleans())))}
    if draw(st.integers(0, 4)) == 0:
        container["securityContext"] = {"privileged": True}
    return container


@st.composite
def tolerations(draw: st.DrawFn) -> list[Json]:
    choices = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"operator": "Exists"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "PreferNoSchedule"},
    )
    return draw(st.lists(st.sampled_from(choices), max_size=4))


@st.composite
def node_selector(draw: st.DrawFn) -> dict[str, str]:
    choices = st.one_of(
        st.tuples(st.just("nvidia.com/gpu.present"), st.sampled_from(("true", "false"))),
        st.tuples(st.just("nvidia.com/gpu.product"), st.sampled_from(PRODUCTS)),
        st.tuples(st.just("kubernetes.io/arch"), st.just("amd64")),
        st.tuples(st.just("nvidia.com/gpu.sharing-strategy"), st.sampled_from(("time-slicing", "none"))),
    )
    return dict(draw(st.lists(choices, max_size=3)))


@st.composite
def annotations(draw: st.DrawFn) -> dict[str, str]:
    found: dict[str, str] = {}
    for key in draw(st.lists(st.sampled_from(sorted(OVERRIDE_VALUES)), max_size=3, unique=True)):
        found[key] = draw(st.sampled_from(OVERRIDE_VALUES[key]))
    if draw(st.booleans()):
        found["serving.kserve.io/enable-prometheus-scraping"] = draw(st.sampled_from(("true", "false")))
    if draw(st.integers(0, 4)) == 0:
        found["prometheus.io/port"] = draw(st.sampled_from(("8002", "9090")))
    if draw(st.booleans()):
        found["autoscaling.knative.dev/min-scale"] = "1"
    return found


@st.composite
def predictor_pods(draw: st.DrawFn, *, realistic: bool = True, in_scope: bool | None = True,
                   fractional_gpu: bool = False) -> Json:
    """A pod as KServe creates it for an InferenceService component (predictor unless `in_scope` is False).

    `fractional_gpu`: one container (the model container, a sidecar or the init container) asks for a fractional
    GPU quantity, so validation must refuse the pod.
    """
    isvc = draw(st.sampled_from(("sklearn-iris", "llama3", "triton-cifar", "fraud")))
    scope = draw(st.booleans()) if in_scope is None else in_scope
    labels: dict[str, str] = {"app": f"{isvc}-predictor"}
    if scope or draw(st.booleans()):
        labels["serving.kserve.io/inferenceservice"] = isvc
    component = draw(st.sampled_from(("predictor", "predictor", None) if scope else ("transformer", "explainer")))
    if component is not None:
        labels["component"] = component
    labels.update(draw(st.dictionaries(label_keys, label_values, max_size=3)))
    bad_one = draw(st.sampled_from(("model", "sidecar", "init"))) if fractional_gpu else ""
    has_model = draw(st.integers(0, 9)) > 0 or bad_one == "model"
    containers: list[Json] = []
    if has_model:
        containers.append(draw(model_container(gpu=True if bad_one == "model" else None,
                                               fractional=bad_one == "model")))
    sidecars = draw(st.lists(st.sampled_from(SIDECARS), max_size=2, unique=True))
    if not sidecars and (bad_one == "sidecar" or not containers):
        sidecars = ["queue-proxy"]
    for index, name in enumerate(sidecars):
        is_bad = bad_one == "sidecar" and index == 0
        gpu = True if is_bad else draw(st.sampled_from((False, False, None)))  # a sidecar may ask for one itself
        containers.append(draw(sidecar(name, gpu=gpu, fractional=is_bad)))
    if draw(st.booleans()):
        containers.reverse()
    spec: Json = {"containers": containers}
    if bad_one == "init" or draw(st.booleans()):
        spec["initContainers"] = [draw(sidecar("storage-initializer", gpu=True if bad_one == "init" else False,
                                               fractional=bad_one == "init"))]
    if draw(st.integers(0, 4)) == 0:
        spec.setdefault("initContainers", []).append(draw(native_sidecar()))
    if draw(st.integers(0, 9)) == 0:
        target = draw(st.sampled_from(containers))
        target["env"] = [*target.get("env", []),
                         {"name": "NVIDIA_VISIBLE_DEVICES", "value": draw(st.sampled_from(VISIBLE_DEVICES))}]
    if not realistic and draw(st.integers(0, 9)) == 0:
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "single-gpu"}]
        target = draw(st.sampled_from(containers))
        if isinstance(target.get("resources"), dict):
            target["resources"]["claims"] = [{"name": "gpu"}]
    if draw(st.booleans()):
        spec["tolerations"] = draw(tolerations())
    if draw(st.booleans()):
        spec["nodeSelector"] = draw(node_selector())
    scheduler = draw(st.sampled_from((None, None, "default-scheduler", "gpuguard-scheduler", "volcano")))
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    metadata: Json = {"generateName": f"{isvc}-predictor-00001-deployment-7d9f8c6b5d-", "labels": labels}
    pod_annotations = draw(annotations())
    channel = draw(st.integers(0, 14))
    if channel == 0:  # KAI-Scheduler's fractional GPU
        pod_annotations["gpu-fraction"] = draw(st.sampled_from(("0.5", "0.25", "1", "1.5", "x")))
        labels["kai.scheduler/queue"] = "team-a"
    elif channel == 1:  # HAMi's vGPU modifiers on the model container
        model = next((c for c in containers if c["name"] == MODEL_CONTAINER), containers[0])
        resources = model.setdefault("resources", {})
        if isinstance(resources, dict):
            resources.setdefault("limits", {})["nvidia.com/gpumem"] = "10240"
            spec["schedulerName"] = "hami-scheduler"
    if pod_annotations or draw(st.booleans()):
        metadata["annotations"] = pod_annotations
    if draw(st.booleans()):
        metadata["namespace"] = draw(st.sampled_from(NAMESPACES))
    pod: Json = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    if not realistic:
        pod = draw(_roughened(pod))
    return pod


@st.composite
def _roughened(draw: st.DrawFn, pod: Json) -> Json:
    """The same pod with some sections null or of an unexpected type: tolerated, never a crash."""
    odd = st.sampled_from((None, "text", 7, [], {})).map(copy.deepcopy)  # a fresh object each time
    spec, metadata = pod["spec"], pod["metadata"]
    for section, key in draw(st.lists(st.sampled_from(
            (("spec", "tolerations"), ("spec", "nodeSelector"), ("spec", "schedulerName"),
             ("spec", "initContainers"), ("metadata", "annotations"), ("container", "resources"),
             ("container", "limits"), ("container", "command"), ("container", "securityContext"))), max_size=3)):
        if section == "spec":
            spec[key] = draw(odd)
        elif section == "metadata":
            metadata[key] = draw(odd)
        elif spec["containers"]:
            container = spec["containers"][0]
            if key == "limits" and isinstance(container.get("resources"), dict):
                container["resources"]["limits"] = draw(odd)
            else:
                container[key] = draw(odd)
    return pod


@st.composite
def inference_services(draw: st.DrawFn, *, fractional_gpu: bool = False) -> Json:
    """An InferenceService (serving.kserve.io/v1beta1) in any of the forms KServe accepts."""
    form = draw(st.sampled_from(("model", "framework", "containers")))
    bad = draw(st.sampled_from(("predictor", "worker", "transformer"))) if fractional_gpu else ""
    if bad == "worker":
        form = "model"
    section = {"resources": draw(resources(gpu=True if bad == "predictor" else None,
                                           fractional=bad == "predictor"))}
    predictor: Json
    if form == "model":
        model: Json = {"modelFormat": {"name": draw(st.sampled_from(FORMATS))}, "storageUri": "gs://bucket/model",
                       **section}
        if draw(st.booleans()):
            model["runtime"] = draw(st.sampled_from(("kserve-tritonserver", "kserve-sklearnserver", "my-runtime")))
        predictor = {"model": model}
    elif form == "framework":
        predictor = {draw(st.sampled_from(FRAMEWORK_KEYS)): {"storageUri": "gs://bucket/model", **section}}
    else:
        container = draw(model_container())
        container["resources"] = section["resources"]
        predictor = {"containers": [container]}
    if bad == "worker":
        predictor["workerSpec"] = {"containers": [{"name": "worker-container", "image": "kserve/huggingfaceserver",
                                                    "resources": draw(resources(gpu=True, fractional=True))}]}
    if draw(st.booleans()):
        predictor["nodeSelector"] = draw(node_selector())
    if draw(st.booleans()):
        predictor["tolerations"] = draw(tolerations())
    spec: Json = {"predictor": predictor}
    if bad == "transformer" or draw(st.integers(0, 3)) == 0:
        spec["transformer"] = {"containers": [{"name": MODEL_CONTAINER, "image": "example/transformer:1",
                                               "resources": draw(resources(gpu=True if bad == "transformer" else None,
                                                                           fractional=bad == "transformer"))}]}
    metadata: Json = {"name": draw(st.sampled_from(("sklearn-iris", "llama3", "triton-cifar"))),
                      "annotations": draw(annotations())}
    if draw(st.booleans()):
        metadata["labels"] = draw(st.dictionaries(label_keys, label_values, max_size=2))
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": metadata,
            "spec": spec}


POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
POD_RESOURCE = {"group": "", "version": "v1", "resource": "pods"}
ISVC_KIND = {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService"}
ISVC_RESOURCE = {"group": "serving.kserve.io", "version": "v1beta1", "resource": "inferenceservices"}


@st.composite
def admission_reviews(draw: st.DrawFn, obj: st.SearchStrategy[Json], *, kind: str = "Pod",
                      operations: tuple[str, ...] = ("CREATE", "CREATE", "CREATE", "UPDATE")) -> Json:
    """An AdmissionReview (either version) around an object drawn from `obj`, as kube-apiserver sends it."""
    operation = draw(st.sampled_from(operations))
    gvk, gvr = (POD_KIND, POD_RESOURCE) if kind == "Pod" else (ISVC_KIND, ISVC_RESOURCE)
    body = draw(obj)
    namespace = draw(st.sampled_from(NAMESPACES))
    request: Json = {
        "uid": draw(uids), "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": "" if kind == "Pod" else body["metadata"].get("name", ""), "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "uid": draw(uids), "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": body, "oldObject": body if operation == "UPDATE" else None, "dryRun": draw(st.booleans()),
        "options": {"kind": "CreateOptions" if operation == "CREATE" else "UpdateOptions",
                    "apiVersion": "meta.k8s.io/v1"},
    }
    if kind == "Pod" and draw(st.booleans()):
        body.setdefault("metadata", {})["ownerReferences"] = [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": draw(uids), "controller": True}]
    version = draw(st.sampled_from(("admission.k8s.io/v1", "admission.k8s.io/v1beta1")))
    return {"kind": "AdmissionReview", "apiVersion": version, "request": request}


def pod_reviews(*, realistic: bool = True, in_scope: bool | None = True, fractional_gpu: bool = False,
                operations: tuple[str, ...] = ("CREATE", "CREATE", "CREATE", "UPDATE")) -> st.SearchStrategy[Json]:
    pods = predictor_pods(realistic=realistic, in_scope=in_scope, fractional_gpu=fractional_gpu)
    return admission_reviews(pods, operations=operations)


def isvc_reviews(*, fractional_gpu: bool = False) -> st.SearchStrategy[Json]:
    return admission_reviews(inference_services(fractional_gpu=fractional_gpu), kind="InferenceService",
                             operations=("CREATE", "UPDATE"))


def compact(document: Any) -> bytes:
    """JSON as kube-apiserver writes it (Go's encoding/json: no spaces)."""
    return json.dumps(document, separators=(",", ":")).encode()


@st.composite
def malformed_bodies(draw: st.DrawFn, valid: st.SearchStrategy[Json]) -> bytes:
    """Bodies that are not AdmissionReviews: noise, cut-off JSON, JSON of another shape, a review missing a field."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        body = compact(draw(valid))
        return body[: draw(st.integers(0, len(body) - 1))]
    if choice == 2:
        return compact(draw(st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers()))))
    review = draw(valid)
    if choice == 3:
        del review["request"][draw(st.sampled_from(("uid", "kind", "operation", "resource")))]
    elif choice == 4:
        review[draw(st.sampled_from(("apiVersion", "kind")))] = draw(st.sampled_from(("v1", "Pod", "", 3)))
    else:
        review["request"]["operation"] = draw(st.sampled_from(("PATCH", "create", None)))
    return compact(review)
