"""Start gpuguard's services as real processes on 127.0.0.1, wait until they answer, and stop them all.

The demo and the integration tests run the webhook, the extender and one node agent per GPU node exactly as a
cluster would (separate processes, real TLS, real HTTP), with a cluster-state file standing in for the API server,
and a real Prometheus server when one is installed. Each service runs as `python -m <service>` so it imports only
itself. Output goes to one log file per service, shown when something fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

import gpuguard

STOP_TIMEOUT = 10.0
"""Seconds a service gets to exit after SIGTERM before it is killed (and reported as not exiting cleanly)."""


class ServiceError(RuntimeError):
    """A service did not come up; the message carries the end of its log."""


@dataclass
class Service:
    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    ssl_context: ssl.SSLContext | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": _package_root() + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, then wait; the exit code, or None if it had to be killed."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _package_root() -> str:
    """The directory holding the gpuguard package: services find it whether installed or run from a checkout."""
    return str(Path(gpuguard.__file__).resolve().parent.parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


async def wait_ready(services: Sequence[Service], *, timeout: float = 30.0) -> None:
    """Poll each service's ready URL until it answers 200; fail early if a process exits."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        await asyncio.gather(*(_wait_one(session, service, timeout) for service in services))


async def _wait_one(session: aiohttp.ClientSession, service: Service, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if service.process is not None and service.process.poll() is not None:
            raise ServiceError(f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            async with session.get(service.ready_url, ssl=service.ssl_context or False) as reply:
                if reply.status == 200:
                    return
        if loop.time() > deadline:
            raise ServiceError(f"{service.name} not ready after {timeout:.0f} s:\n{service.log_tail()}")
        await asyncio.sleep(0.1)


def stop_all(services: Sequence[Service]) -> dict[str, int | None]:
    """Stop every service (newest first); the exit codes by name."""
    return {service.name: service.stop() for service in reversed(services)}


def prometheus_config(targets: Sequence[str], *, interval: str = "1s") -> str:
    """A scrape configuration for the agents' metrics endpoints, scraped every `interval`."""
    listed = ", ".join(f'"{target}"' for target in targets)
    return (
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
        "scrape_configs:\n"
        "  - job_name: gpuguard-agents\n"
        f"    static_configs:\n      - targets: [{listed}]\n"
    )
