"""The extender wire protocol: requests as kube-scheduler sends them, replies in the Go field names."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gpuguard.contracts.extender import (
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    HostPriority,
    HostPriorityList,
    InvalidArgs,
    encode_binding_result,
    encode_filter_result,
    encode_priorities,
    parse_args,
)
from tests.extender.conftest import payload

NODE_NAMES = ["gpu-h100-mig-a", "gpu-h100-mig-b", "gpu-a100-0", "gpu-a100-1", "gpu-t4-shared"]


@pytest.mark.parametrize("name", ["names", "names-lowercase"])
def test_names_mode_requests_are_read_in_either_key_casing(name: str) -> None:
    args = parse_args(payload(name))
    assert args.node_names == NODE_NAMES
    assert args.nodes is None
    assert args.pod["metadata"]["namespace"] in ("llm-prod", "models")
    assert args.candidate_names == NODE_NAMES


@pytest.mark.parametrize("name", ["nodes", "nodes-lowercase"])
def test_full_node_requests_are_read_in_either_key_casing(name: str) -> None:
    args = parse_args(payload(name))
    assert args.node_names is None
    assert args.nodes is not None
    assert args.candidate_names == NODE_NAMES
    assert args.nodes.items[2]["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_keys_are_case_insensitive_and_the_last_spelling_wins_as_in_go() -> None:
    body = b'{"POD": {"metadata": {"name": "a"}}, "NodeNames": ["x"], "nodeNames": ["y", "z"]}'
    args = parse_args(body)
    assert args.pod["metadata"]["name"] == "a"
    assert args.node_names == ["y", "z"]


def test_unknown_fields_anywhere_are_tolerated() -> None:
    body = {"Pod": {"metadata": {"name": "p"}, "futureField": {"x": 1}}, "Nodes": None, "NodeNames": ["n"],
            "ExtraEnvelopeKey": 1}
    args = parse_args(json.dumps(body).encode())
    assert args.pod["futureField"] == {"x": 1}
    assert args.node_names == ["n"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "expected '{'"),
        (b"not json", "expected '{'"),
        (b"[]", "expected '{'"),
        (b'{"Pod": {}', "ends before"),
        (b'{"Pod": {}} trailing', "unexpected data after"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"Pod": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests JSON deeper"),
        (b'{"Pod": {}, "NodeNames": ["gpu-\\ud800"]}', "lone UTF-16 surrogate"),
        (b'{"NodeNames": ["a"]}', "Pod: Field required"),
        (b'{"Pod": null, "NodeNames": ["a"]}', "Pod: Input should be a valid dictionary"),
        (b'{"Pod": {}, "NodeNames": [1]}', "NodeNames[0]: Input should be a valid string"),
        (b'{"Pod": {}, "Nodes": {"items": [1]}}', "Nodes.items[0] is not an object"),
        (b'{"Pod": {}, "Nodes": "all"}', "Nodes: Input should be a valid dictionary"),
        (b'{"Pod": {}, "Nodes": {"items": {}}}', "Nodes.items must be an array of Node objects, not dict"),
        (b'{"Pod": {}, "Nodes": {"items": "n1"}}', "Nodes.items must be an array of Node objects, not str"),
    ],
)
def test_malformed_bodies_raise_a_message_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgs, match=message.replace("[", r"\[")):
        parse_args(body)


def test_filter_result_uses_the_go_field_names() -> None:
    result = ExtenderFilterResult(
        node_names=["a"], failed_nodes={"b": "full"}, failed_and_unresolvable_nodes={"c": "no GPU"}, error=""
    )
    assert json.loads(encode_filter_result(result)) == {
        "Nodes": None, "NodeNames": ["a"], "FailedNodes": {"b": "full"},
        "FailedAndUnresolvableNodes": {"c": "no GPU"}, "Error": "",
    }


def test_full_node_filter_results_carry_the_original_node_json_unchanged() -> None:
    body = payload("nodes").decode()
    args = parse_args(body.encode())
    assert args.nodes is not None
    kept = args.nodes.subset([2, 4])
    reply = encode_filter_result(ExtenderFilterResult(nodes=kept))
    decoded = json.loads(reply)
    assert [n["metadata"]["name"] for n in decoded["Nodes"]["items"]] == ["gpu-a100-0", "gpu-t4-shared"]
    assert decoded["Nodes"]["items"] == [args.nodes.items[2], args.nodes.items[4]]
    original = json.dumps(json.loads(body)["Nodes"]["items"][2], separators=(",", ":"))
    assert original in reply.decode()  # byte for byte, not re-encoded


def test_nodes_built_in_code_are_encoded_normally() -> None:
    from gpuguard.contracts.extender import NodeList

    nodes = NodeList(items=[{"metadata": {"name": "n"}}])
    decoded = json.loads(encode_filter_result(ExtenderFilterResult(nodes=nodes)))
    assert decoded["Nodes"]["items"] == [{"metadata": {"name": "n"}}]


def test_priorities_are_a_json_array_of_host_and_score() -> None:
    encoded = encode_priorities(["a", "b\"c"], [10, 0])
    assert json.loads(encoded) == [{"Host": "a", "Score": 10}, {"Host": 'b"c', "Score": 0}]
    assert HostPriorityList.model_validate_json(encoded).root[0] == HostPriority(host="a", score=10)


@pytest.mark.parametrize("score", [-1, 11])
def test_host_priority_refuses_scores_outside_0_to_10(score: int) -> None:
    with pytest.raises(ValidationError):
        HostPriority.model_validate({"Host": "a", "Score": score})


def test_binding_args_and_result_use_the_go_field_names() -> None:
    args = ExtenderBindingArgs.model_validate(
        {"PodName": "p", "PodNamespace": "ns", "PodUID": "u-1", "Node": "gpu-a100-0"}
    )
    assert (args.pod_name, args.pod_namespace, args.pod_uid, args.node) == ("p", "ns", "u-1", "gpu-a100-0")
    assert json.loads(encode_binding_result(ExtenderBindingResult(error="nope"))) == {"Error": "nope"}


def go_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def compact_request(nodes: list[dict[str, object]], pod: dict[str, object] | None = None) -> bytes:
    return go_json({"Pod": pod or {"metadata": {"name": "p"}}, "Nodes": {"metadata": {}, "items": nodes},
                    "NodeNames": None})


def sample_nodes() -> list[dict[str, object]]:
    args = parse_args(payload("nodes"))
    assert args.nodes is not None
    return args.nodes.items


def test_unchanged_nodes_of_a_repeated_request_are_not_decoded_again() -> None:
    nodes = sample_nodes()
    first = parse_args(compact_request(nodes), known_nodes={})
    assert first.nodes is not None
    changed = json.loads(json.dumps(nodes))
    changed[1]["metadata"]["resourceVersion"] = "123"
    second = parse_args(compact_request(changed), known_nodes=first.nodes.known_texts())
    assert second.nodes is not None
    assert second.nodes.items == changed
    reused = [a is b for a, b in zip(first.nodes.items, second.nodes.items)]
    assert reused == [True, False, True, True, False]  # the last Node's end is only found by decoding it


@pytest.mark.parametrize(
    "variant",
    ["pretty", "typemeta", "boundary-in-a-string", "boundary-after-the-list", "single", "empty"],
)
def test_splitting_at_node_boundaries_never_changes_the_result(variant: str) -> None:
    nodes = sample_nodes()
    pod: dict[str, object] = {"metadata": {"name": "p"}}
    if variant == "typemeta":
        nodes = [{"kind": "Node", "apiVersion": "v1", **n} for n in nodes]
    if variant == "boundary-in-a-string":
        nodes[0]["metadata"]["annotations"]["trap"] = '},{"metadata":{"name":"fake"}}'  # type: ignore[index]
    if variant == "boundary-after-the-list":
        pod = {"metadata": {"name": "p"}, "spec": {"x": [{"a": 1}, {"metadata": {"name": "fake"}}]}}
    if variant == "single":
        nodes = nodes[:1]
    if variant == "empty":
        nodes = []
    body = compact_request(nodes, pod)
    if variant == "boundary-after-the-list":
        body = go_json({"Nodes": {"metadata": {}, "items": nodes}, "Pod": pod, "NodeNames": None})
    if variant == "pretty":
        body = json.dumps(json.loads(body), indent=2).encode()
    plain = parse_args(body)
    first = parse_args(body, known_nodes={})
    assert first.nodes is not None and plain.nodes is not None
    again = parse_args(body, known_nodes=first.nodes.known_texts())
    assert again.nodes is not None
    assert first.nodes.items == again.nodes.items == plain.nodes.items == nodes
    assert again.pod == pod
    assert json.loads(encode_filter_result(ExtenderFilterResult(nodes=again.nodes)))["Nodes"]["items"] == nodes


def test_a_request_whose_node_list_is_kept_whole_is_echoed_byte_for_byte() -> None:
    body = compact_request(sample_nodes())
    args = parse_args(body, known_nodes={})
    assert args.nodes is not None
    reply = encode_filter_result(ExtenderFilterResult(nodes=args.nodes))
    original = body[body.index(b'"items":') + len(b'"items":'):body.rindex(b'},"NodeNames"')]
    assert original in reply


@pytest.mark.parametrize("known", [None, {}])
@pytest.mark.parametrize("replaced", ["other-nodes", "not-objects", "not-a-list"])
def test_a_repeated_items_key_keeps_only_the_last_list_as_json_does(
    known: dict[str, object] | None, replaced: str
) -> None:
    first, second = sample_nodes()[:2], sample_nodes()[2:]
    earlier = {"other-nodes": go_json(second), "not-objects": b'["n1",2]', "not-a-list": b'"all"'}[replaced]
    body = compact_request(first)
    repeated = body.replace(b'"items":[', b'"items":' + earlier + b',"items":[', 1)
    args = parse_args(repeated, known_nodes=known)  # type: ignore[arg-type]
    assert args.nodes is not None and args.nodes.items == first
    assert json.loads(encode_filter_result(ExtenderFilterResult(nodes=args.nodes)))["Nodes"]["items"] == first


def test_null_items_is_an_empty_node_list_as_go_writes_a_nil_slice() -> None:
    args = parse_args(b'{"Pod": {}, "Nodes": {"items": null}}')
    assert args.nodes is not None and args.nodes.items == [] and args.candidate_names == []


def test_a_request_with_both_lists_is_a_full_node_request() -> None:
    nodes = sample_nodes()[:2]
    args = parse_args(go_json({"Pod": {}, "NodeNames": ["elsewhere"], "Nodes": {"items": nodes}}))
    assert args.candidate_names == [n["metadata"]["name"] for n in nodes]  # type: ignore[index]


@pytest.mark.parametrize("order", ["bad-then-good", "good-then-bad"])
def test_a_repeated_nodes_key_is_judged_by_its_last_value(order: str) -> None:
    good, bad = {"items": sample_nodes()[:1]}, {"items": [1]}
    first, last = (bad, good) if order == "bad-then-good" else (good, bad)
    body = b'{"Pod":{},"Nodes":' + go_json(first) + b',"nodes":' + go_json(last) + b"}"
    if order == "bad-then-good":
        args = parse_args(body, known_nodes={})
        assert args.nodes is not None and args.nodes.items == good["items"]
    else:
        with pytest.raises(InvalidArgs, match=r"Nodes.items\[0\] is not an object"):
            parse_args(body)


def test_escaped_surrogate_pairs_are_ordinary_text() -> None:
    args = parse_args(b'{"Pod": {"metadata": {"name": "\\ud83d\\ude80"}}, "NodeNames": ["a"]}')
    assert args.pod["metadata"]["name"] == "\U0001F680"
