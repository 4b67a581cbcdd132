"""The demo's workload: KServe predictor pods as KServe creates them, before gpuguard has touched them.

None of them says anything about GPUs except the last two, and the last one gets it wrong: that is the point. Two
carry the label their owners put on small GPU models; one runs a CPU-only server and must get no GPU at all.
Pure data.
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
    DemoPod("tiny-bert", "models", "asks for half a GPU",
            "pytorch/torchserve-kfs:0.9.0", args=("torchserve", "--start", "--model-store=/mnt/models"),
            limits={"nvidia.com/gpu": "0.5"}),
)


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
