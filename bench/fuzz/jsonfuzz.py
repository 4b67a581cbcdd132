"""Structure-aware JSON mutation driven by libFuzzer's bytes, shared by every fuzz target under bench/fuzz/.

libFuzzer mutates bytes; a JSON request mangled byte by byte is mostly refused by the parser, which teaches little
about the decision code behind it. Each target therefore also runs inputs through `mutated_json`: a realistic seed
document, then a few edits chosen by the bytes (replace a value anywhere with one of `INTERESTING`, a fuzzed
string or number; delete a key; add a known key; repeat a key in the text, which JSON parsers resolve differently),
serialized compactly as Kubernetes components send it. The same bytes always give the same document, so every
crash reproduces from its saved input.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import atheris

INTERESTING: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 2, 9, 2**63, -(2**63), 10**4000, 0.5, -0.0, 1e308, float("inf"), float("-inf"),
    float("nan"), "", "0", "1", "2", "0.5", "500m", "1000m", "1e3", "1e999", "1e99999999", "1e-99999999",
    "0." + "5" * 5000, "9" * 5000, "-1", "+1", "1Ki", "1.", ".5", " 1", "1 ", "NaN", "Infinity", "0x10", "1_000",
    "１", "\u0000", "\ud7ff", "x" * 70_000, "true", "false", "nvidia.com/gpu", "nvidia.com/mig-1g.10gb",
    "kserve-container", "predictor", "CREATE", "UPDATE", "Pod", '"uid":"x"', "\x00gpuguard-uid\x00", [], {},
    [None], [1, 2], {"a": None}, {"nvidia.com/gpu": "0.5"}, {"privileged": True}, ["tritonserver"],
)
KEYS: tuple[str, ...] = (
    "uid", "kind", "apiVersion", "request", "object", "oldObject", "operation", "namespace", "name", "metadata",
    "labels", "annotations", "spec", "containers", "initContainers", "resources", "limits", "requests",
    "nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/gpu.shared", "securityContext", "privileged",
    "tolerations", "nodeSelector", "schedulerName", "command", "args", "image", "subResource", "dryRun",
    "serving.kserve.io/inferenceservice", "component", "gpuguard.io/skip", "gpuguard.io/gpu-count",
    "gpuguard.io/mig-profile", "gpuguard.io/sharing", "gpuguard.io/gpu-product", "predictor", "model",
    "workerSpec", "transformer", "modelFormat",
)


Focus = tuple[Any, ...]
"""A path pattern: each step a key, a tuple of candidate keys (the bytes pick one), or "*" (an existing child)."""


RAW_STARTS = (b"{", b"[", b" ", b"\n", b'"', b"")
"""Inputs that start like JSON are bodies as they are; any other input drives the structured mode."""


def body_of(data: bytes, seeds: Sequence[Any], *, focus: Sequence[Focus] = ()) -> tuple[bytes, bool]:
    """The request body a fuzz input stands for, and whether it came from the structured mode."""
    if data[:1] in RAW_STARTS:
        return data, False
    return mutated_json(atheris.FuzzedDataProvider(data), seeds, focus=focus), True


def examples(strategy: Any, count: int) -> list[Any]:
    """`count` examples drawn from a hypothesis strategy, the same ones on every run: seeds for `mutated_json`."""
    import warnings

    from hypothesis import HealthCheck, given, settings

    collected: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        collected.append(example)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collect()
    return collected


def mutated_json(fdp: atheris.FuzzedDataProvider, seeds: Sequence[Any], *, focus: Sequence[Focus] = (),
                 max_edits: int = 4) -> bytes:
    """A seed chosen by the bytes, edited by the bytes, serialized (sometimes with a repeated key).

    Half the edits, when the target gives `focus` paths, land on one of those (missing maps on the way are
    created): where the decisions read, a random walk through a 5 KB pod rarely arrives.
    """
    document = copy.deepcopy(seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)])
    for _ in range(fdp.ConsumeIntInRange(1, max_edits)):
        if focus and fdp.ConsumeBool():
            _focused_edit(document, fdp, focus[fdp.ConsumeIntInRange(0, len(focus) - 1)])
        else:
            document = _edit(document, fdp)
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=fdp.ConsumeBool())
    if fdp.ConsumeIntInRange(0, 7) == 0:
        text = _repeat_a_key(text, fdp)
    return text.encode("utf-8", "surrogatepass")


def _edit(document: Any, fdp: atheris.FuzzedDataProvider) -> Any:
    path = _walk(document, fdp)
    action = fdp.ConsumeIntInRange(0, 5)
    if not path:
        return _value(fdp) if action == 0 else document
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == 0 and isinstance(parent, dict):
        del parent[last]
    elif action == 1 and isinstance(parent, dict):
        parent[KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]] = _value(fdp)
    elif action == 2 and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))
    else:
        parent[last] = _value(fdp)
    return document


def _focused_edit(document: Any, fdp: atheris.FuzzedDataProvider, pattern: Focus) -> None:
    node = document
    for index, step in enumerate(pattern):
        if step == "*":
            if not isinstance(node, (dict, list)) or not node:
                return
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]
        elif isinstance(node, dict):
            key = step if isinstance(step, str) else step[fdp.ConsumeIntInRange(0, len(step) - 1)]
        else:
            return
        if index == len(pattern) - 1:
            node[key] = _value(fdp)
            return
        if isinstance(node, dict) and not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]


def _walk(document: Any, fdp: atheris.FuzzedDataProvider) -> list[Any]:
    """A path into the document: at each level the bytes pick a child or stop."""
    path: list[Any] = []
    node = document
    while isinstance(node, (dict, list)) and node and fdp.ConsumeIntInRange(0, 7) != 0:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        step = keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]
        path.append(step)
        node = node[step]
    return path


def _value(fdp: atheris.FuzzedDataProvider) -> Any:
    choice = fdp.ConsumeIntInRange(0, 5)
    if choice <= 2:
        return copy.deepcopy(INTERESTING[fdp.ConsumeIntInRange(0, len(INTERESTING) - 1)])
    if choice == 3:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if choice == 4:
        return fdp.ConsumeIntInRange(-(2**40), 2**40)
    return fdp.ConsumeRegularFloat()


def _repeat_a_key(text: str, fdp: atheris.FuzzedDataProvider) -> str:
    """Insert `"key":value,` in front of an existing `"key":`, so the key appears twice in one object."""
    positions = [i for i in range(len(text)) if text.startswith('":', i)]
    if not positions:
        return text
    end = positions[fdp.ConsumeIntInRange(0, len(positions) - 1)]
    start = text.rfind('"', 0, end)
    if start <= 0 or text[start - 1] not in "{,":
        return text
    key = text[start:end + 1]
    value = json.dumps(_value(fdp), separators=(",", ":"))
    return f"{text[:start]}{key}:{value},{text[start:]}"
