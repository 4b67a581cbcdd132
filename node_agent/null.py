"""The null backend: a node with no usable GPU. The agent keeps running, reports zero GPUs and says why, once.

A DaemonSet pod that crash-loops on a node without a driver helps nobody; this backend lets the agent stay up,
serve its health metrics, and publish an empty inventory so the extender knows the node has nothing to offer.
"""

from __future__ import annotations

import logging

from node_agent.backend import Snapshot

log = logging.getLogger(__name__)


class NullBackend:
    def __init__(self, reason: str) -> None:
        self.reason = reason
        log.warning("no GPU backend: %s; reporting zero GPUs", reason)

    @property
    def name(self) -> str:
        return "null"

    def read(self) -> Snapshot:
        return Snapshot()

    def close(self) -> None:
        pass
