"""Which model server a pod or InferenceService runs: triton, vllm, sklearn, ...

Pods carry no label naming their runtime, so it is recognised from the model container the way a person would: the
image (`nvcr.io/nvidia/tritonserver`, `kserve/sklearnserver`, `vllm/vllm-openai`) and then the command line
(`tritonserver --model-store=...`, `python -m vllm.entrypoints...`). InferenceService objects name it more directly
(`spec.predictor.model.modelFormat.name`, or a ServingRuntime name such as `kserve-tritonserver`). The signature
table is data in one place; order matters, most specific first. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

Runtime = Literal[
    "triton", "vllm", "huggingface", "sklearn", "xgboost", "lightgbm", "onnx", "tensorflow", "pytorch", "pmml",
    "paddle", "mlserver", "tgi", "custom",
]
KNOWN_RUNTIMES: tuple[str, ...] = get_args(Runtime)

# (runtime, substrings of an image path or ServingRuntime name, substrings of a command/args word). Images are
# matched loosely (`my-org/triton-custom` is Triton); commands only by server executables, because arguments carry
# free text such as model ids and paths. TGI's image lives under huggingface/, so it goes first; huggingface comes
# before vllm: KServe's Hugging Face server runs vLLM as a backend (`--backend=vllm`).
SIGNATURES: tuple[tuple[Runtime, tuple[str, ...], tuple[str, ...]], ...] = (
    ("triton", ("tritonserver", "triton"), ("tritonserver",)),
    ("tgi", ("text-generation-inference",), ("text-generation-launcher", "text-generation-server")),
    ("huggingface", ("huggingfaceserver", "huggingface"), ("huggingfaceserver",)),
    ("vllm", ("vllm",), ("vllm",)),
    ("sklearn", ("sklearnserver", "sklearn"), ("sklearnserver",)),
    ("xgboost", ("xgbserver", "xgboost"), ("xgbserver",)),
    ("lightgbm", ("lgbserver", "lightgbm"), ("lgbserver",)),
    ("pmml", ("pmmlserver",), ("pmmlserver",)),
    ("paddle", ("paddleserver",), ("paddleserver",)),
    ("tensorflow", ("tensorflow/serving", "tensorflow-serving", "tfserving"), ("tensorflow_model_server",)),
    ("pytorch", ("torchserve",), ("torchserve",)),
    ("onnx", ("onnxruntime",), ("onnxruntime_server",)),
    ("mlserver", ("mlserver",), ("mlserver",)),
)

# The model-server image KServe's stock ServingRuntime uses for each runtime (a representative one where there is
# none), for building the predictor pod an InferenceService will get when the manifest names no image.
RUNTIME_IMAGES: Mapping[Runtime, str] = {
    "triton": "nvcr.io/nvidia/tritonserver:24.08-py3",
    "vllm": "vllm/vllm-openai:v0.6.3",
    "huggingface": "kserve/huggingfaceserver:v0.14.0",
    "tgi": "ghcr.io/huggingface/text-generation-inference:2.4",
    "sklearn": "kserve/sklearnserver:v0.14.0",
    "xgboost": "kserve/xgbserver:v0.14.0",
    "lightgbm": "kserve/lgbserver:v0.14.0",
    "pmml": "kserve/pmmlserver:v0.14.0",
    "paddle": "kserve/paddleserver:v0.14.0",
    "tensorflow": "tensorflow/serving:2.6.2",
    "pytorch": "pytorch/torchserve-kfs:0.9.0",
    "onnx": "mcr.microsoft.com/onnxruntime/server:latest",
    "mlserver": "docker.io/seldonio/mlserver:1.6.0",
}

# KServe modelFormat names that are not spelled like the runtime.
_FORMAT_ALIASES: Mapping[str, Runtime] = {"tensorrt": "triton", "tritonserver": "triton", "hf": "huggingface"}


def runtime_of_container(container: Mapping[str, Any]) -> Runtime:
    """Recognise the runtime from a container's image, then its command and args; `custom` if nothing matches."""
    image = _image_path(str(container.get("image") or ""))
    found = _first_signature([image], loose=True)
    if found is not None:
        return found
    words = [str(w).lower() for w in (*_words(container.get("command")), *_words(container.get("args")))]
    return _first_signature(words, loose=False) or "custom"


def _words(value: Any) -> list[Any]:
    """A command or args list; anything else (null, a string, a number in a hand-written object) has no words."""
    return value if isinstance(value, list) else []


def runtime_of_model_format(model_format: str | None, serving_runtime: str | None) -> Runtime:
    """Recognise the runtime of an InferenceService predictor from its ServingRuntime name or model format."""
    if serving_runtime:
        found = _first_signature([serving_runtime.lower()], loose=True)
        if found is not None:
            return found
    name = (model_format or "").lower()
    if name in KNOWN_RUNTIMES:
        return name  # type: ignore[return-value]  # membership checked against the Literal's values
    return _FORMAT_ALIASES.get(name, "custom")


def _image_path(image: str) -> str:
    """`registry:5000/org/name:tag@sha256:...` -> `org/name`, lower case: tags and registries never name a runtime."""
    path = image.lower().split("@", 1)[0]
    host, _, rest = path.partition("/")
    if rest and ("." in host or ":" in host or host == "localhost"):
        path = rest
    name, _, _tag = path.rpartition(":") if ":" in path else (path, "", "")
    return name


def _first_signature(texts: Iterable[str], *, loose: bool) -> Runtime | None:
    text = "\0".join(texts)  # one search per needle; NUL never occurs in images or arguments
    for runtime, image_needles, command_needles in SIGNATURES:
        for needle in image_needles if loose else command_needles:
            if needle in text:
                return runtime
    return None
