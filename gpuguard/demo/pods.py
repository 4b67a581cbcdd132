"""The demo's workload: KServe's pods as KServe creates them, before gpuguard has touched them.

InferenceService predictor pods, and the prefill and decode pods of one LLMInferenceService (llm-d: the decode pod
with its routing sidecar, labelled by KServe's LLMInferenceService controller as `gpuguard.policy.workload`
describes). Few of them say anything about GPUs, and one gets it wrong: that is the point. Two carry the label their
owners put on small GPU models; one runs a CPU-only server and must get no GPU at all; one runs in
the namespace of the DRA node pool, where the demo's policy gives GPUs as ResourceClaims. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DemoPod:
    name: str
    """The InferenceService this predictor pod belongs to."""
    namespace: str
    story: str
    """What the user asked for, in a few words."""
    image: str
    args: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    """Labels the InferenceService carries (KServe copies them to its pods)."""
    role: str = ""
    """For an LLMInferenceService workload pod: its llm-d role (prefill, decode); "" for a predictor pod."""

    @property
    def key(self) -> str:
        """How the demo names the pod: the InferenceService, or the LLMInferenceService and the role."""
        return f"{self.name}-{self.role}" if self.role else self.name


PODS: tuple[DemoPod, ...] = (
    DemoPod("triton-resnet50", "models", "Triton, no GPU settings",
            "nvcr.io/nvidia/tritonserver:24.08-py3",
            args=("tritonserver", "--model-store=/mnt/models", "--http-port=8080", "--grpc-port=9000")),
    DemoPod("llama3-8b", "llm-prod", "vLLM, llm-* namespace",
            "vllm/vllm-openai:v0.6.3", command=("python3", "-m", "vllm.entrypoints.openai.api_server"),
            args=("--model=/mnt/models", "--port=8080")),
    DemoPod("sklearn-iris", "models", "scikit-learn (a CPU-only server)",
            "kserve/sklearnserver:v0.14.0", args=("--model_name=iris", "--model_dir=/mnt/models")),
    DemoPod("distilbert-sst2", "models", "Hugging Face, marked small",
            "kserve/huggingfaceserver:v0.14.0", args=("--model_name=distilbert-sst2", "--model_dir=/mnt/models"),
            labels={"gpuguard.io/model-size": "small"}),
    DemoPod("yolo-detect", "models", "TorchServe, marked small",
            "pytorch/torchserve-kfs:0.9.0", args=("torchserve", "--start", "--model-store=/mnt/models"),
            labels={"gpuguard.io/model-size": "small"}),
    DemoPod("bert-dev", "sandbox-alice", "asks for a time-sliced GPU",
            "ghcr.io/alice/bert-dev:0.3", command=("/app/serve",),
            annotations={"gpuguard.io/sharing": "time-slicing"}),
    DemoPod("mixtral-8x7b", "research", "asks for 2 A100s",
            "kserve/huggingfaceserver:v0.14.0", args=("--model_name=mixtral", "--model_dir=/mnt/models"),
            annotations={"gpuguard.io/gpu-count": "2", "gpuguard.io/gpu-product": "NVIDIA-A100-SXM4-80GB"}),
    DemoPod("qwen2-7b", "dra-pool", "vLLM on the DRA node pool",
            "vllm/vllm-openai:v0.6.3", command=("python3", "-m", "vllm.entrypoints.openai.api_server"),
            args=("--model=/mnt/models", "--port=8080")),
    DemoPod("tiny-bert", "models", "asks for half a GPU",
            "pytorch/torchserve-kfs:0.9.0", args=("torchserve", "--start", "--model-store=/mnt/models"),
            limits={"nvidia.com/gpu": "0.5"}),
    DemoPod("granite-8b", "chat", "LLMInferenceService prefill",
            "ghcr.io/llm-d/llm-d:v0.2.0", command=("vllm", "serve", "/mnt/models"),
            args=("--port", "8000", "--tensor-parallel-size", "1"), role="prefill"),
    DemoPod("granite-8b", "chat", "LLMInferenceService decode",
            "ghcr.io/llm-d/llm-d:v0.2.0", command=("vllm", "serve", "/mnt/models"),
            args=("--port", "8001", "--tensor-parallel-size", "1"), role="decode"),
)
ROUTING_SIDECAR_IMAGE = "ghcr.io/llm-d/llm-d-routing-sidecar:v0.2.0"


def pod_object(pod: DemoPod) -> dict[str, Any]:
    """The pod KServe's controller creates for this demo pod."""
    return workload_pod(pod) if pod.role else predictor_pod(pod)


def workload_pod(pod: DemoPod, *, hash_suffix: str = "5c8e7d6b4a") -> dict[str, Any]:
    """An LLMInferenceService's Deployment pod (single node): model container `main`, the decode pod with the llm-d
    routing sidecar as a native sidecar in front of it."""
    built = predictor_pod(pod, hash_suffix=hash_suffix)
    suffix = "-prefill" if pod.role == "prefill" else ""
    built["metadata"]["generateName"] = f"{pod.name}-kserve{suffix}-{hash_suffix}-"
    built["metadata"]["labels"] = {
        "app.kubernetes.io/component": f"llminferenceservice-workload{suffix}",
        "app.kubernetes.io/name": pod.name,
        "app.kubernetes.io/part-of": "llminferenceservice",
        "kserve.io/component": "workload",
        "llm-d.ai/role": pod.role,
        "pod-template-hash": hash_suffix,
    }
    built["metadata"]["annotations"] = {}
    main = built["spec"]["containers"][0]
    main["name"] = "main"
    main["ports"] = [{"containerPort": 8000 if pod.role == "prefill" else 8001, "protocol": "TCP"}]
    built["spec"]["initContainers"][0]["args"] = [f"hf://ibm-granite/{pod.name}", "/mnt/models"]
    if pod.role == "decode":
        built["spec"]["initContainers"].append({
            "name": "llm-d-routing-sidecar", "image": ROUTING_SIDECAR_IMAGE, "restartPolicy": "Always",
            "args": ["--port=8000", "--vllm-port=8001", "--connector=nixlv2"],
            "ports": [{"containerPort": 8000, "protocol": "TCP"}],
        })
    return built


def predictor_pod(pod: DemoPod, *, hash_suffix: str = "7d9f8c6b5d") -> dict[str, Any]:
    """The pod a Standard-mode InferenceService's ReplicaSet creates: generateName, no name, no namespace."""
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": pod.image,
        "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {"limits": {"cpu": "2", "memory": "8Gi", **pod.limits},
                      "requests": {"cpu": "2", "memory": "8Gi", **pod.limits}},
        "volumeMounts": [{"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "imagePullPolicy": "IfNotPresent",
    }
    if pod.command:
        container["command"] = list(pod.command)
    if pod.args:
        container["args"] = list(pod.args)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{pod.name}-predictor-{hash_suffix}-",
            "labels": {
                "app": f"isvc.{pod.name}-predictor",
                "component": "predictor",
                "serving.kserve.io/inferenceservice": pod.name,
                "pod-template-hash": hash_suffix,
                **pod.labels,
            },
            "annotations": {"serving.kserve.io/deploymentMode": "Standard", **pod.annotations},
        },
        "spec": {
            "initContainers": [{
                "name": "storage-initializer",
                "image": "kserve/storage-initializer:v0.14.0",
                "args": [f"gs://models/{pod.name}", "/mnt/models"],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "100Mi"}},
                "volumeMounts": [{"name": "kserve-provision-location", "mountPath": "/mnt/models"}],
            }],
            "containers": [container],
            "volumes": [{"name": "kserve-provision-location", "emptyDir": {}}],
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
            ],
        },
    }
