"""Structure-aware JSON mutation driven by libFuzzer's bytes, shared by every fuzz target under bench/fuzz/.

libFuzzer mutates bytes; a JSON request mangled byte by byte is mostly refused by the parser, which teaches little
about the decision code behind it. Each target therefore also runs inputs through `mutated_json`: a realistic seed
document, then a few edits chosen by the bytes (replace a value anywhere with one of `INTERESTING`, a fuzzed
string or number; delete a key; add a known key; repeat a key in the text, which JSON parsers resolve differently),
serialized compactly as Kubernetes components send it; sometimes a value nested hundreds of levels deep that ends
in a UTF-16 escape, mostly a lone surrogate, is put in front of a key (`nest_an_escape`). The same bytes always give
the same document, so every crash reproduces from its saved input.

`on_the_wire` then sends the body the way a client may: as it is, or under a `Content-Encoding` (gzip, several gzip
members, zlib or raw deflate) that decodes to it, or one that must be refused (a truncated stream, data after the
stream, garbage behind a gzip header, an encoding nobody speaks, a body larger than the limit once decoded).
`read_wire` checks the server's decoder against what was sent.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import atheris

from gpuguard.web.bodies import UnreadableBody, decode_body

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
    if fdp.ConsumeIntInRange(0, 7) == 0:
        text = nest_an_escape(text, fdp)
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


ESCAPES = ("\\ud800", "\\udfff", "\\uDBFF", "\\ud83d", "\\ude00x", "\\ud83d\\ude00", "\\u00e9", "\\u0000")
"""UTF-16 escapes as JSON text: lone surrogates (high, low, upper case, one before text), a valid pair, others."""
DEEP = 1_100
"""Deeper than the decoders' limits (Python's recursion limit, about 1,000 levels, bounds the extender's)."""


def nest_an_escape(text: str, fdp: atheris.FuzzedDataProvider) -> str:
    """Put `"key":[[...["\\ud800"]...]],` (or `{"a":` levels) in front of an existing key: a value nested 1 to
    `DEEP` levels, or (half the time) to within a few dozen levels of Python's recursion limit as it stands at this
    depth of the stack, counting the levels around the key, ending in a UTF-16 escape. A second pass over such a body
    (a surrogate check, say) a frame deeper than the first is where a depth limit was missed: that happens at one
    depth only, so the depths tried cluster there."""
    key = _a_key(text, fdp)
    if key is None:
        return text
    start, end = key
    if fdp.ConsumeBool():
        depth = fdp.ConsumeIntInRange(1, DEEP)
    else:
        headroom = sys.getrecursionlimit() - len(inspect.stack(0)) - _depth_at(text, start)
        depth = max(1, headroom + fdp.ConsumeIntInRange(-30, 10))
    opener, closer = ("[", "]") if fdp.ConsumeBool() else ('{"a":', "}")
    value = f'{opener * depth}"{ESCAPES[fdp.ConsumeIntInRange(0, len(ESCAPES) - 1)]}"{closer * depth}'
    return f"{text[:start]}{text[start:end + 1]}:{value},{text[start:]}"


def _depth_at(text: str, position: int) -> int:
    """How many arrays and objects are open at `position` of a JSON text."""
    return _nesting(text[:position].encode("utf-8", "surrogatepass"))[0]


@dataclass(frozen=True, slots=True)
class Wire:
    """A body as a client sent it: the bytes, its `Content-Encoding`, and what the server must make of them."""

    raw: bytes
    coding: str | None
    status: int = 0
    """0: it must decode to `decoded`; otherwise the 4xx it must be refused with."""
    decoded: bytes | None = None
    limit: int | None = None
    """A smaller body limit than the service's, to meet it cheaply after decompression."""


def _gzip(body: bytes) -> bytes:
    encoder = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return encoder.compress(body) + encoder.flush()


def _raw_deflate(body: bytes) -> bytes:
    """Raw deflate (no zlib header), unless its first bytes happen to read as a zlib header: then zlib format,
    since a server can only tell the two apart by that header."""
    encoder = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = encoder.compress(body) + encoder.flush()
    looks_like_zlib = len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
    return zlib.compress(body) if looks_like_zlib else raw


def on_the_wire(data: bytes, body: bytes) -> Wire:
    """How the body travels, chosen by a checksum of the fuzz input (so the body's own bytes stay libFuzzer's):
    half as it is, the rest under one of the encodings above."""
    choice = zlib.crc32(data) % 32
    if choice < 16:
        return Wire(body, None)
    half = len(body) // 2
    return [
        lambda: Wire(_gzip(body), "gzip"),
        lambda: Wire(_gzip(body[:half]) + _gzip(body[half:]), "x-gzip"),
        lambda: Wire(zlib.compress(body), "deflate"),
        lambda: Wire(_raw_deflate(body), "Deflate"),
        lambda: Wire(_gzip(body), " GZIP "),
        lambda: Wire(body, "identity"),
        lambda: Wire(_gzip(b""), "gzip", decoded=b""),
        lambda: Wire(_gzip(body)[:-9], "gzip", 400),
        lambda: Wire(_gzip(body) + b"garbage", "gzip", 400),
        lambda: Wire(zlib.compress(body) + b"\x00", "deflate", 400),
        lambda: Wire(b"\x1f\x8b" + body, "gzip", 400),
        lambda: Wire(b"\xff" + body, "deflate", 400),  # block type 3 is reserved: never valid deflate
        lambda: Wire(b"", "gzip", 400),
        lambda: Wire(_gzip(body), "br", 415),
        lambda: Wire(_gzip(body), "gzip, gzip", 415),
        lambda: Wire(_gzip(body + b" "), "gzip", 413, limit=len(body)),
    ][choice - 16]()


def nesting(body: bytes) -> int:
    """How deep the body's arrays and objects nest, read from the text (strings skipped), whether or not it parses."""
    return _nesting(body)[1]


def _nesting(body: bytes) -> tuple[int, int]:
    """Levels open at the end of `body`, and the deepest level reached."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return depth, deepest


class WireBroken(AssertionError):
    """The body decoder did not do what the encoding on the wire calls for."""


def received(data: bytes, seeds: Sequence[Any], focus: Sequence[Focus], limit: int,
             stats: Counter[str]) -> bytes | None:
    """The body a target's checks see for one fuzz input: made by `body_of`, sent by `on_the_wire`, read back by
    `read_wire` (None when the server refused it, as it had to); counted in the target's `stats`."""
    body, structured = body_of(data, seeds, focus=focus)
    stats["inputs"] += 1
    stats["structured"] += structured
    wire = on_the_wire(data, body)
    stats["encoded"] += wire.coding is not None
    decoded = read_wire(wire, body, limit)
    if decoded is None:
        stats[f"refused-{wire.status}"] += 1
    return decoded


def read_wire(wire: Wire, body: bytes, limit: int) -> bytes | None:
    """The decoded body, checked to be the one sent; None when it was refused, as it had to be."""
    try:
        decoded = decode_body(wire.raw, wire.coding, limit=wire.limit if wire.limit is not None else limit)
    except UnreadableBody as error:
        if error.status != wire.status:
            raise WireBroken(f"{wire.coding!r}: refused with {error.status}, expected {wire.status or 'a body'}"
                             ) from None
        return None
    if wire.status:
        raise WireBroken(f"{wire.coding!r}: decoded a body that had to be refused with {wire.status}")
    if decoded != (body if wire.decoded is None else wire.decoded):
        raise WireBroken(f"{wire.coding!r}: decoded to other bytes than were sent")
    return decoded


def _repeat_a_key(text: str, fdp: atheris.FuzzedDataProvider) -> str:
    """Insert `"key":value,` in front of an existing `"key":`, so the key appears twice in one object."""
    key = _a_key(text, fdp)
    if key is None:
        return text
    start, end = key
    value = json.dumps(_value(fdp), separators=(",", ":"))
    return f"{text[:start]}{text[start:end + 1]}:{value},{text[start:]}"


def _a_key(text: str, fdp: atheris.FuzzedDataProvider) -> tuple[int, int] | None:
    """Where one object key of a compact JSON text starts (its opening quote) and ends (its closing quote), chosen
    by the bytes; None when the choice is not a key after all (a string value that happens to contain `":`)."""
    positions = [i for i in range(len(text)) if text.startswith('":', i)]
    if not positions:
        return None
    end = positions[fdp.ConsumeIntInRange(0, len(positions) - 1)]
    start = text.rfind('"', 0, end)
    if start <= 0 or text[start - 1] not in "{,":
        return None
    return start, end
