"""Fixtures for the node agent: the fake libnvidia-ml.so.1 built with gcc, and ways to run the agent's processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "agent"
FAKE_NVML_SOURCE = Path(__file__).parent / "fakenvml" / "fakenvml.c"


def load_agent_data(name: str) -> Any:
    text = (DATA / name).read_text()
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def build_fake_nvml(directory: Path) -> Path:
    """Compile the fake NVML into `directory/libnvidia-ml.so.1`, the name pynvml loads."""
    directory.mkdir(parents=True, exist_ok=True)
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "gcc is needed to build the fake libnvidia-ml.so.1 (apt-get install gcc libc6-dev)"
    library = directory / "libnvidia-ml.so.1"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wl,-soname,libnvidia-ml.so.1",
         "-o", str(library), str(FAKE_NVML_SOURCE), "-lpthread"],
        check=True, capture_output=True, text=True,
    )
    return directory


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding the fake libnvidia-ml.so.1 (put it on LD_LIBRARY_PATH)."""
    return build_fake_nvml(tmp_path_factory.mktemp("fakenvml"))


def agent_env(*, nvml_dir: Path | None = None, nvml_config: Path | None = None) -> dict[str, str]:
    """The environment of a subprocess: the checkout on PYTHONPATH, optionally the fake NVML."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUGUARD_", "FAKE_NVML", "NODE_NAME"))}
    env["PYTHONPATH"] = str(ROOT)
    if nvml_dir is not None:
        env["LD_LIBRARY_PATH"] = str(nvml_dir)
    if nvml_config is not None:
        env["FAKE_NVML_CONFIG"] = str(nvml_config)
    return env


RunAgent = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_agent(fake_nvml: Path, tmp_path: Path) -> RunAgent:
    """Run `python -m gpuguard agent ARGS` to completion (with --once), NVML being the fake library."""

    def run(args: Sequence[str], *, nvml_config: Any = None, module: str = "gpuguard",
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        config_path = None
        if nvml_config is not None:
            config_path = tmp_path / "nvml-config.json"
            config_path.write_text(json.dumps(nvml_config))
        prefix = ["agent"] if module == "gpuguard" else []
        return subprocess.run(
            [sys.executable, "-m", module, *prefix, *args], cwd=ROOT, capture_output=True, text=True,
            env=agent_env(nvml_dir=fake_nvml, nvml_config=config_path), timeout=timeout,
        )

    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
