"""Publish the node's GPU inventory as its `gpuguard.io/gpu-inventory` annotation, and back off when the API fails.

The annotation is patched only when its content changed (after the rounding in `inventory`), or when the one on
the node is old enough that readers would take the agent for dead; a patch is a JSON merge patch of that one
annotation, so nothing else on the node is touched. API failures are the caller's to count; `Backoff` spaces the
retries (interval, 2x, 4x, ... up to a cap) so a struggling API server is not hammered by every GPU node at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpuguard.contracts.node_inventory import ANNOTATION, NodeInventory, encode_inventory
from gpuguard.k8s.cluster_state import JsonDict
from gpuguard.k8s.nodes import NodeApi
from node_agent.inventory import needs_publishing, published, same_content
from node_agent.metrics import AgentMetrics


def backoff_delay(failures: int, *, base: float, cap: float) -> float:
    """Seconds to wait after the `failures`-th consecutive failure: base, 2*base, 4*base, ... at most cap."""
    return min(cap, base * 2.0 ** max(failures - 1, 0))


@dataclass(slots=True)
class Backoff:
    base: float
    cap: float
    failures: int = 0
    retry_at: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = backoff_delay(self.failures, base=self.base, cap=self.cap)
        self.retry_at = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0


class InventoryReporter:
    """Keeps the annotation on one node current. With `dry_run`, says what it would patch instead."""

    def __init__(
        self, api: NodeApi, node: str, *, metrics: AgentMetrics, dry_run: bool = False,
        say: Callable[[str], None] = print,
    ) -> None:
        self._api = api
        self._node = node
        self._metrics = metrics
        self._dry_run = dry_run
        self._say = say
        self.current: NodeInventory | None = None
        """What the node carries (or, in a dry run, would carry)."""
        self._observed = False

    def observe(self, node: JsonDict) -> None:
        """Take the annotation from a freshly read node (someone may have changed or removed it)."""
        if self._dry_run and self._observed:
            return  # the node never gets our patches in a dry run; remember what it would carry instead
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        self.current = published(annotations.get(ANNOTATION))
        self._observed = True

    def report(self, inventory: NodeInventory, *, refresh_after: float) -> bool:
        """Patch the annotation if needed; True when it was (or, in a dry run, would have been) patched."""
        if not needs_publishing(self.current, inventory, refresh_after=refresh_after):
            return False
        text = encode_inventory(inventory)
        if self._dry_run:
            if not same_content(self.current, inventory):
                self._say(f"[dry-run] would set annotation {ANNOTATION} on node {self._node}: {text}")
        else:
            self._api.patch_node_metadata(self._node, annotations={ANNOTATION: text})
            self._metrics.inventory_patches.inc()
        self.current = inventory
        return True
