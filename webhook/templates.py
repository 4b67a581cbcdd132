"""The ResourceClaimTemplates reconciler: gpuguard's templates in every namespace in the webhook's scope.

Runs in the webhook Deployment (`--claim-templates`); only the replica holding the Lease writes. It lists and watches
Namespaces, every Pod (pending ones too: their claims are still to be made from a template) and
ResourceClaimTemplates through `gpuguard.k8s.watch`; after a change, or every `resync` seconds, it plans with
`gpuguard.policy.claim_templates.plan_templates` under the policy in force and applies the plan: missing templates
are created, gpuguard's templates that no shape needs and no pod names are deleted. A template is never edited in
place (its name is its content); one whose content was changed by hand is logged and left alone. A write that fails
is logged and retried on the next pass. The webhook's scope is every namespace except the excluded ones (kube-system,
its own, the chart's `excludeNamespaces`) and those labelled `gpuguard.io/webhook=ignore`, as its
namespaceSelector says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from gpuguard.k8s.watch import EventType, JsonDict, Kind
from gpuguard.policy.claim_templates import TemplateKey, TemplatePlan, is_managed, plan_templates, pod_template_refs
from gpuguard.policy.model import Policy
from gpuguard.policy.podspec import mapping

log = logging.getLogger(__name__)

OPT_OUT_LABEL = "gpuguard.io/webhook"
KINDS: tuple[Kind, ...] = ("Namespace", "Pod", "ResourceClaimTemplate")


class TemplateWriter(Protocol):
    def create(self, template: dict[str, Any]) -> bool: ...

    def delete(self, namespace: str, name: str) -> bool: ...


def _key(obj: JsonDict) -> TemplateKey:
    metadata = mapping(obj.get("metadata"))
    return (str(metadata.get("namespace") or "default"), str(metadata.get("name") or ""))


class ClusterView:
    """What the reconciler knows of the cluster, fed by the watch threads (through `WatchAdapter`). Thread-safe."""

    def __init__(self, *, excluded: Iterable[str] = ()) -> None:
        self.excluded = frozenset(excluded)
        self._lock = threading.Lock()
        self._namespaces: dict[str, bool] = {}
        """name -> in scope."""
        self._refs: dict[TemplateKey, frozenset[TemplateKey]] = {}
        """pod -> the templates it names."""
        self._templates: dict[TemplateKey, JsonDict] = {}
        """gpuguard's templates -> their claim spec."""
        self._synced: set[Kind] = set()
        self.changed_event = threading.Event()

    @property
    def synced(self) -> bool:
        return self._synced >= set(KINDS)

    def snapshot(self) -> tuple[list[str], dict[TemplateKey, JsonDict], set[TemplateKey]]:
        with self._lock:
            namespaces = sorted(n for n, ok in self._namespaces.items() if ok)
            referenced = {k for refs in self._refs.values() for k in refs}
            return namespaces, dict(self._templates), referenced

    def synced_kind(self, kind: Kind, objects: list[JsonDict]) -> None:
        with self._lock:
            if kind == "Namespace":
                self._namespaces = {}
            elif kind == "Pod":
                self._refs = {}
            else:
                self._templates = {}
            for obj in objects:
                self._put(kind, obj)
            self._synced.add(kind)
        self.changed_event.set()

    def changed_kind(self, kind: Kind, event: EventType, obj: JsonDict) -> None:
        with self._lock:
            if event == "DELETED":
                self._drop(kind, obj)
            else:
                self._put(kind, obj)
        self.changed_event.set()

    def _put(self, kind: Kind, obj: JsonDict) -> None:
        if kind == "Namespace":
            metadata = mapping(obj.get("metadata"))
            name = str(metadata.get("name") or "")
            labels = mapping(metadata.get("labels"))
            self._namespaces[name] = name not in self.excluded and labels.get(OPT_OUT_LABEL) != "ignore"
        elif kind == "Pod":
            refs = pod_template_refs(obj)
            if refs:
                self._refs[_key(obj)] = refs
            else:
                self._refs.pop(_key(obj), None)
        elif is_managed(obj):
            self._templates[_key(obj)] = dict(mapping(mapping(obj.get("spec")).get("spec")))

    def _drop(self, kind: Kind, obj: JsonDict) -> None:
        if kind == "Namespace":
            self._namespaces.pop(str(mapping(obj.get("metadata")).get("name") or ""), None)
        elif kind == "Pod":
            self._refs.pop(_key(obj), None)
        else:
            self._templates.pop(_key(obj), None)


class WatchAdapter:
    """Routes a `ClusterWatch`-style handler's calls to a `ClusterView`."""

    def __init__(self, view: ClusterView) -> None:
        self._view = view

    def synced(self, kind: Kind, objects: list[JsonDict]) -> None:
        self._view.synced_kind(kind, objects)

    def changed(self, kind: Kind, event: EventType, obj: JsonDict) -> None:
        self._view.changed_kind(kind, event, obj)


@dataclass(frozen=True, slots=True)
class PassResult:
    plan: TemplatePlan
    created: int = 0
    deleted: int = 0
    failed: int = 0


class TemplateReconciler:
    def __init__(
        self, view: ClusterView, writer: TemplateWriter, policy: Callable[[], Policy], *,
        leading: Callable[[], bool], resync: float = 60.0,
    ) -> None:
        self._view = view
        self._writer = writer
        self._policy = policy
        self._leading = leading
        self._resync = resync
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="claim-templates", daemon=True)
        self.passes = 0
        self._drift_seen: set[TemplateKey] = set()

    def pass_once(self) -> PassResult | None:
        """One reconciliation, if this replica leads and the view has synced; what it planned and did."""
        if not self._leading() or not self._view.synced:
            return None
        namespaces, existing, referenced = self._view.snapshot()
        plan = plan_templates(self._policy(), namespaces=namespaces, existing=existing, referenced=referenced)
        self._report_drift(plan)
        created = deleted = failed = 0
        for template in plan.create:
            try:
                created += self._writer.create(template)
            except Exception as error:  # the API server may refuse one write: the next pass retries it
                failed += 1
                log.warning("cannot create ResourceClaimTemplate %s/%s: %s", template["metadata"]["namespace"],
                            template["metadata"]["name"], error)
        for namespace, name in plan.delete:
            try:
                deleted += self._writer.delete(namespace, name)
            except Exception as error:
                failed += 1
                log.warning("cannot delete ResourceClaimTemplate %s/%s: %s", namespace, name, error)
        self.passes += 1
        if created or deleted:
            log.info("claim templates: %d created, %d deleted", created, deleted)
        return PassResult(plan, created, deleted, failed)

    def _report_drift(self, plan: TemplatePlan) -> None:
        for namespace, name in set(plan.drifted) - self._drift_seen:
            log.warning("ResourceClaimTemplate %s/%s was edited by hand; gpuguard leaves it as it is (delete it to have "
                        "it recreated from the policy)", namespace, name)
        self._drift_seen = set(plan.drifted)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._view.changed_event.set()
        self._thread.join(5)

    def poke(self) -> None:
        """Reconcile soon (the policy changed, or leadership was gained)."""
        self._view.changed_event.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._view.changed_event.wait(self._resync)
            self._view.changed_event.clear()
            if self._stopped.is_set():
                return
            try:
                self.pass_once()
            except Exception as error:  # a bug in one pass must not end reconciling
                log.exception("claim template pass failed: %s", error)


# ------------------------------------------------------------------------------------------------------ the I/O shell

ALWAYS_EXCLUDED = ("kube-system",)


@dataclass(slots=True)
class ClaimTemplates:
    """The running parts: the watches, the election and the reconciler (started and stopped together)."""

    watchers: list[Any]
    leadership: Any
    reconciler: TemplateReconciler

    def start(self) -> None:
        for watcher in self.watchers:
            watcher.start()
        self.leadership.start()
        self.reconciler.start()

    def stop(self) -> None:
        self.reconciler.stop()
        self.leadership.stop()
        for watcher in self.watchers:
            watcher.stop()


def build_claim_templates(
    api: Any, policy: Callable[[], Policy], *, lease_namespace: str, identity: str, excluded: Iterable[str],
    watch: Any = None, lease: Any = None, resync: float = 30.0,
) -> ClaimTemplates:
    """Wire the reconciler to the API server behind `api` (a kubernetes ApiClient). `watch` / `lease` override the
    watch and lease settings (tests make them fast)."""
    from gpuguard.k8s.claim_templates import Leadership, LeaseSettings, TemplateApi
    from gpuguard.k8s.watch import KindWatcher, WatchSettings

    view = ClusterView(excluded=(*ALWAYS_EXCLUDED, lease_namespace, *excluded))
    adapter = WatchAdapter(view)
    settings = watch or WatchSettings(pod_field_selector="")  # pending pods name templates too
    watchers = [KindWatcher(api, kind, adapter, settings=settings) for kind in KINDS]
    holder: list[TemplateReconciler] = []
    leadership = Leadership(api, lease or LeaseSettings(namespace=lease_namespace, identity=identity),
                            on_change=lambda _: holder[0].poke() if holder else None)
    reconciler = TemplateReconciler(view, TemplateApi(api), policy, leading=lambda: leadership.leading, resync=resync)
    holder.append(reconciler)
    return ClaimTemplates(watchers, leadership, reconciler)


def claim_templates_context(
    settings: Any, policy: Any
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """The webhook app's cleanup context that runs the reconciler (from `WebhookSettings` and its `PolicySource`)."""
    from gpuguard.k8s.client import api_client

    if not settings.namespace:
        raise ValueError("give --namespace (the webhook's own namespace: where the Lease lives, never in scope)")
    api = api_client(kubeconfig=settings.kubeconfig, in_cluster=settings.in_cluster)
    parts = build_claim_templates(api, lambda: policy.policy, lease_namespace=settings.namespace,
                                  identity=settings.identity, excluded=settings.exclude_namespaces)

    @contextlib.asynccontextmanager
    async def running(_: Any) -> AsyncIterator[None]:
        parts.start()
        try:
            yield
        finally:
            await asyncio.to_thread(parts.stop)

    return running
