"""GPU utilization from Prometheus: label variants, MIG folding, freshness, and a Prometheus that misbehaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gpuguard.policy.gpustate import GpuRequest, NodeGpuState
from gpuguard.policy.scoring import score_nodes
from scheduler_ext.utilization import (
    ENGINE_ACTIVE,
    GPU_UTIL,
    PollerSettings,
    PrometheusError,
    PrometheusPoller,
    UtilizationBoard,
    queries,
    snapshot,
    vector,
)
from tests.extender.conftest import policy_with

AT = 1_700_000_000.0


def series(value: float, at: float = AT, **labels: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One sample and its timestamp() twin, as the two queries return them."""
    return ({"metric": labels, "value": [AT + 1, str(value)]}, {"metric": labels, "value": [AT + 1, str(at)]})


def answers(util: list[tuple[dict[str, Any], dict[str, Any]]] = [],
            engine: list[tuple[dict[str, Any], dict[str, Any]]] = []) -> dict[str, list[dict[str, Any]]]:
    return {"util": [v for v, _ in util], "util_at": [t for _, t in util],
            "engine": [v for v, _ in engine], "engine_at": [t for _, t in engine]}


@pytest.mark.parametrize(
    "node_label", ["Hostname", "hostname", "node", "exported_Hostname", "exported_hostname", "exported_node"]
)
def test_every_node_label_spelling_is_accepted(node_label: str) -> None:
    found = snapshot(answers([series(42, **{node_label: "gpu-a", "UUID": "GPU-1", "gpu": "0"})]))
    assert [(s.uuid, s.percent, s.at, s.mig) for s in found["gpu-a"].samples] == [("GPU-1", 42.0, AT, False)]


def test_old_namespace_uuid_label_is_accepted() -> None:
    assert snapshot(answers([series(7, hostname="gpu-a", uuid="GPU-9")]))["gpu-a"].samples[0].uuid == "GPU-9"


def test_series_without_node_or_gpu_or_timestamp_are_skipped() -> None:
    no_node = series(10, UUID="GPU-1")
    no_uuid = series(10, Hostname="gpu-a")
    value, _ = series(10, Hostname="gpu-b", UUID="GPU-2")
    found = snapshot({"util": [no_node[0], no_uuid[0], value], "util_at": [no_node[1], no_uuid[1]]})
    assert found == {}


def test_mig_instances_fold_into_their_gpu_weighted_by_compute_slices() -> None:
    model = "NVIDIA H100 80GB HBM3"
    engine = [
        series(1.0, Hostname="gpu-m", UUID="GPU-1", GPU_I_ID="1", GPU_I_PROFILE="3g.40gb", modelName=model),
        series(0.5, at=AT - 5, Hostname="gpu-m", UUID="GPU-1", GPU_I_ID="2", GPU_I_PROFILE="1g.10gb", modelName=model),
    ]
    util = [series(0, Hostname="gpu-m", UUID="GPU-1")]  # DEV_GPU_UTIL reads 0 on MIG GPUs: ignored
    sample = snapshot(answers(util, engine))["gpu-m"].samples[0]
    assert sample.mig and sample.uuid == "GPU-1"
    assert sample.percent == pytest.approx((100 * 3 + 50 * 1) / 7)
    assert sample.at == AT - 5  # as old as its oldest instance


def test_mig_instances_of_an_unknown_model_are_averaged() -> None:
    engine = [series(0.2, Hostname="n", UUID="G", GPU_I_ID="1", GPU_I_PROFILE="9g.99gb", modelName="Future GPU"),
              series(0.6, Hostname="n", UUID="G", GPU_I_ID="2", GPU_I_PROFILE="9g.99gb", modelName="Future GPU")]
    assert snapshot(answers(engine=engine))["n"].samples[0].percent == pytest.approx(40)


def test_whole_gpus_prefer_gpu_util_and_fall_back_to_engine_activity() -> None:
    util = [series(30, Hostname="n", UUID="G1")]
    engine = [series(0.9, Hostname="n", UUID="G1"), series(0.25, Hostname="n", UUID="G2")]
    found = {s.uuid: s.percent for s in snapshot(answers(util, engine))["n"].samples}
    assert found == {"G1": 30.0, "G2": 25.0}


@pytest.mark.parametrize("value", ["NaN", "+Inf", "abc", None])
def test_garbage_values_are_dropped(value: Any) -> None:
    sample = {"metric": {"Hostname": "n", "UUID": "G"}, "value": [AT, value]}
    stamp = {"metric": {"Hostname": "n", "UUID": "G"}, "value": [AT, str(AT)]}
    assert snapshot({"util": [sample], "util_at": [stamp]}) == {}


def test_out_of_range_percentages_are_clamped() -> None:
    found = snapshot(answers([series(140, Hostname="n", UUID="A"), series(-3, Hostname="n", UUID="B")]))
    assert sorted(s.percent for s in found["n"].samples) == [0.0, 100.0]


@pytest.mark.parametrize(
    "answer",
    [{"status": "error", "error": "bad query"}, {"status": "success", "data": {"resultType": "matrix", "result": []}},
     [], "x", {"status": "success"}],
)
def test_answers_that_are_not_instant_vectors_are_errors(answer: Any) -> None:
    with pytest.raises(PrometheusError):
        vector(answer)


def test_queries_keep_only_the_labels_we_read() -> None:
    found = queries()
    assert found["util"].startswith("max by (") and found["util"].endswith(f"({GPU_UTIL})")
    assert found["engine_at"].endswith(f"(timestamp({ENGINE_ACTIVE}))")
    for label in ("Hostname", "hostname", "exported_hostname", "UUID", "GPU_I_ID", "GPU_I_PROFILE", "modelName"):
        assert label in found["util"]


# ------------------------------------------------------------------------------------------------ the poller

Behaviour = Callable[[web.Request], Any]


class FakePrometheus:
    """An in-test HTTP server answering /api/v1/query the way the test says."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = self.good
        self.calls = 0

    @staticmethod
    async def good(request: web.Request) -> web.Response:
        query = request.query["query"]
        value = str(AT) if "timestamp(" in query else ("55" if GPU_UTIL in query else "0.5")
        result = [{"metric": {"Hostname": "gpu-a", "UUID": "GPU-1"}, "value": [AT, value]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        response: web.StreamResponse = await self.behaviour(request)
        return response


@pytest.fixture
async def prometheus(aiohttp_server: Any) -> AsyncIterator[tuple[FakePrometheus, str]]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.handle)
    server = await aiohttp_server(app)
    yield fake, str(server.make_url(""))


async def refresh(url: str, board: UtilizationBoard, results: list[str], *, timeout: float = 2.0,
                  poller: PrometheusPoller | None = None) -> bool:
    poller = poller or PrometheusPoller(PollerSettings(url, interval=60, timeout=timeout), board,
                                        on_result=results.append)
    async with aiohttp.ClientSession() as session:
        return await poller.refresh(session)


async def test_a_good_answer_replaces_the_board(prometheus: tuple[FakePrometheus, str]) -> None:
    _, url = prometheus
    board, results = UtilizationBoard(), []
    assert await refresh(url, board, results)
    assert board.nodes["gpu-a"].samples[0].percent == 55.0
    assert board.updated_at > 0 and results == ["success"]


async def garbage(_: web.Request) -> web.Response:
    return web.Response(text="<html>oops</html>", content_type="text/html")


async def server_error(_: web.Request) -> web.Response:
    return web.json_response({"status": "error", "errorType": "internal", "error": "storage down"}, status=500)


async def slow(_: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({})


async def wrong_shape(_: web.Request) -> web.Response:
    return web.json_response({"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}})


@pytest.mark.parametrize("behaviour", [garbage, server_error, slow, wrong_shape])
async def test_a_misbehaving_prometheus_keeps_the_older_samples(
    prometheus: tuple[FakePrometheus, str], behaviour: Behaviour, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = prometheus
    board, results = UtilizationBoard(), []
    poller = PrometheusPoller(PollerSettings(url, interval=60, timeout=0.5), board, on_result=results.append)
    assert await refresh(url, board, results, poller=poller)
    before = board.nodes
    fake.behaviour = behaviour
    with caplog.at_level(logging.WARNING):
        assert not await refresh(url, board, results, poller=poller)
        assert not await refresh(url, board, results, poller=poller)
    assert board.nodes is before
    assert results == ["success", "error", "error"]
    assert len([r for r in caplog.records if "utilization refresh" in r.message]) == 1  # logged once per error


async def test_a_prometheus_that_is_down_is_an_error_not_a_crash(unused_tcp_port: int) -> None:
    board, results = UtilizationBoard(), []
    assert not await refresh(f"http://127.0.0.1:{unused_tcp_port}", board, results)
    assert board.nodes == {} and results == ["error"]


async def test_the_background_loop_keeps_refreshing(prometheus: tuple[FakePrometheus, str]) -> None:
    fake, url = prometheus
    board = UtilizationBoard()
    poller = PrometheusPoller(PollerSettings(url, interval=0.05, timeout=1), board)
    async with poller.running():
        for _ in range(100):
            if fake.calls >= 8:
                break
            await asyncio.sleep(0.02)
    assert fake.calls >= 8 and "gpu-a" in board.nodes


def test_stale_samples_score_neutral_and_fresh_ones_count() -> None:
    nodes = [NodeGpuState(n, "A100", {"nvidia.com/gpu": 8}, {}, physical_gpus=8) for n in ("busy", "idle", "old")]
    board = snapshot(answers([
        *(series(90, Hostname="busy", UUID=f"B{i}") for i in range(8)),
        *(series(5, Hostname="idle", UUID=f"I{i}") for i in range(8)),
        *(series(0, at=AT - 600, Hostname="old", UUID=f"O{i}") for i in range(8)),
    ]))
    found = score_nodes(GpuRequest((("nvidia.com/gpu", 1),)), nodes, utilization=board,
                        scheduling=policy_with().scheduling, now=AT + 30)
    assert dict(zip(["busy", "idle", "old"], found)) == {"idle": 10, "old": 9, "busy": 8}
