"""Full-Node extender requests: today's splitter beside kept JSON decoders, on the same 5,000-Node body.

    python bench/full_node_decoders.py [--nodes 5000] [--rounds 15]

kube-scheduler sends every candidate Node with every pod when the extender is not `nodeCacheCapable` (about 21 MB
for 5,000 GPU nodes here, the Nodes of `bench/extender_bench.py`'s cluster in Go's compact encoding). What a
decoder must do per request is the parse step of `/filter` and `/prioritize`: from the body to the Pod and the
list of Node objects, each with its original text so that unchanged Nodes reuse the previous request's objects and
a filter that keeps every Node sends the items back without encoding them again. Rows:

- `parse_args, Node texts known`: today's path on every request after the first (gpuguard.contracts.extender: the
  hand-written splitter finds the Node boundaries and looks each text up among the previous request's).
- `parse_args, first request`: the same with nothing known (the splitter then decodes every Node).
- `json.loads`, `orjson.loads`, `msgspec.json.decode`: the whole body decoded to Python objects, no texts kept.
- `msgspec Raw items + lookup`: msgspec decodes the envelope and hands back each Node's text as `msgspec.Raw`
  without decoding it; the texts are looked up among the previous request's and only new ones decoded (what a
  replacement of the splitter by msgspec would do; Go's case-insensitive keys and the checks for lone surrogates
  and nesting would come on top).

Each row is the median and the slowest of `--rounds` calls in this process, after one warm-up call. orjson and
msgspec are optional here: a row whose library is not installed says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.extender_bench import _go_json, build_cluster, pod_object  # noqa: E402
from gpuguard.contracts.extender import parse_args  # noqa: E402


def body_of(n: int, seed: int) -> bytes:
    nodes, _, _ = build_cluster(n, seed)
    for i, node in enumerate(nodes):
        node["metadata"]["resourceVersion"] = str(5000 + i)
    pod = pod_object("full-0", "nvidia.com/gpu", 1, None, None)
    return _go_json({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None})


def timed(call: Callable[[], Any], rounds: int) -> tuple[float, float]:
    call()
    gc.collect()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples), max(samples)


def candidates(body: bytes) -> dict[str, Callable[[], Any] | str]:
    known = parse_args(body).nodes.known_texts()  # type: ignore[union-attr]
    rows: dict[str, Callable[[], Any] | str] = {
        "parse_args, Node texts known": lambda: parse_args(body, known_nodes=known),
        "parse_args, first request": lambda: parse_args(body),
        "json.loads": lambda: json.loads(body),
    }
    try:
        import orjson

        rows["orjson.loads"] = lambda: orjson.loads(body)
    except ImportError:
        rows["orjson.loads"] = "orjson not installed"
    try:
        import msgspec
    except ImportError:
        rows["msgspec.json.decode"] = rows["msgspec Raw items + lookup"] = "msgspec not installed"
        return rows

    node_items = msgspec.defstruct("NodeItems", [("items", list[msgspec.Raw], [])])
    envelope_type = msgspec.defstruct("Args", [("Pod", dict[str, Any], {}), ("Nodes", Optional[node_items], None)])
    envelope = msgspec.json.Decoder(envelope_type)
    node = msgspec.json.Decoder(dict[str, Any])
    by_bytes = {text.encode(): item for text, item in known.items()}

    def raw_items() -> tuple[dict[str, Any], list[dict[str, Any]], list[bytes]]:
        args = envelope.decode(body)
        texts = [bytes(raw) for raw in args.Nodes.items] if args.Nodes else []
        items = [by_bytes.get(text) or node.decode(text) for text in texts]
        return args.Pod, items, texts

    rows["msgspec.json.decode"] = lambda: msgspec.json.decode(body)
    rows["msgspec Raw items + lookup"] = raw_items
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    body = body_of(args.nodes, args.seed)
    print(f"{args.nodes} Nodes, body {len(body) / 1e6:.1f} MB; median / max of {args.rounds} calls (ms)")
    results = {}
    for name, call in candidates(body).items():
        if isinstance(call, str):
            print(f"  {name:<32} {call}")
            continue
        median, slowest = timed(call, args.rounds)
        results[name] = {"median_ms": round(median, 1), "max_ms": round(slowest, 1)}
        print(f"  {name:<32} {median:8.1f} {slowest:8.1f}", flush=True)
    print(json.dumps({"nodes": args.nodes, "body_mb": round(len(body) / 1e6, 2), "rows": results}))


if __name__ == "__main__":
    main()
