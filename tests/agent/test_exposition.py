"""The `/metrics` body: prometheus_client's text, family by family, reused only for families that did not change."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.types import WSGIApplication
from wsgiref.util import setup_testing_defaults

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import Metric

from node_agent.attribution import Holder
from node_agent.backend import Activity, Snapshot
from node_agent.collector import LabelCache, dcgm_families
from node_agent.exposition import CachedExposition
from node_agent.serving import create_http_app

from .test_collector import MIG, WHOLE

HELD = {"GPU-0": (Holder("llm-0", "team-a", "main"),), "MIG-a": (Holder("big", "team-b", "main"),)}


class Families:
    """A collector yielding the families it is given, so the same scrape can be rendered two ways."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


def steps() -> list[tuple[Snapshot, dict[str, tuple[Holder, ...]]]]:
    busier = dataclasses.replace(WHOLE, power_w=250.0, energy_mj=6e6)
    moved = dataclasses.replace(MIG, mig_devices=(dataclasses.replace(MIG.mig_devices[0], activity=Activity(0.75, 0.25)),
                                                  MIG.mig_devices[1]))
    return [
        (Snapshot(driver="550.54.15", gpus=(WHOLE, MIG)), HELD),
        (Snapshot(driver="550.54.15", gpus=(WHOLE, MIG)), HELD),  # nothing changed
        (Snapshot(driver="550.54.15", gpus=(busier, moved)), HELD),  # power, energy and one instance's activity
        (Snapshot(driver="550.54.15", gpus=(busier, moved)), {**HELD, "MIG-b": (Holder("small", "team-c", "main"),)}),
        (Snapshot(driver="550.54.15", gpus=(WHOLE,)), {}),  # the MIG GPU vanished
        (Snapshot(driver="560.35.03", gpus=(WHOLE,)), {}),  # a driver update relabels every sample
    ]


def test_every_scrape_is_byte_for_byte_what_generate_latest_renders() -> None:
    source, labels = Families(), LabelCache()
    registry = CollectorRegistry()
    registry.register(source)
    cached = CachedExposition(registry)
    for snapshot, holding in steps():
        source.families = dcgm_families(snapshot, hostname="node-a", holding=holding, labels=labels)
        assert cached.render() == generate_latest(registry)


def test_only_unchanged_families_are_reused() -> None:
    source, labels = Families(), LabelCache()
    cached = CachedExposition(source)
    reused = []
    for snapshot, holding in steps()[:4]:
        source.families = dcgm_families(snapshot, hostname="node-a", holding=holding, labels=labels)
        before = cached.reused
        cached.render()
        reused.append(cached.reused - before)
    names = [f.name for f in source.families]
    assert reused[0] == 0
    assert reused[1] == len(names)
    # power and energy of the whole GPU and both activity families of the MIG instance changed
    assert reused[2] == len(names) - 4
    # a new holder of MIG-b relabels that instance's samples: each family with a sample of it is rendered anew
    assert reused[3] == len(names) - sum(1 for f in source.families if any(s.labels.get("GPU_I_ID") == "9"
                                                                           for s in f.samples))


def test_label_sets_stay_the_same_objects_until_what_they_are_made_of_changes() -> None:
    labels = LabelCache()

    def mig_b_labels(holding: dict[str, tuple[Holder, ...]], driver: str = "550.54.15") -> dict[str, str]:
        family = dcgm_families(Snapshot(driver=driver, gpus=(WHOLE, MIG)), hostname="node-a", holding=holding,
                               labels=labels)
        used = next(f for f in family if f.name == "DCGM_FI_DEV_FB_USED")
        return next(s.labels for s in used.samples if s.labels.get("GPU_I_ID") == "9")

    first = mig_b_labels(HELD)
    assert mig_b_labels(HELD) is first
    held = mig_b_labels({**HELD, "MIG-b": (Holder("small", "team-c", "main"),)})
    assert held is not first and held["pod"] == "small"
    assert mig_b_labels({**HELD, "MIG-b": (Holder("small", "team-c", "main"),)}) is held
    assert mig_b_labels(HELD, driver="560.35.03")["DCGM_FI_DRIVER_VERSION"] == "560.35.03"


def call(app: WSGIApplication, method: str = "GET", **headers: str) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": "/metrics", "REQUEST_METHOD": method, **headers}
    setup_testing_defaults(environ)
    answer: list[tuple[str, dict[str, str]]] = []

    def start_response(status: str, sent: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
        answer.append((status, dict(sent)))
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return answer[0][0], answer[0][1], body


def test_metrics_over_http_answer_as_prometheus_clients_own_app_with_the_text_format_and_other_methods_get_405() -> None:
    source = Families()
    source.families = dcgm_families(Snapshot(driver="550.54.15", gpus=(WHOLE, MIG)), hostname="node-a", holding=HELD)
    registry = CollectorRegistry()
    registry.register(source)
    ours, theirs = create_http_app(registry, ready=lambda: True), make_wsgi_app(registry)
    openmetrics_first = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    assert call(ours, HTTP_ACCEPT=openmetrics_first) == call(theirs, HTTP_ACCEPT="text/plain")
    status, headers, body = call(ours, HTTP_ACCEPT_ENCODING="gzip")
    assert (status, headers["Content-Encoding"]) == ("200 OK", "gzip")
    assert gzip.decompress(body) == generate_latest(registry)
    for method in ("OPTIONS", "POST"):
        status, headers, body = call(ours, method)
        assert (status, headers["Allow"], json.loads(body)) == ("405 Method Not Allowed", "GET",
                                                                {"error": "only GET is served"})
