"""Real aiohttp apps served from a thread of this process, so synchronous tests (hypothesis) can call them.

`ServedApp` serves any app on 127.0.0.1 from an event loop on a background thread (its cleanup contexts run as in
the real server). `InProcessServer` builds the webhook app with `webhook.app.create_app`, exactly as
`gpuguard webhook` does: plain HTTP by default (the properties are about the handlers, not TLS), or HTTPS with a
`ReloadingCertificate`.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from gpuguard.policy.model import Policy
from gpuguard.web import serving
from gpuguard.web.limits import ConnectionLimits
from gpuguard.web.policy_source import PolicySource
from gpuguard.web.tls import ReloadingCertificate
from webhook.app import create_app
from webhook.settings import WebhookSettings


class ServedApp:
    def __init__(self, app: web.Application, context: ssl.SSLContext | None = None, *,
                 limits: ConnectionLimits | None = None) -> None:
        self.app = app
        self.context = context
        self.limits = limits or ConnectionLimits()
        self.connection_registry = CollectorRegistry()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="served-app", daemon=True)
        self._runners: list[web.AppRunner] = []
        self.port = 0

    def __enter__(self) -> ServedApp:
        self._thread.start()
        listener = serving.Listener(self.app, "127.0.0.1", 0, self.context, limits=self.limits)
        started = serving.start([listener], registry=self.connection_registry)
        self._runners = asyncio.run_coroutine_threadsafe(started, self.loop).result(30)
        self.port = int(self._runners[0].addresses[0][1])
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()
            # Connections aiohttp was still draining (a refused body the client kept sending) end with the loop.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class InProcessServer(ServedApp):
    def __init__(self, policy: Policy | None = None, *, policy_path: Path | None = None,
                 certificate: ReloadingCertificate | None = None, **settings: Any) -> None:
        self.registry = CollectorRegistry()
        self.settings = WebhookSettings(host="127.0.0.1", port=0, policy_path=policy_path, **settings)
        self.policy = PolicySource(policy_path, registry=self.registry)
        if policy is not None:
            self.policy.policy = policy
        self.certificate = certificate
        app = create_app(self.settings, policy=self.policy, registry=self.registry, certificate=certificate,
                         serve_metrics=True)
        super().__init__(app, certificate.context if certificate else None, limits=self.settings.connections)

    def __enter__(self) -> InProcessServer:
        super().__enter__()
        return self

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


class InProcessExtender(ServedApp):
    """The extender app as `gpuguard extender --cluster-state` builds it, on the cluster in tests/data/extender."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        from scheduler_ext.app import create_app as create_extender
        from scheduler_ext.inventory.sources import ClusterStateSource
        from scheduler_ext.inventory.store import InventoryStore
        from scheduler_ext.settings import ExtenderSettings
        from scheduler_ext.utilization import UtilizationBoard
        from tests.extender.conftest import CLUSTER, INVENTORY_TIME, policy_text

        policy = tmp / "policy.yaml"
        policy.write_text(policy_text())
        cluster = tmp / "cluster.json"
        cluster.write_bytes(CLUSTER.read_bytes())
        self.settings = ExtenderSettings(cluster_state=cluster, policy_path=policy, reload_interval=60,
                                         state_interval=60, **settings)
        self.registry = CollectorRegistry()
        self.store = InventoryStore(pods_known=True)
        source = ClusterStateSource(cluster, self.store)
        app = create_extender(self.settings, policy=PolicySource(policy, registry=self.registry),
                              registry=self.registry, store=self.store, board=UtilizationBoard(),
                              serve_metrics=False, clock=lambda: INVENTORY_TIME + 30,
                              background=[lambda _: source.running(self.settings.state_interval)])
        super().__init__(app, limits=self.settings.connections)

    def __enter__(self) -> InProcessExtender:
        super().__enter__()

        async def synced() -> None:
            while not self.store.ready:
                await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(synced(), self.loop).result(30)
        return self
