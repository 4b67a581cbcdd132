"""The policy in force, re-read when its file changes; a broken new version is refused and the last good one kept.

A ConfigMap mounted as a volume is updated in place by the kubelet (an atomic symlink swap), so every service polls
its policy file: cheap (one small read and hash per interval) and immune to inotify quirks of those symlinks. A
reload that fails to read or parse is logged once per distinct error, counted in `gpuguard_policy_reloads_total
{result="error"}`, and changes nothing. The first load is different: with no last good policy to keep, a broken
file stops the process with the full list of errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from gpuguard.policy.loading import PolicyError, default_policy_text, parse_policy
from gpuguard.policy.model import Policy

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0
"""Seconds between checks: the kubelet itself only syncs ConfigMap volumes every minute or so."""


class PolicySource:
    """Holds the current policy and its generation (1 for the first, +1 per accepted change)."""

    def __init__(self, path: Path | None, *, registry: CollectorRegistry) -> None:
        self.path = path
        self._reloads = Counter(
            "gpuguard_policy_reloads", "Policy reload attempts by result", ["result"], registry=registry
        )
        self._generation_gauge = Gauge(
            "gpuguard_policy_generation", "Generation of the policy in force (1 = as started)", registry=registry
        )
        self._last_error_gauge = Gauge(
            "gpuguard_policy_last_reload_failed", "1 while the newest policy file is refused", registry=registry
        )
        text = self._read() if path is not None else default_policy_text()
        self.policy: Policy = parse_policy(text)
        self.generation = 1
        self._digest = _digest(text)
        self._last_error = ""
        self._generation_gauge.set(1)

    def _read(self) -> str:
        assert self.path is not None
        return self.path.read_text(encoding="utf-8")

    def check(self) -> bool:
        """Re-read the file; True when a changed, valid policy was taken into force."""
        if self.path is None:
            return False
        try:
            text = self._read()
        except OSError as error:
            self._refuse(f"cannot read {self.path}: {error.strerror or error}")
            return False
        digest = _digest(text)
        if digest == self._digest:
            return False
        try:
            policy = parse_policy(text)
        except PolicyError as error:
            self._refuse(f"{self.path} is invalid:\n{error}")
            return False
        self.policy, self._digest = policy, digest
        self.generation += 1
        self._last_error = ""
        self._reloads.labels("success").inc()
        self._generation_gauge.set(self.generation)
        self._last_error_gauge.set(0)
        log.info("policy reloaded from %s (generation %d)", self.path, self.generation)
        return True

    def _refuse(self, reason: str) -> None:
        self._reloads.labels("error").inc()
        self._last_error_gauge.set(1)
        if reason != self._last_error:
            log.error("policy update refused, keeping generation %d: %s", self.generation, reason)
            self._last_error = reason

    @contextlib.asynccontextmanager
    async def watching(self, interval: float = DEFAULT_INTERVAL) -> AsyncIterator[None]:
        """Poll the file in the background for as long as the context is open (an aiohttp cleanup context)."""
        task = asyncio.create_task(self._poll(interval))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
