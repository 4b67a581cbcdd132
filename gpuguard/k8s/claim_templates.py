"""Writing ResourceClaimTemplates, and electing the one webhook replica that writes them, through the kubernetes client.

The templates reconciler's only side effects: create a template (one that already exists is left as it is: the name
is its content), delete one (one already gone is fine), and hold a coordination.k8s.io/v1 Lease while it does, with
the client's own leader election rounds (`kubernetes.leaderelection`, its LeaseLock bound to our API client). What to
write is decided elsewhere (`gpuguard.policy.claim_templates.plan_templates`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)

CONFLICT, NOT_FOUND = 409, 404


class TemplateApi:
    def __init__(self, api: client.ApiClient) -> None:
        self._api = client.ResourceV1Api(api)

    def create(self, template: dict[str, Any]) -> bool:
        """Create it; False when one of that name exists already (left untouched: it is never edited in place)."""
        namespace = template["metadata"]["namespace"]
        try:
            self._api.create_namespaced_resource_claim_template(namespace, cast(Any, template))  # sent as it is
        except ApiException as error:
            if error.status == CONFLICT:
                return False
            raise
        return True

    def delete(self, namespace: str, name: str) -> bool:
        """Delete it; False when it was gone already."""
        try:
            self._api.delete_namespaced_resource_claim_template(name, namespace)
        except ApiException as error:
            if error.status == NOT_FOUND:
                return False
            raise
        return True


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    name: str = "gpuguard-claim-templates"
    namespace: str = "gpuguard"
    identity: str = ""
    """This replica's name in the Lease (the pod name)."""
    lease_seconds: int = 15
    """How long a leader's Lease holds without renewal (kube-controller-manager's default)."""
    renew_seconds: int = 10
    retry_seconds: int = 2


class Leadership:
    """This replica's claim on the Lease, kept in a daemon thread; `leading` says whether it holds it now.

    Each round is the client's own `LeaderElection.try_acquire_or_renew` (take a free or expired Lease, renew our
    own, never one another replica holds unexpired); the loop around it is ours so that `stop()` ends it. A leader
    that has not renewed for `renew_seconds` stops leading before its Lease can expire and pass to another replica.
    """

    def __init__(self, api: client.ApiClient, settings: LeaseSettings,
                 *, on_change: Callable[[bool], None] = lambda _: None) -> None:
        self._settings = settings
        self._on_change = on_change
        self._leading = False
        self._stopped = threading.Event()
        lock = LeaseLock(settings.name, settings.namespace, settings.identity)
        lock.api_instance = client.CoordinationV1Api(api)
        config = electionconfig.Config(lock, settings.lease_seconds, settings.renew_seconds, settings.retry_seconds,
                                       lambda: None, lambda: None)
        self._election = leaderelection.LeaderElection(config)
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    @property
    def leading(self) -> bool:
        return self._leading and not self._stopped.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._set(False)

    def _run(self) -> None:
        renewed = 0.0
        while not self._stopped.is_set():
            try:
                won = bool(self._election.try_acquire_or_renew())
            except Exception as error:  # the API server may be away: keep trying
                log.warning("leader election round failed (%s)", error)
                won = False
            now = time.monotonic()
            renewed = now if won else renewed
            self._set(won or (self._leading and now - renewed < self._settings.renew_seconds))
            self._stopped.wait(self._settings.retry_seconds)

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            where = f"{self._settings.namespace}/{self._settings.name}"
            log.info("%s %s %s", self._settings.identity, "leads" if leading else "no longer leads", where)
            self._on_change(leading)
