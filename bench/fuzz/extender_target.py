"""Fuzz target: the extender's request parsing and its filter/prioritize decisions, with the invariants they promise.

Every input is an ExtenderArgs body: the raw bytes when they start like JSON (libFuzzer mutating kube-scheduler's
payloads from the seed corpus), or else a seed edited as the bytes say by `jsonfuzz.mutated_json`. Half the seeds
are full-Node requests in Go's compact encoding, so the hand-written splitter that reuses unchanged Node texts is
exercised. These must hold (a violation raises `InvariantBroken`, which libFuzzer reports as a crash):

- sent under a `Content-Encoding` (`jsonfuzz.on_the_wire`), the server's body reader gives back exactly the body or
  refuses it with the 4xx the encoding calls for, and raises nothing else (`jsonfuzz.WireBroken`);
- parsing raises nothing but the documented `InvalidArgs`, and accepts exactly the bodies that `json.loads` plus the
  ExtenderArgs model accept (with top-level keys folded to lower case, the last spelling winning, as Go does),
  except that a body nesting deeper than `DEEPEST` levels (no real request comes near) may be refused by any of
  them (with and without known Node texts, and the reference: their paths reach the recursion limit a frame apart);
  nested just short of the limit with a lone-surrogate escape inside (`jsonfuzz.nest_an_escape`), it is refused;
- parsing with known Node texts (the server's reuse of the previous request's Nodes) gives exactly what parsing
  without them gives;
- neither decision raises; filter places every candidate exactly once (kept, failed or unresolvable) or answers an
  error, and its encoded reply is JSON whose Nodes are the kept Node objects, in order; prioritize scores every
  candidate, in order, with an integer from 0 to 10; names mode and full-Node mode agree on the cluster's own Nodes;
- no wrong keeps: a node filter keeps has at least the GPUs the pod's app containers ask for (an independent reading
  of plain integer quantities) and the GPU product the pod's nodeSelector names.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["gpuguard", "scheduler_ext"]):
    from gpuguard.contracts.extender import (
        ExtenderArgs,
        InvalidArgs,
        encode_filter_result,
        encode_priorities,
        node_name,
        parse_args,
    )
    from gpuguard.k8s.cluster_state import ClusterStateFile
    from gpuguard.policy.loading import default_policy
    from gpuguard.web.bodies import decode_body  # noqa: F401  (instrumented here; jsonfuzz.read_wire calls it)
    from scheduler_ext.extender import decide_filter, decide_filter_names, decide_priorities, decide_priorities_names
    from scheduler_ext.inventory.store import InventoryStore
    from scheduler_ext.settings import MAX_BODY_BYTES

from pydantic import ValidationError

from bench.fuzz import jsonfuzz

logging.disable(logging.CRITICAL)  # the store reports every broken inventory annotation the fuzzer writes
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "extender"
INVENTORY_TIME = 1772445600.0
"""2026-03-02T10:00:00Z, the `ts` of every inventory annotation in the cluster file."""
NOW = INVENTORY_TIME + 30
SCHEDULING = default_policy().scheduling
PRODUCT = "nvidia.com/gpu.product"
PLAIN = re.compile(r"[0-9]{1,6}")
DEEPEST = 900
"""Nesting up to which parse_args and json.loads must agree; beyond it, each stops at Python's recursion limit,
which depends on how deep the stack already is."""


class InvariantBroken(AssertionError):
    """A promise of the extender did not hold for this input."""


CLUSTER = ClusterStateFile(DATA / "cluster.json").load()
CLUSTER_NODES = CLUSTER.nodes


def _store() -> InventoryStore:
    store = InventoryStore(pods_known=True)
    store.replace_nodes(CLUSTER.nodes.values())
    store.replace_pods(CLUSTER.pods)
    return store


STORE = _store()
"""The names-mode cache, shared by all inputs as in a running server (names requests never change it)."""
stats: Counter[str] = Counter()


def _go_node(node: dict[str, Any]) -> dict[str, Any]:
    """A Node with its fields in Go's order (TypeMeta, metadata, spec, status), as kube-scheduler encodes it."""
    order = ("kind", "apiVersion", "metadata", "spec", "status")
    return {key: node[key] for key in order if key in node}


def seeds() -> list[Any]:
    """kube-scheduler's payloads from the tests, and generated pods with names and full-Node candidate lists."""
    found = [json.loads(p.read_text()) for p in sorted(DATA.glob("args-*.json"))]
    names = list(CLUSTER_NODES)
    for index, pod in enumerate(_generated_pods(40)):
        chosen = names[index % 3:] + (["gpu-new-0"] if index % 4 == 0 else [])
        if index % 2:
            items = [_go_node(CLUSTER_NODES[n]) for n in chosen if n in CLUSTER_NODES]
            found.append({"Pod" if index % 3 else "pod": pod, "Nodes": {"metadata": {}, "items": items}})
        else:
            found.append({"Pod" if index % 3 else "pod": pod, "NodeNames" if index % 5 else "nodenames": chosen})
    return found


def _generated_pods(count: int) -> list[Any]:
    from tests.strategies import kserve

    return jsonfuzz.examples(kserve.predictor_pods(realistic=False, in_scope=None), count)


SEEDS = seeds()
KNOWN = {text: node for seed in SEEDS if isinstance(seed.get("Nodes"), dict)
         for text, node in parse_args(json.dumps(seed, separators=(",", ":"))).nodes.known_texts().items()}  # type: ignore[union-attr]
"""Node texts a previous request carried, as the server remembers them."""


def corpus() -> Iterator[bytes]:
    for seed in SEEDS:
        yield json.dumps(seed, separators=(",", ":")).encode()
    for index in range(1, 33):
        yield bytes([index]) * 96


_GPU_KEYS = ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb", "nvidia.com/gpu.shared")
_CONTAINER = (("Pod", "pod"), "spec", ("containers", "containers", "initContainers"), "*")
_NODE = ("Nodes", "items", "*")
FOCUS: tuple[jsonfuzz.Focus, ...] = (
    (*_CONTAINER, "resources", ("limits", "requests"), _GPU_KEYS),
    (*_CONTAINER, "resources", ("limits", "requests"), _GPU_KEYS),
    (*_CONTAINER, ("resources", "restartPolicy")),
    (("Pod", "pod"), "spec", "nodeSelector", PRODUCT),
    (("Pod", "pod"), "spec", ("affinity", "nodeSelector", "initContainers", "containers")),
    (*_NODE, "metadata", ("name", "labels", "annotations")),
    (*_NODE, "metadata", "labels", (PRODUCT, "nvidia.com/gpu.replicas", "nvidia.com/mig.strategy")),
    (*_NODE, "metadata", "annotations", "gpuguard.io/gpu-inventory"),
    (*_NODE, "status", ("allocatable", "capacity"), _GPU_KEYS),
    (("NodeNames", "nodenames", "Nodes", "nodes", "Pod", "pod"),),
    ("NodeNames", "*"),
)
"""Where the decisions read: the structured mode puts half of its edits here."""

DICTIONARY = (
    b'"Pod"', b'"pod"', b'"Nodes"', b'"nodes"', b'"NodeNames"', b'"nodenames"', b'"items"', b'},{"metadata":{',
    b'{"kind":"Node","apiVersion":"v1","metadata":{', b'"nvidia.com/gpu"', b'"nvidia.com/mig-1g.10gb"',
    b'"nvidia.com/gpu.product"', b'"gpuguard.io/gpu-inventory"', b'"allocatable"', b"Infinity", b"NaN", b"1e999",
    b"null", b"[]", b"{}", b"\\u0000", b"\\ud800", b"[[[[[[[[[[[[[[[[", b'{"a":{"a":{"a":',
)


def test_one_input(data: bytes) -> None:
    decoded = jsonfuzz.received(data, SEEDS, FOCUS, MAX_BODY_BYTES, stats)
    if decoded is None:
        return
    check(decoded)


def check(body: bytes) -> None:
    plain, remembered, reference = _parse(body, None), _parse(body, KNOWN), _reference(body)
    deep = jsonfuzz.nesting(body) > DEEPEST
    stats["nested-deeper"] += deep
    if deep and len({plain is None, remembered is None, reference is None}) > 1:
        stats["nested-deeper-refused-by-some"] += 1  # each decoder path stops a frame or two apart
        plain = reference = remembered = None
    if (plain is None) != (reference is None):
        raise InvariantBroken(f"parse_args {'accepted' if plain else 'refused'} a body json.loads "
                              f"{'refused' if plain else 'accepted'}")
    if (plain is None) != (remembered is None) or (plain is not None and not _same(plain, remembered)):
        raise InvariantBroken("parsing with known Node texts differs from parsing without them")
    if plain is None or reference is None:
        stats["invalid"] += 1
        return
    if not _same(plain, reference):
        raise InvariantBroken("parse_args decoded a different request from json.loads")
    stats["valid"] += 1
    stats["full-nodes" if plain.nodes is not None else "names"] += 1
    _check_decisions(plain)


def _parse(body: bytes, known: dict[str, dict[str, Any]] | None) -> ExtenderArgs | None:
    try:
        return parse_args(body, known_nodes=known)
    except InvalidArgs:
        return None


def _reference(body: bytes) -> ExtenderArgs | None:
    """The same request decoded by json.loads and validated by the model: no hand-written walking."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None  # a lone surrogate escape: not text, no reply could carry it
    try:
        return ExtenderArgs.model_validate({key.lower(): value for key, value in document.items()})
    except ValidationError:
        return None


def _same(one: ExtenderArgs, other: ExtenderArgs | None) -> bool:
    if other is None:
        return False
    items = [(args.nodes.items if args.nodes is not None else None) for args in (one, other)]
    return json.dumps([one.pod, one.node_names, items[0]], sort_keys=True) == json.dumps(
        [other.pod, other.node_names, items[1]], sort_keys=True)


# ----------------------------------------------------------------------------------------------------- decisions


def _check_decisions(args: ExtenderArgs) -> None:
    names = args.candidate_names
    if args.nodes is not None:
        # A fresh store: its per-request memo trusts that a Node with the same resourceVersion is the same object, as
        # Kubernetes guarantees, and the fuzzer edits Nodes without bumping it.
        states = _store().states_for_objects(args.nodes.items)
        filtered = decide_filter(args, states, utilization={}, scheduling=SCHEDULING, now=NOW)
        hosts, scores = decide_priorities(args, states, utilization={}, scheduling=SCHEDULING, now=NOW)
        objects = {node_name(item): item for item in args.nodes.items}
    else:
        filtered = decide_filter_names(args, STORE.index, utilization={}, scheduling=SCHEDULING, now=NOW)
        hosts, scores = decide_priorities_names(args, STORE.index, utilization={}, scheduling=SCHEDULING, now=NOW)
        objects = CLUSTER_NODES
    reply = json.loads(encode_filter_result(filtered.result))
    _check_scores(names, hosts, scores)
    if reply["Error"]:
        stats["filter-error"] += 1
        return
    kept = _check_placement(args, names, reply)
    _check_no_wrong_keep(args.pod, kept, objects)
    if args.nodes is not None and _unchanged_cluster_nodes(args):
        _check_modes_agree(args, reply)


def _check_scores(names: Sequence[str], hosts: Sequence[str], scores: Sequence[int]) -> None:
    if list(hosts) != list(names) or len(scores) != len(names):
        raise InvariantBroken("prioritize did not score every candidate in request order")
    if any(type(score) is not int or not 0 <= score <= 10 for score in scores):
        raise InvariantBroken(f"a score outside the integers 0..10: {scores}")
    json.loads(encode_priorities(hosts, scores))
    stats["scored-nonzero"] += any(scores)


def _check_placement(args: ExtenderArgs, names: Sequence[str], reply: dict[str, Any]) -> list[str]:
    if args.nodes is not None:
        kept_items = reply["Nodes"]["items"]
        kept = [node_name(item) for item in kept_items]
        by_name = {node_name(item): item for item in args.nodes.items}
        if len(by_name) == len(args.nodes.items) and any(by_name[n] != item for n, item in zip(kept, kept_items)):
            raise InvariantBroken("filter sent back Node objects that differ from the ones it was given")
    else:
        kept = reply["NodeNames"]
    failed, unresolvable = set(reply["FailedNodes"]), set(reply["FailedAndUnresolvableNodes"])
    if len(set(names)) == len(names):  # with repeated names a set cannot tell; kube-scheduler never repeats one
        if kept != [n for n in names if n in set(kept)]:
            raise InvariantBroken("filter reordered the kept nodes")
        if failed & unresolvable or set(kept) & (failed | unresolvable) or set(kept) | failed | unresolvable != set(names):
            raise InvariantBroken("filter did not place every candidate exactly once")
    stats["kept-some"] += bool(kept)
    return kept


def _check_no_wrong_keep(pod: Any, kept: Sequence[str], objects: dict[str, dict[str, Any]]) -> None:
    wanted, product = _asked(pod)
    for name in kept:
        node = objects.get(name)
        if not isinstance(node, dict):
            continue
        allocatable = _child(_child(node, "status"), "allocatable")
        for resource, count in wanted.items():
            have = allocatable.get(resource)
            if isinstance(have, str) and PLAIN.fullmatch(have) and int(have) < count:
                raise InvariantBroken(f"kept {name} with {have} {resource} for a pod asking {count}")
            if have is None and count:
                raise InvariantBroken(f"kept {name}, which has no {resource}, for a pod asking {count}")
        has = _child(_child(node, "metadata"), "labels").get(PRODUCT)
        if wanted and product and isinstance(has, str) and _base(has) != _base(product):
            raise InvariantBroken(f"kept {name} ({has}) for a pod that selects {product}")
        stats["keeps-checked"] += bool(wanted)


def _child(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def _asked(pod: Any) -> tuple[dict[str, int], str | None]:
    """GPUs the app containers ask for, summed, where every quantity is a plain integer; the selected product."""
    spec = pod.get("spec") if isinstance(pod, dict) else None
    containers = spec.get("containers") if isinstance(spec, dict) else None
    wanted: dict[str, int] = {}
    for container in containers if isinstance(containers, list) else []:
        resources = container.get("resources") if isinstance(container, dict) else None
        if not isinstance(resources, dict):
            continue
        limits, requests = (resources.get(k) if isinstance(resources.get(k), dict) else {} for k in ("limits",
                                                                                                   "requests"))
        for resource in {**limits, **requests}:
            if not (resource == "nvidia.com/gpu" or resource.startswith("nvidia.com/mig-")):
                continue
            value = requests.get(resource, limits.get(resource))
            if not isinstance(value, str) or not PLAIN.fullmatch(value):
                return {}, None  # odd quantities are the parser's business (the pod cannot be judged)
            wanted[resource] = wanted.get(resource, 0) + int(value)
    selector = spec.get("nodeSelector") if isinstance(spec, dict) else None
    product = selector.get(PRODUCT) if isinstance(selector, dict) else None
    return {k: v for k, v in wanted.items() if v}, product if isinstance(product, str) else None


def _base(product: str) -> str:
    return product.removesuffix("-SHARED")


def _unchanged_cluster_nodes(args: ExtenderArgs) -> bool:
    items = args.nodes.items if args.nodes is not None else []
    return all(CLUSTER_NODES.get(node_name(item)) == item for item in items)


def _check_modes_agree(args: ExtenderArgs, full_reply: dict[str, Any]) -> None:
    names_args = args.model_copy(update={"nodes": None, "node_names": args.candidate_names})
    names_reply = json.loads(encode_filter_result(
        decide_filter_names(names_args, STORE.index, utilization={}, scheduling=SCHEDULING, now=NOW).result))
    kept = [str(item["metadata"]["name"]) for item in full_reply["Nodes"]["items"]]
    if names_reply["NodeNames"] != kept:
        raise InvariantBroken(f"names mode kept {names_reply['NodeNames']}, full-Node mode {kept}")
    stats["modes-compared"] += 1


def report() -> dict[str, int]:
    return dict(stats)

