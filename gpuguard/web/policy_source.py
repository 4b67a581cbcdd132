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

Whatever is at the path cannot stall a service: the file is read only if it is a regular file, at most 1 MiB of it
(`gpuguard.web.files`), and the services' watcher reads and parses it on a worker thread, so a FIFO, a device or a
large or hostile policy never blocks the event loop that answers requests and probes. The parsed policy is taken
into force on the event loop, between requests. Log lines about a refused file are cut to a bounded length.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from gpuguard.policy.loading import MAX_POLICY_BYTES, PolicyError, default_policy_text, parse_policy
from gpuguard.policy.model import Policy
from gpuguard.web.files import FileRefused, read_regular_file
from gpuguard.web.logs import bounded, log_bug

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
        try:
            text = self._read() if path is not None else default_policy_text()
        except FileRefused as error:
            raise FileRefused(f"cannot read {path}: {error}") from None
        self.policy: Policy = parse_policy(text)
        self.generation = 1
        self._digest = _digest(text)
        self._pending = ""
        """Digest of a changed file seen once, waiting to read the same again before it is judged."""
        self._last_error = ""
        self._generation_gauge.set(1)

    def _read(self) -> str:
        assert self.path is not None
        return read_regular_file(self.path, limit=MAX_POLICY_BYTES).decode("utf-8")

    def check(self) -> bool:
        """Re-read the file; True when a changed, settled, valid policy was taken into force."""
        return self._apply(self._examine(self._digest, self._pending))

    async def check_off_loop(self) -> bool:
        """`check()` with the reading and parsing done on a worker thread."""
        return self._apply(await asyncio.to_thread(self._examine, self._digest, self._pending))

    def _examine(self, current: str, pending: str) -> _Reading:
        """Read the file and, once a change has settled, parse it. No state changes: safe on any thread."""
        if self.path is None:
            return _Reading(current)
        try:
            text = self._read()
        except FileRefused as error:
            return _Reading(problem=f"cannot read {self.path}: {error}")
        except OSError as error:
            return _Reading(problem=f"cannot read {self.path}: {error.strerror or error}")
        except UnicodeDecodeError as error:
            return _Reading(problem=f"cannot read {self.path}: not UTF-8 text ({error.reason} at byte {error.start})")
        digest = _digest(text)
        if digest == current or digest != pending:
            return _Reading(digest)
        try:
            return _Reading(digest, policy=parse_policy(text))
        except PolicyError as error:
            return _Reading(digest, problem=f"{self.path} is invalid:\n{error}")

    def _apply(self, reading: _Reading) -> bool:
        if not reading.digest:  # the file could not be read at all: refused at once
            self._pending = ""
            self._refuse(reading.problem)
            return False
        if reading.digest == self._digest:
            self._pending = ""
            self._clear_error()  # back to the policy in force (e.g. a bad edit undone): nothing is refused now
            return False
        if reading.digest != self._pending:
            self._pending = reading.digest  # first sight of this content: it may still be being written
            return False
        if reading.policy is None:
            self._refuse(reading.problem)
            return False
        self.policy, self._digest = reading.policy, reading.digest
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
            log.error("policy update refused, keeping generation %d: %s", self.generation, bounded(reason))
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
                await self.check_off_loop()
            except Exception as error:  # a bug here must not end the polling: the next interval tries again
                log_bug(log, "checking the policy file %s failed", self.path, error=error)


@dataclass(frozen=True, slots=True)
class _Reading:
    """What one look at the file found: its digest ("" when it could not be read), a parsed policy once a change
    has settled, or the problem with it."""

    digest: str = ""
    policy: Policy | None = None
    problem: str = ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
