"""Properties of the scheduler extender over generated pods, candidate lists and Prometheus answers.

Whatever kube-scheduler sends, /filter answers HTTP 200 (a refusal or an error travels inside the ExtenderFilterResult,
never as a status the scheduler would treat as the extender being down), every candidate ends up in exactly one of
the kept, failed and unresolvable sets, and /prioritize gives every candidate, in order, an integer score from 0 to
10. Utilization comes from generated Prometheus answers (NaN, infinities, negative and over-100 values, stale and
missing timestamps) through the extender's own parser, so no sample can push a score out of range. Both request
modes run through the real aiohttp app, in this process, against the cluster in tests/data/extender.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gpuguard.contracts.node_inventory import ANNOTATION
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import create_app
from scheduler_ext.inventory.sources import ClusterStateSource
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import GPU_UTIL, PrometheusError, UtilizationBoard, snapshot, vector
from tests.extender.conftest import CLUSTER, INVENTORY_TIME, cluster_items, policy_text
from tests.hardening.inprocess import ServedApp
from tests.strategies import kserve
from tests.strategies.profiles import fewer

NODES = {item["metadata"]["name"]: item for item in cluster_items() if item["kind"] == "Node"}
UNKNOWN_NAMES = ("gpu-new-0", "ip-10-0-3-17.eu-west-1.compute.internal", "")
GPU_UUIDS = {
    name: [gpu["uuid"] for gpu in json.loads(node["metadata"]["annotations"][ANNOTATION])["gpus"]]
    for name, node in NODES.items() if ANNOTATION in node["metadata"].get("annotations", {})
}
NOW = INVENTORY_TIME + 30
SAMPLE_VALUES = ("0", "12.5", "95", "100", "-3", "250", "NaN", "+Inf", "-Inf", "abc", "1e308")
SAMPLE_AGES = (0.0, 30.0, 119.0, 121.0, 86_400.0)


# ----------------------------------------------------------------------------------------------------- strategies


@st.composite
def prometheus_answers(draw: st.DrawFn) -> dict[str, Any]:
    """The util/util_at query answers as Prometheus returns them, with hostile values mixed in."""
    util, stamps = [], []
    for node, uuids in GPU_UUIDS.items():
        for uuid in draw(st.lists(st.sampled_from(uuids), unique=True)):
            labels = {"Hostname": node, "UUID": uuid, "gpu": "0"}
            util.append({"metric": labels, "value": [NOW, draw(st.sampled_from(SAMPLE_VALUES))]})
            if draw(st.integers(0, 9)):  # now and then a series has no timestamp answer
                stamps.append({"metric": labels, "value": [NOW, str(NOW - draw(st.sampled_from(SAMPLE_AGES)))]})
    return {"util": util, "util_at": stamps}


@st.composite
def extender_args(draw: st.DrawFn, *, full_nodes: bool) -> tuple[bytes, list[str]]:
    """An ExtenderArgs body in either key casing, and the candidate names it holds, in order."""
    pod = draw(kserve.predictor_pods(realistic=draw(st.booleans()), in_scope=None))
    names = draw(st.lists(st.sampled_from([*NODES, *UNKNOWN_NAMES]), unique=True, max_size=9))
    go = draw(st.booleans())
    body: dict[str, Any] = {"Pod" if go else "pod": pod}
    if full_nodes:
        items = [NODES.get(name) or _bare_node(name) for name in names]
        body["Nodes" if go else "nodes"] = {"metadata": {}, "items": items}
    else:
        body["NodeNames" if go else "nodenames"] = names
    return kserve.compact(body), names


def _bare_node(name: str) -> dict[str, Any]:
    """A Node the cache has never seen: no GPU labels, no inventory."""
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "labels": {}},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}}


# -------------------------------------------------------------------------------------------------- the server


class Extender(ServedApp):
    def __init__(self, tmp: Any) -> None:
        policy = tmp / "policy.yaml"
        policy.write_text(policy_text())
        cluster = tmp / "cluster.json"
        cluster.write_bytes(CLUSTER.read_bytes())
        settings = ExtenderSettings(cluster_state=cluster, policy_path=policy, reload_interval=60, state_interval=60)
        registry = CollectorRegistry()
        self.store = InventoryStore(pods_known=True)
        self.board = UtilizationBoard()
        source = ClusterStateSource(cluster, self.store)
        super().__init__(create_app(settings, policy=PolicySource(policy, registry=registry), registry=registry,
                                    store=self.store, board=self.board, serve_metrics=False, clock=lambda: NOW,
                                    background=[lambda _: source.running(settings.state_interval)]))

    def post(self, path: str, body: bytes) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            reply = connection.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            connection.close()


@pytest.fixture(scope="module")
def extender(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Extender]:
    with Extender(tmp_path_factory.mktemp("extender")) as served:
        assert asyncio.run_coroutine_threadsafe(_ready(served.store), served.loop).result(30)
        yield served


async def _ready(store: InventoryStore) -> bool:
    for _ in range(300):
        if store.ready:
            return True
        await asyncio.sleep(0.01)
    return False


# --------------------------------------------------------------------------------------------------- properties


any_args = st.booleans().flatmap(lambda full: extender_args(full_nodes=full))


def ask(extender: Extender, path: str, body: bytes, answers: dict[str, Any]) -> Any:
    """POST with the board holding what the extender's poller would make of these Prometheus answers."""
    extender.board.nodes = snapshot(answers)
    status, reply = extender.post(path, body)
    note(json.dumps(reply)[:2000])
    assert status == 200
    return reply


@fewer(2)
@given(args=any_args, answers=prometheus_answers())
def test_filter_answers_200_and_places_every_candidate_exactly_once(
    extender: Extender, args: tuple[bytes, list[str]], answers: dict[str, Any]
) -> None:
    body, names = args
    reply = ask(extender, "/filter", body, answers)
    assert set(reply) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    if reply["Error"]:
        assert reply["Error"].startswith("gpuguard cannot judge this pod: ")
        return
    full = reply["Nodes"] is not None
    kept = [n["metadata"]["name"] for n in reply["Nodes"]["items"]] if full else reply["NodeNames"]
    assert kept == [n for n in names if n in set(kept)], "kept nodes stay in request order"
    failed, unresolvable = set(reply["FailedNodes"]), set(reply["FailedAndUnresolvableNodes"])
    assert not (failed & unresolvable) and not (set(kept) & (failed | unresolvable))
    assert set(kept) | failed | unresolvable == set(names)
    assert all(isinstance(reason, str) and reason for reason in
               [*reply["FailedNodes"].values(), *reply["FailedAndUnresolvableNodes"].values()])
    if not full:  # full-Node requests carry each Node, so even a new one is judged by its own object
        for name in set(names) - set(NODES):
            assert name in unresolvable, "a node the cache does not know is refused, and no eviction can change that"


@fewer(2)
@given(args=any_args, answers=prometheus_answers())
def test_prioritize_scores_every_candidate_in_order_with_an_integer_from_0_to_10(
    extender: Extender, args: tuple[bytes, list[str]], answers: dict[str, Any]
) -> None:
    body, names = args
    reply = ask(extender, "/prioritize", body, answers)
    assert [entry["Host"] for entry in reply] == names
    for entry in reply:
        assert type(entry["Score"]) is int and 0 <= entry["Score"] <= 10, entry
        if entry["Host"] not in NODES:
            assert entry["Score"] == 0, "an unknown node scores neutral"


@fewer(2)
@given(body=any_args.flatmap(lambda args: _malformed(args[0])))
def test_malformed_requests_get_an_error_in_the_protocols_channel(extender: Extender, body: bytes) -> None:
    status, reply = extender.post("/filter", body)
    assert status == 200 and reply["Error"].startswith("gpuguard: "), reply
    assert reply["NodeNames"] is None and reply["Nodes"] is None
    status, reply = extender.post("/prioritize", body)
    assert status == 400 and reply["error"].startswith("gpuguard: "), reply


def _malformed(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bodies that are not ExtenderArgs: noise, cut-off JSON, JSON of another shape, fields of the wrong type."""
    document = json.loads(valid)
    pod_key = next(iter(document))
    wrong_types = [kserve.compact({**document, pod_key: value}) for value in ([], "pod", 3)]
    wrong_types.append(kserve.compact({**document, "NodeNames": "gpu-a100-0"}))
    wrong_types.append(kserve.compact({**document, "nodes": {"items": [1, 2]}}))
    wrong_types.append(kserve.compact({**document, "NodeNames": ["gpu-\ud800"]}))  # a lone surrogate: not text
    return st.one_of(
        st.binary(max_size=200).filter(lambda b: not _is_object(b)),
        st.integers(0, len(valid) - 1).map(lambda cut: valid[:cut]),
        st.sampled_from([b"null", b"[]", b'"Pod"', b"3", b"{", b"{}{}", valid + b"x", valid.replace(b"{", b"[", 1)]),
        st.sampled_from(wrong_types),
    )


def _is_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


@given(answers=st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=10), st.dictionaries(
    st.sampled_from(["status", "data", "error"]),
    st.one_of(st.text(max_size=10), st.dictionaries(st.sampled_from(["resultType", "result"]), st.one_of(
        st.just("vector"), st.just("matrix"), st.lists(st.dictionaries(st.sampled_from(["metric", "value"]),
                                                                        st.one_of(st.none(), st.just({}))))))))),
    min_size=1, max_size=4))
def test_garbage_from_prometheus_is_refused_or_ignored_never_a_crash(answers: list[Any]) -> None:
    series = {}
    for name, answer in zip(("util", "util_at", "engine", "engine_at"), answers):
        try:
            series[name] = vector(answer)
        except PrometheusError:
            continue
    for node, usage in snapshot(series).items():
        for sample in usage.samples:
            assert 0.0 <= sample.percent <= 100.0, (node, sample)


def test_hostile_sample_values_are_clamped_or_dropped() -> None:
    node, uuids = next(iter(GPU_UUIDS.items()))
    answers = {"util": [], "util_at": []}
    for uuid, value in zip(uuids, ("NaN", "250")):
        labels = {"Hostname": node, "UUID": uuid, "__name__": GPU_UTIL}
        answers["util"].append({"metric": labels, "value": [NOW, value]})
        answers["util_at"].append({"metric": labels, "value": [NOW, str(NOW)]})
    usage = snapshot(answers)[node]
    assert [(s.uuid, s.percent) for s in usage.samples] == [(uuids[1], 100.0)]
