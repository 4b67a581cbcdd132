"""The policy in force, re-read when its file changes; a broken new version is refused and the last good one kept.

A ConfigMap mounted as a volume is updated in place by the kubelet (an atomic symlink swap), so every service polls
its policy file: cheap (one small read and hash per interval) and immune to inotify quirks of those symlinks. A
changed file is only judged once it reads the same on two checks in a row: a file written in place (an editor, `cp`)
can be read half-written, and a third of the prefixes of a policy file are themselves valid policies (cut after
`mode: enforce`, it is a policy with no rules and default limits), which must never come into force. A settled
change that fails to read or parse is logged once per distinct error, counted in `gpuguard_policy_reloads_total
{result="error"}`, flagged by `gpuguard_policy_last_reload_failed`, and changes nothing; a file that cannot be read
at all is refused at once. The first load is different: with no last good policy to keep, a broken file stops the
process with the full list of errors.
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
from gpuguard.web.logs import log_bug

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
        self._pending = ""
        """Digest of a changed file seen once, waiting to read the same again before it is judged."""
        self._last_error = ""
        self._generation_gauge.set(1)

    def _read(self) -> str:
        assert self.path is not None
        return self.path.read_text(encoding="utf-8")

    def check(self) -> bool:
        """Re-read the file; True when a changed, settled, valid policy was taken into force."""
        if self.path is None:
            return False
        try:
            text = self._read()
        except OSError as error:
            self._pending = ""
            self._refuse(f"cannot read {self.path}: {error.strerror or error}")
            return False
        except UnicodeDecodeError as error:
            self._pending = ""
            self._refuse(f"cannot read {self.path}: not UTF-8 text ({error.reason} at byte {error.start})")
            return False
        digest = _digest(text)
        if digest == self._digest:
            self._pending = ""
            self._clear_error()  # back to the policy in force (e.g. a bad edit undone): nothing is refused now
            return False
        if digest != self._pending:
            self._pending = digest  # first sight of this content: it may still be being written
            return False
        try:
            policy = parse_policy(text)
        except PolicyError as error:
            self._refuse(f"{self.path} is invalid:\n{error}")
            return False
        self.policy, self._digest = policy, digest
        self.generation += 1
        self._clear_error()
        self._reloads.labels("success").inc()
        self._generation_gauge.set(self.generation)
        log.info("policy reloaded from %s (generation %d)", self.path, self.generation)
        return True

    def _clear_error(self) -> None:
        if self._last_error:
            log.info("policy file %s is valid again (generation %d in force)", self.path, self.generation)
        self._last_error = ""
        self._last_error_gauge.set(0)

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
            try:
                self.check()
            except Exception as error:  # a bug here must not end the polling: the next interval tries again
                log_bug(log, "checking the policy file %s failed", self.path, error=error)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
