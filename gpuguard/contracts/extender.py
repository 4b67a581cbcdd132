"""The kube-scheduler extender protocol, `k8s.io/kube-scheduler/extender/v1`: what the scheduler sends, what it expects.

The v1 Go types have no JSON tags, so the envelope keys are the Go field names (`Pod`, `Nodes`, `NodeNames`, ...),
and Go decodes them case-insensitively: scheduler releases and hand-written clients send `pod`/`nodes`/`nodenames`
too, so requests are read with their top-level keys folded to lower case (the last spelling wins, as in Go). Replies
always use the Go spelling. Nested Pod and Node objects are ordinary Kubernetes JSON and stay plain dicts that
tolerate any field. Scores are integers from MIN_PRIORITY to MAX_PRIORITY (kube-scheduler does not clamp them).

Full-Node requests (`nodeCacheCapable: false`) carry every candidate Node, ~16 MB for 5,000 nodes, and filter must
send the surviving Node objects back. Re-encoding them would cost as much as decoding them, so `parse_args` keeps
each Node's original JSON text and `encode_filter_result` splices the kept texts back unchanged.

A body that is not JSON, or not an ExtenderArgs, raises `InvalidArgs`; servers turn it into the protocol's channel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, RootModel, ValidationError, field_validator

from gpuguard.policy.loading import format_path

MIN_PRIORITY = 0
MAX_PRIORITY = 10
"""extenderv1.MaxExtenderPriority; the scheduler multiplies by the extender's weight and by 100/10."""

_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"
_NODE_START = r'\{(?:"kind":"Node","apiVersion":"v1",)?"metadata":\{'
"""How Go's encoding/json begins a v1.Node (TypeMeta is usually empty, and then omitted, in informer objects)."""
_NODE_BOUNDARY = re.compile(r"\}," + _NODE_START)
_FIRST_NODE = re.compile(_NODE_START)


class InvalidArgs(ValueError):
    """The body is not a usable extender request; the message names the field and what is wrong."""


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class NodeList(WireModel):
    """v1.NodeList. `items` are Node objects as plain dicts; their original JSON text is kept when parsed."""

    items: list[dict[str, Any]] = Field(default_factory=list)
    _raw: tuple[str, ...] | None = PrivateAttr(default=None)
    _whole: str | None = PrivateAttr(default=None)
    """The original text of the whole items array, while the list is unchanged."""

    @field_validator("items", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value  # Go encodes a nil slice as null

    @classmethod
    def from_raw(cls, items: list[dict[str, Any]], raw: Sequence[str] | None, whole: str | None = None) -> NodeList:
        nodes = cls.model_construct(items=items)
        nodes._raw = tuple(raw) if raw is not None else None
        nodes._whole = whole
        return nodes

    def subset(self, indices: Iterable[int]) -> NodeList:
        """The nodes at these positions, keeping their original JSON text."""
        chosen = list(indices)
        if chosen == list(range(len(self.items))):
            return self
        raw = [self._raw[i] for i in chosen] if self._raw is not None else None
        return NodeList.from_raw([self.items[i] for i in chosen], raw)

    @property
    def raw(self) -> tuple[str, ...] | None:
        """Each item's original JSON text, when the list was parsed from a request."""
        return self._raw

    def known_texts(self) -> dict[str, dict[str, Any]]:
        """Original text -> decoded item, to pass as `known_nodes` when parsing the next request."""
        return dict(zip(self._raw, self.items)) if self._raw is not None else {}

    def to_json(self) -> str:
        return "".join(self.json_parts())

    def json_parts(self) -> list[str]:
        """The encoded list in pieces, so a 16 MB reply is copied once when joined."""
        if self._whole is not None:
            return ['{"metadata":{},"items":', self._whole, "}"]
        if self._raw is None:
            return [self.model_dump_json()]
        return ['{"metadata":{},"items":[', ",".join(self._raw), "]}"]


class ExtenderArgs(WireModel):
    """Filter and prioritize input. Exactly one of `nodes` (full objects) and `node_names` (cache mode) is set."""

    pod: dict[str, Any]
    nodes: NodeList | None = None
    node_names: list[str] | None = Field(default=None, alias="nodenames")

    @property
    def candidate_names(self) -> list[str]:
        """The candidates, in order. A request carrying both lists is answered in full-Node mode (its reply must hold
        Node objects), so the Nodes are the candidates then."""
        if self.nodes is not None:
            return [node_name(item) for item in self.nodes.items]
        return self.node_names or []


def node_name(node: Mapping[str, Any]) -> str:
    """A Node object's metadata.name, read the same way wherever the extender keys a node by it."""
    metadata = node.get("metadata")
    return str(metadata.get("name") or "") if isinstance(metadata, dict) else ""


class ExtenderFilterResult(WireModel):
    nodes: NodeList | None = Field(default=None, alias="Nodes")
    node_names: list[str] | None = Field(default=None, alias="NodeNames")
    failed_nodes: dict[str, str] = Field(default_factory=dict, alias="FailedNodes")
    failed_and_unresolvable_nodes: dict[str, str] = Field(default_factory=dict, alias="FailedAndUnresolvableNodes")
    """Nodes preemption cannot help; they win over FailedNodes."""
    error: str = Field(default="", alias="Error")
    """Non-empty fails this scheduling attempt for the pod (unless the extender is `ignorable`)."""


class HostPriority(WireModel):
    host: str = Field(alias="Host")
    score: int = Field(alias="Score", ge=MIN_PRIORITY, le=MAX_PRIORITY)


HostPriorityList = RootModel[list[HostPriority]]


class ExtenderBindingArgs(WireModel):
    pod_name: str = Field(alias="PodName")
    pod_namespace: str = Field(alias="PodNamespace")
    pod_uid: str = Field(alias="PodUID")
    node: str = Field(alias="Node")


class ExtenderBindingResult(WireModel):
    error: str = Field(default="", alias="Error")


# ------------------------------------------------------------------------------------------------------------ decoding


KnownNodes = Mapping[str, dict[str, Any]]
"""Node JSON texts already decoded (by an earlier request) -> their decoded object, reused instead of decoding again."""


def parse_args(body: bytes | str, *, known_nodes: KnownNodes | None = None) -> ExtenderArgs:
    """Decode an ExtenderArgs body (either key casing); raise `InvalidArgs` naming what is wrong.

    With `known_nodes`, a full-Node request in Go's compact encoding is split at its Node boundaries and every Node
    whose exact text was seen before reuses the earlier object: kube-scheduler sends the same 5,000 Nodes with every
    pod, and decoding them is most of the cost (the last Node is always decoded: only that finds where it ends). Each
    piece is either such a known text or decoded and checked to be exactly one JSON object; anything else falls back
    to decoding the whole list.
    """
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        raise InvalidArgs("the body is not UTF-8 JSON") from None
    try:
        fields = _top_level(text, known_nodes)
    except IndexError:
        raise InvalidArgs("the body ends before its JSON object is closed") from None
    except RecursionError:
        raise InvalidArgs("the body nests JSON deeper than any ExtenderArgs") from None
    except ValueError as error:
        raise InvalidArgs(f"the body is not an ExtenderArgs JSON object: {error}") from None
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(fields):
        raise InvalidArgs("the body escapes a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
    try:
        return ExtenderArgs.model_validate(fields)
    except ValidationError as error:
        details = error.errors(include_url=False)
        problems = "; ".join(f"{_go_name(d['loc'])}: {d['msg']}" for d in details[:5])
        raise InvalidArgs(f"not an ExtenderArgs ({problems})") from None


def _has_lone_surrogate(value: Any) -> bool:
    """Python's decoder accepts `"\\ud800"` alone, which no UTF-8 reply can carry (Go's decoder would have replaced
    it). Only bodies that escape something in the surrogate range are looked at, and the decoded values are walked
    with a stack of their own: a body nested just short of the decoder's limit must not reach Python's recursion
    limit here instead."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and any("\ud800" <= char <= "\udfff" for char in item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, NodeList):
            pending.extend(item.items)
    return False


def _go_name(loc: Sequence[int | str]) -> str:
    names = {"pod": "Pod", "nodes": "Nodes", "nodenames": "NodeNames"}
    return format_path([names.get(str(p), p) if i == 0 else p for i, p in enumerate(loc)])


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def _expect(text: str, i: int, char: str) -> int:
    i = _skip(text, i)
    if i >= len(text) or text[i] != char:
        found = repr(text[i]) if i < len(text) else "end of body"
        raise ValueError(f"expected {char!r} at offset {i}, found {found}")
    return i + 1


def _object(text: str, i: int, member: Callable[[str, int], int]) -> int:
    """Walk the object opening at `i`: member(key, offset of its value) parses the value and returns the offset after
    it. Returns the offset after the closing brace."""
    i = _skip(text, _expect(text, i, "{"))
    if text[i] == "}":
        return i + 1
    while True:
        key, i = _DECODER.raw_decode(text, _skip(text, i))
        if not isinstance(key, str):
            raise ValueError(f"object keys must be strings (offset {i})")
        i = _skip(text, member(key, _skip(text, _expect(text, i, ":"))))
        if text[i] == "}":
            return i + 1
        i = _expect(text, i, ",")


class _NotNodes(ValueError):
    """Valid JSON that is not a NodeList: refused only if no later repeat of the key replaces it."""


def _top_level(text: str, known: KnownNodes | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}

    def member(key: str, at: int) -> int:
        name = key.lower()
        if name == "nodes" and text[at] == "{":
            try:
                fields[name], end = _node_list(text, at, known)
            except _NotNodes as error:  # judged at the end: a repeated key may replace it
                fields[name], end = error, int(_DECODER.raw_decode(text, at)[1])
            return end
        fields[name], end = _DECODER.raw_decode(text, at)
        return end

    end = _object(text, _skip(text, 0), member)
    if _skip(text, end) != len(text):
        raise ValueError(f"unexpected data after the object at offset {end}")
    if isinstance(fields.get("nodes"), _NotNodes):
        raise fields["nodes"]
    return fields


def _node_list(text: str, start: int, known: KnownNodes | None) -> tuple[NodeList, int]:
    items: list[dict[str, Any]] = []
    raw: list[str] = []
    whole: list[str] = []
    wrong: list[str] = []
    """Why the latest `items` is unusable; judged after the whole object, since a repeated key replaces it."""

    def member(key: str, at: int) -> int:
        if key != "items":
            return int(_DECODER.raw_decode(text, at)[1])
        items.clear()  # a repeated key: the last one wins, as in any JSON decoder
        raw.clear()
        wrong.clear()
        if text[at] != "[":
            value, end = _DECODER.raw_decode(text, at)
            if value is not None:  # null is Go's nil slice
                wrong.append(f"Nodes.items must be an array of Node objects, not {type(value).__name__}")
            whole.append("[]")
            return int(end)
        split = _split_compact(text, at, known) if known is not None else None
        try:
            end = _items(text, at, items, raw) if split is None else split[2]
        except _NotNodes as error:
            wrong.append(str(error))
            return int(_DECODER.raw_decode(text, at)[1])
        if split is not None:
            items[:], raw[:] = split[0], split[1]
        whole.append(text[at:end])
        return end

    end = _object(text, start, member)
    if wrong:
        raise _NotNodes(wrong[0])
    return NodeList.from_raw(items, raw, whole[-1] if whole else "[]"), end


def _split_compact(
    text: str, at: int, known: KnownNodes
) -> tuple[list[dict[str, Any]], list[str], int] | None:
    """The items array at `at` split at Go's `},{"metadata":{` Node boundaries, or None to decode it normally.

    A boundary string cannot occur inside a JSON string (its quotes would be escaped), and no field of a Node holds
    objects that start with `metadata`; even so, every piece must be a known Node text or decode to exactly one
    object, and the last Node must be followed by the closing bracket, or the split is abandoned.
    """
    start = at + 1
    if not _FIRST_NODE.match(text, start):
        return None
    items: list[dict[str, Any]] = []
    raw: list[str] = []
    for boundary in _NODE_BOUNDARY.finditer(text, start):
        end = boundary.start() + 1
        item = _one_object(text[start:end], known)
        if item is None:
            return None
        items.append(item)
        raw.append(text[start:end])
        start = end + 1
    try:
        last, end = _DECODER.raw_decode(text, start)
    except ValueError:
        return None
    close = _skip(text, end)
    if not isinstance(last, dict) or close >= len(text) or text[close] != "]":
        return None
    items.append(last)
    raw.append(text[start:end])
    return items, raw, close + 1


def _one_object(piece: str, known: KnownNodes) -> dict[str, Any] | None:
    item = known.get(piece)
    if item is not None:
        return item
    try:
        decoded, end = _DECODER.raw_decode(piece)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) and end == len(piece) else None


def _items(text: str, i: int, items: list[dict[str, Any]], raw: list[str]) -> int:
    i = _skip(text, i + 1)
    if text[i] == "]":
        return i + 1
    while True:
        item, end = _DECODER.raw_decode(text, i)
        if not isinstance(item, dict):
            raise _NotNodes(f"Nodes.items[{len(items)}] is not an object")
        items.append(item)
        raw.append(text[i:end])
        i = _skip(text, end)
        if text[i] == "]":
            return i + 1
        i = _expect(text, i, ",")
        i = _skip(text, i)


# ------------------------------------------------------------------------------------------------------------ encoding


def encode_filter_result(result: ExtenderFilterResult) -> bytes:
    """The reply with Go field names; kept Node texts are spliced in unchanged."""
    rest = result.model_dump_json(by_alias=True, exclude={"nodes"})
    nodes = result.nodes.json_parts() if result.nodes is not None else ["null"]
    return "".join(['{"Nodes":', *nodes, ",", rest[1:]]).encode()


def encode_priorities(hosts: Sequence[str], scores: Sequence[int]) -> bytes:
    """A HostPriorityList: `[{"Host": ..., "Score": ...}]`, in input order."""
    return pydantic_core.to_json([{"Host": h, "Score": s} for h, s in zip(hosts, scores)])


def encode_binding_result(result: ExtenderBindingResult) -> bytes:
    return result.model_dump_json(by_alias=True).encode()
