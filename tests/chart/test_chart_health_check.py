"""The `helm test` pod's health check, run against a real `gpuguard webhook` process on this machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.helm import CHART, ROOT, Rendered, render

SCRIPT = CHART / "files" / "health-check.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    """A webhook serving a self-signed certificate from its own CA: (https port, metrics port, TLS directory)."""
    tls = tmp_path_factory.mktemp("tls")
    port, metrics = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpuguard", "webhook", "--host", "127.0.0.1", "--port", str(port), "--self-signed",
         str(tls), "--service-name", "gpuguard-webhook", "--namespace", "gpuguard", "--metrics-port", str(metrics)],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        yield port, metrics, tls
    finally:
        process.terminate()
        process.communicate(timeout=10)  # reaps the process and closes its stderr pipe


def check(checks: list[dict[str, object]], *, attempts: int = 1) -> subprocess.CompletedProcess[str]:
    env = {"GPUGUARD_CHECKS": json.dumps(checks), "GPUGUARD_CHECK_ATTEMPTS": str(attempts),
           "GPUGUARD_CHECK_DELAY": "0.25"}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_a_healthy_webhook_passes_over_tls_verified_against_its_ca(webhook: tuple[int, int, Path]) -> None:
    port, metrics, tls = webhook
    result = check([
        {"name": "webhook", "url": f"https://localhost:{port}/healthz", "ca": str(tls / "ca.crt")},
        {"name": "metrics", "url": f"http://127.0.0.1:{metrics}/metrics"},
    ], attempts=40)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == [f"ok   webhook: https://localhost:{port}/healthz",
                                          f"ok   metrics: http://127.0.0.1:{metrics}/metrics"]


def test_a_certificate_from_another_ca_fails_the_check(webhook: tuple[int, int, Path],
                                                       tmp_path: Path) -> None:
    port, _, tls = webhook
    check([{"name": "webhook", "url": f"https://localhost:{port}/healthz", "ca": str(tls / "ca.crt")}], attempts=40)
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from gpuguard.web.tls import "
                    "ensure_self_signed; ensure_self_signed(Path(sys.argv[1]), ['localhost'])", str(other)],
                   cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True)
    result = check([{"name": "webhook", "url": f"https://localhost:{port}/healthz", "ca": str(other / "ca.crt")}])
    assert result.returncode == 1
    assert "FAIL webhook" in result.stdout and "TLS verification failed" in result.stdout


def test_an_unreachable_component_fails_with_its_hint() -> None:
    result = check([{"name": "node agent", "url": f"http://127.0.0.1:{free_port()}/healthz",
                     "hint": "No agent pod answered"}])
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith("FAIL node agent: ")
    assert "unreachable" in result.stdout and "No agent pod answered" in result.stdout


def test_the_test_pod_runs_this_script_on_each_enabled_components_endpoint(default_render: Rendered) -> None:
    pod = default_render.get("Pod", "gpuguard-test")
    health = next(c for c in pod["spec"]["containers"] if c["name"] == "health")
    assert health["command"] == ["python3", "-c", SCRIPT.read_text()]
    checks = json.loads(next(e["value"] for e in health["env"] if e["name"] == "GPUGUARD_CHECKS"))
    assert [c["url"] for c in checks] == [
        "https://gpuguard-webhook.gpuguard.svc:443/healthz",
        "http://gpuguard-webhook.gpuguard.svc:9090/metrics",
        "https://gpuguard-scheduler.gpuguard.svc:10259/healthz",
        "http://gpuguard-scheduler.gpuguard.svc:9091/metrics",
        "http://gpuguard-agent.gpuguard.svc:9401/healthz",
    ]
    assert checks[0]["ca"] == "/etc/gpuguard-tls/ca.crt", "the webhook is checked the way kube-apiserver calls it"
    without_agent = render(("agent-off-values.yaml",)).get("Pod", "gpuguard-test")
    assert "gpuguard-agent" not in json.dumps(without_agent)
