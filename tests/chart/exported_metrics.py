"""The names of the series the webhook, the extender and the node agent expose, taken from their own registries.

Each service's registry is built the way its `run` function builds it (process and GC collectors, the policy source,
the service's metrics and collectors), then every family it describes is turned into the sample names Prometheus
stores: a counter `x` is scraped as `x_total` and `x_created`, a histogram as `x_bucket`, `x_count`, `x_sum` and
`x_created`, an info family as `x_info`. The agent's DCGM fields are the `FIELDS` table its collector exports from
(a scrape without GPUs has none of them). The dashboard and the alert rules may reference these names only.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.core import Metric

from gpuguard.web.policy_source import PolicySource
from gpuguard.web.tls import ReloadingCertificate, default_sans, ensure_self_signed
from node_agent.collector import FIELDS, GpuCollector
from node_agent.metrics import AgentMetrics
from node_agent.null import NullBackend
from scheduler_ext.app import create_app as create_extender
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import UtilizationBoard
from webhook.app import create_app as create_webhook
from webhook.settings import WebhookSettings

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "unknown": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def sample_names(families: Iterable[Metric]) -> set[str]:
    names: set[str] = set()
    for family in families:
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def _service_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def webhook_registry(tls_dir: Path) -> CollectorRegistry:
    registry = _service_registry()
    files = ensure_self_signed(tls_dir, default_sans("gpuguard-webhook", "gpuguard"))
    create_webhook(WebhookSettings(), policy=PolicySource(None, registry=registry), registry=registry,
                   certificate=ReloadingCertificate(files.cert, files.key))
    return registry


def extender_registry() -> CollectorRegistry:
    registry = _service_registry()
    create_extender(ExtenderSettings(), policy=PolicySource(None, registry=registry), registry=registry,
                    store=InventoryStore(), board=UtilizationBoard())
    return registry


def agent_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = AgentMetrics(registry)
    PolicySource(None, registry=registry)
    registry.register(GpuCollector(NullBackend("no GPUs here"), hostname="node-1", metrics=metrics))
    return registry


@functools.lru_cache(maxsize=1)
def exported_names() -> frozenset[str]:
    names = {field.name for field in FIELDS}
    with tempfile.TemporaryDirectory() as tls_dir:
        registries = (webhook_registry(Path(tls_dir)), extender_registry(), agent_registry())
    for registry in registries:
        names |= sample_names(registry.collect())
    return frozenset(names)
