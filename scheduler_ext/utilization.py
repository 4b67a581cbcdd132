"""GPU utilization per node from Prometheus, refreshed in the background and never on the request path.

Four instant queries per refresh: `DCGM_FI_DEV_GPU_UTIL` (percent, whole GPUs) and `DCGM_FI_PROF_GR_ENGINE_ACTIVE`
(ratio, per MIG GPU instance: DEV_GPU_UTIL reads 0 or nothing on MIG GPUs), each with its sample
timestamps through `timestamp()`, so a sample's age is known exactly and samples older than
`scheduling.metricsMaxAge` are ignored at scoring time (a node with nothing fresh scores neutral). `max by (...)`
keeps only the labels we read, which shrinks the answer for big clusters.

Labels accepted: the node from `Hostname` (dcgm-exporter before #655 and the gpuguard agent), `hostname` (after),
`node` (a common relabelling), or their `exported_*` forms (a ServiceMonitor with honorLabels: false); the GPU from
`UUID` (or `uuid` with --use-old-namespace); MIG instances from `GPU_I_ID`/`GPU_I_PROFILE`, folded into their parent
GPU weighted by the profile's compute slices (`modelName` gives the model, in the catalog of the policy in force).

A failed refresh (down, slow, or garbage) keeps the previous samples, which then age out on their own; it is
logged once per distinct error and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp

from gpuguard.policy import mig
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.gpustate import GpuSample, NodeUtilization, mig_gpu_sample

log = logging.getLogger(__name__)

GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
NODE_LABELS = ("Hostname", "hostname", "node", "exported_Hostname", "exported_hostname", "exported_node")
UUID_LABELS = ("UUID", "uuid")
INSTANCE_LABEL = "GPU_I_ID"
PROFILE_LABEL = "GPU_I_PROFILE"
MODEL_LABEL = "modelName"
KEPT_LABELS = (*NODE_LABELS, *UUID_LABELS, "gpu", MODEL_LABEL, INSTANCE_LABEL, PROFILE_LABEL)

Series = list[dict[str, Any]]
"""The `result` of an instant query of resultType vector: [{"metric": {...}, "value": [ts, "v"]}]."""


class PrometheusError(RuntimeError):
    """Prometheus did not answer a query usably."""


def queries() -> dict[str, str]:
    by = ",".join(KEPT_LABELS)
    return {
        "util": f"max by ({by}) ({GPU_UTIL})",
        "util_at": f"max by ({by}) (timestamp({GPU_UTIL}))",
        "engine": f"max by ({by}) ({ENGINE_ACTIVE})",
        "engine_at": f"max by ({by}) (timestamp({ENGINE_ACTIVE}))",
    }


# -------------------------------------------------------------------------------------------------- pure: parsing


def vector(answer: object) -> Series:
    """The series of a Prometheus /api/v1/query answer; `PrometheusError` if it is not a successful vector."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error") if isinstance(answer, dict) else None
        raise PrometheusError(f"query failed: {error or 'not a Prometheus API answer'}")
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PrometheusError("query answer is not an instant vector")
    return [s for s in data["result"] if isinstance(s, dict) and isinstance(s.get("metric"), dict)]


@dataclass(slots=True)
class _Gpu:
    """Samples gathered for one physical GPU while parsing."""

    util: tuple[float, float] | None = None
    engine: tuple[float, float] | None = None
    instances: list[tuple[float, float, int]] = field(default_factory=list)
    """(ratio, at, compute slices) per MIG instance."""
    compute_slices: int = 0


def snapshot(answers: Mapping[str, Series], *, catalog: MigCatalog = mig.BUILTIN) -> dict[str, NodeUtilization]:
    """Per node, one sample per GPU, from the four query answers of `queries()`."""
    gpus: dict[tuple[str, str], _Gpu] = {}
    for name, ratio in (("util", False), ("engine", True)):
        stamps = {_identity(s["metric"]): _number(s) for s in answers.get(f"{name}_at", [])}
        for series in answers.get(name, []):
            _collect(gpus, series, stamps.get(_identity(series["metric"])), ratio=ratio, catalog=catalog)
    nodes: dict[str, list[GpuSample]] = {}
    for (node, uuid), gpu in gpus.items():
        sample = _fold(uuid, gpu)
        if sample is not None:
            nodes.setdefault(node, []).append(sample)
    return {node: NodeUtilization(tuple(samples)) for node, samples in nodes.items()}


def _identity(labels: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items() if k != "__name__"))


def _number(series: Mapping[str, Any]) -> float | None:
    value = series.get("value")
    try:
        number = float(value[1]) if isinstance(value, list) and len(value) == 2 else math.nan
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _first(labels: Mapping[str, Any], names: tuple[str, ...]) -> str:
    return next((str(labels[n]) for n in names if labels.get(n)), "")


def _collect(
    gpus: dict[tuple[str, str], _Gpu], series: Mapping[str, Any], at: float | None, *, ratio: bool, catalog: MigCatalog
) -> None:
    labels = series["metric"]
    node, uuid, value = _first(labels, NODE_LABELS), _first(labels, UUID_LABELS), _number(series)
    if not node or not uuid or value is None or at is None:
        return
    percent = min(max(value * 100.0 if ratio else value, 0.0), 100.0)
    gpu = gpus.setdefault((node, uuid), _Gpu())
    if labels.get(INSTANCE_LABEL) or labels.get(PROFILE_LABEL):
        if ratio:
            slices, total = _compute_slices(labels, catalog)
            gpu.instances.append((percent, at, slices))
            gpu.compute_slices = total
    elif ratio:
        gpu.engine = (percent, at)
    else:
        gpu.util = (percent, at)


def _compute_slices(labels: Mapping[str, Any], catalog: MigCatalog) -> tuple[int, int]:
    """(the instance's compute slices, the GPU's) from its model; (1, 0) when the model or profile is unknown."""
    model = catalog.model_for_product(mig.product_label_from_name(str(labels.get(MODEL_LABEL, ""))))
    profile = model.profile(str(labels.get(PROFILE_LABEL, ""))) if model else None
    if model is None or profile is None:
        return 1, 0
    return profile.compute_slices, model.compute_slices


def _fold(uuid: str, gpu: _Gpu) -> GpuSample | None:
    """MIG instances (weighted by compute slices) win over the GPU-level metrics, which are void under MIG."""
    if gpu.instances:
        return mig_gpu_sample(uuid, [(p, s) for p, _, s in gpu.instances], compute_slices=gpu.compute_slices,
                              at=min(at for _, at, _ in gpu.instances))
    chosen = gpu.util or gpu.engine
    return GpuSample(uuid, chosen[0], chosen[1]) if chosen else None


# ------------------------------------------------------------------------------------------------- the poller


class UtilizationBoard:
    """The latest per-node samples; replaced whole by the poller, read by handlers."""

    def __init__(self) -> None:
        self.nodes: Mapping[str, NodeUtilization] = {}
        self.updated_at = 0.0
        """Unix time of the last successful refresh (0: never)."""


@dataclass(frozen=True, slots=True)
class PollerSettings:
    url: str
    interval: float = 15.0
    """Seconds between refreshes: dcgm-exporter's ServiceMonitor scrapes every 15 s."""
    timeout: float = 10.0
    """Seconds one refresh (all four queries) may take; a slow Prometheus never delays a scheduling decision."""


class PrometheusPoller:
    def __init__(
        self, settings: PollerSettings, board: UtilizationBoard, *, on_result: Callable[[str], None] | None = None,
        catalog: Callable[[], MigCatalog] = lambda: mig.BUILTIN,
    ) -> None:
        self._settings = settings
        self._board = board
        self._on_result = on_result or (lambda _result: None)
        self._catalog = catalog
        """The catalog of the policy in force, asked on every refresh."""
        self._last_error = ""

    async def refresh(self, session: aiohttp.ClientSession) -> bool:
        """One refresh; True when the board was replaced."""
        try:
            answers = await asyncio.wait_for(self._fetch(session), self._settings.timeout)
            nodes = await asyncio.to_thread(partial(snapshot, answers, catalog=self._catalog()))
        except (aiohttp.ClientError, asyncio.TimeoutError, PrometheusError, ValueError, OSError) as error:
            self._fail(error)
            return False
        self._board.nodes, self._board.updated_at = nodes, time.time()
        if self._last_error:
            log.info("Prometheus at %s answers again", self._settings.url)
        self._last_error = ""
        self._on_result("success")
        return True

    async def _fetch(self, session: aiohttp.ClientSession) -> dict[str, Series]:
        url = self._settings.url.rstrip("/") + "/api/v1/query"
        answers = {}
        for name, query in queries().items():
            async with session.get(url, params={"query": query}) as reply:
                if reply.status != 200 and reply.content_type != "application/json":
                    raise PrometheusError(f"HTTP {reply.status} from {url}")
                answers[name] = vector(await reply.json(content_type=None))
        return answers

    def _fail(self, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if reason != self._last_error:
            log.warning("utilization refresh from %s failed (keeping older samples): %s", self._settings.url, reason)
            self._last_error = reason
        self._on_result("error")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        session = aiohttp.ClientSession()
        task = asyncio.create_task(self._loop(session))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await session.close()

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self.refresh(session)
            await asyncio.sleep(self._settings.interval)
