"""A policy file deleted, cut short mid-write or invalid: the last good policy stays, and a metric and a log say so.

Each check here is one poll of `PolicySource.check()`, the call every service makes once per reload interval (the
webhook's background task, the agent's cycle), so the sequences are exact rather than timed. The running webhook's
side (requests still answered under the last good policy) is in tests/webhook/test_server.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gpuguard.policy.loading import PolicyError, parse_policy
from gpuguard.policy.model import Policy
from gpuguard.web import policy_source
from gpuguard.web.policy_source import PolicySource
from tests.conftest import ROOT, review_body
from tests.hardening.inprocess import InProcessServer
from tests.hardening.wire import exchange, head, post

GOOD = (ROOT / "examples" / "policy.yaml").read_text()
NEW = GOOD.replace("migProfile: 1g.10gb", "migProfile: 2g.20gb").replace("maxGpusPerPod: 4", "maxGpusPerPod: 2")


class Watched:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "policy.yaml"
        self.path.write_text(GOOD)
        self.registry = CollectorRegistry()
        self.source = PolicySource(self.path, registry=self.registry)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def write(self, text: str) -> None:
        """In place, as an editor or `cp` writes (not the kubelet's atomic swap)."""
        with self.path.open("w", encoding="utf-8") as handle:
            handle.write(text)

    def polls(self, count: int) -> list[bool]:
        return [self.source.check() for _ in range(count)]


@pytest.fixture
def watched(tmp_path: Path) -> Watched:
    return Watched(tmp_path)


def _cut_points() -> list[int]:
    """Where a writer may have got to: every line end, and a few places inside lines."""
    ends = [i + 1 for i, char in enumerate(NEW) if char == "\n"]
    return sorted({*ends[::3], 7, 150, 500, len(NEW) // 2, len(NEW) - 5})


def test_a_third_of_the_cut_short_policy_files_are_themselves_valid_policies() -> None:
    """Why a changed file must settle before it is judged: parsing alone cannot tell a cut-short file."""
    valid = 0
    for cut in _cut_points():
        try:
            parse_policy(NEW[:cut])
        except ValueError:
            continue
        valid += 1
    assert valid >= 5


@pytest.mark.parametrize("cut", _cut_points())
def test_a_file_read_half_written_never_comes_into_force(watched: Watched, cut: int) -> None:
    before = watched.source.policy
    watched.write(NEW[:cut])
    assert watched.polls(1) == [False]  # the writer is still at it
    assert watched.source.policy is before and watched.source.generation == 1
    watched.write(NEW)
    assert watched.polls(3) == [False, True, False]
    assert watched.source.policy == parse_policy(NEW)
    assert watched.source.generation == 2
    assert watched.metric("gpuguard_policy_reloads_total", result="error") == 0
    assert watched.metric("gpuguard_policy_last_reload_failed") == 0


def _delete(watched: Watched) -> None:
    watched.path.unlink()


def _directory(watched: Watched) -> None:
    watched.path.unlink()
    watched.path.mkdir()


def _fifo(watched: Watched) -> None:
    """Reading a FIFO with no writer blocks for ever: it hung every service's event loop."""
    watched.path.unlink()
    os.mkfifo(watched.path)


def _device(watched: Watched) -> None:
    watched.path.unlink()
    watched.path.symlink_to("/dev/zero")


def _alias_bomb(levels: int = 9) -> str:
    """Nine aliases of nine aliases of ...: 2.3 KB that expand to 9**levels nodes."""
    lines = ["apiVersion: gpuguard.io/v1", "kind: GpuPolicy", "x0: &a0 [" + ",".join(["lol"] * 9) + "]"]
    lines += [f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join([*lines, f"namespaces: {{sandbox-*: {{mode: *a{levels - 1}}}}}", ""])


FAULTS: dict[str, tuple[Callable[[Watched], None], str]] = {
    "deleted": (_delete, "cannot read"),
    "replaced by a directory": (_directory, "cannot read"),
    "cut short and left so": (lambda w: w.write(NEW[: NEW.index("rules:") + 20]), "is invalid"),
    "invalid value": (lambda w: w.write(NEW.replace("mode: enforce", "mode: sometimes")), "mode"),
    "not YAML": (lambda w: w.write("apiVersion: gpuguard.io/v1\nkind: [GpuPolicy\n"), "is invalid"),
    "empty": (lambda w: w.write(""), "is invalid"),
    "binary": (lambda w: w.path.write_bytes(b"\xff\xfe\x00garbage"), "cannot read"),
    "unknown version": (lambda w: w.write(NEW.replace("gpuguard.io/v1", "gpuguard.io/v9")), "v9"),
    "a FIFO": (_fifo, "a FIFO, not a regular file"),
    "a device": (_device, "a character device, not a regular file"),
    "larger than a ConfigMap": (lambda w: w.write(NEW + "#" * (1024 * 1024)), "bytes, more than the 1048576"),
    "an alias bomb": (lambda w: w.write(_alias_bomb()), "more than 100000 YAML nodes"),
    "a recursive alias": (lambda w: w.write(NEW + "x: &loop [*loop]\n"), "refers to the node that contains it"),
    "nested too deeply": (lambda w: w.write(NEW + "x: " + "[" * 50_000 + "]" * 50_000 + "\n"), "nests deeper"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_policy_file_keeps_the_last_good_policy_and_a_metric_and_a_log_line_say_so(
    watched: Watched, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = watched.source.policy
    breaking, fragment = FAULTS[fault]
    with caplog.at_level(logging.INFO, logger="gpuguard.web.policy_source"):
        breaking(watched)
        assert watched.polls(4) == [False] * 4
    assert watched.source.policy is before and watched.source.generation == 1
    assert watched.metric("gpuguard_policy_reloads_total", result="error") >= 1
    assert watched.metric("gpuguard_policy_last_reload_failed") == 1
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 1, "each distinct error is logged once, not every poll"
    message = refusals[0].getMessage()
    assert "policy update refused, keeping generation 1" in message
    assert str(watched.path) in message and fragment in message


@pytest.mark.parametrize("fault", ["deleted", "invalid value"])
def test_after_a_fault_the_next_good_file_is_taken_and_the_alarm_clears(
    watched: Watched, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    FAULTS[fault][0](watched)
    watched.polls(2)
    assert watched.metric("gpuguard_policy_last_reload_failed") == 1
    if watched.path.is_dir():
        shutil.rmtree(watched.path)
    with caplog.at_level(logging.INFO, logger="gpuguard.web.policy_source"):
        watched.write(NEW)
        assert watched.polls(2) == [False, True]
    assert watched.source.generation == 2
    assert watched.metric("gpuguard_policy_last_reload_failed") == 0
    assert watched.metric("gpuguard_policy_reloads_total", result="success") == 1
    assert any("policy reloaded" in r.getMessage() for r in caplog.records)


def test_undoing_a_bad_edit_clears_the_alarm_without_a_reload(watched: Watched) -> None:
    watched.write("mode: sometimes\n")
    watched.polls(2)
    assert watched.metric("gpuguard_policy_last_reload_failed") == 1
    watched.write(GOOD)
    assert watched.polls(1) == [False]
    assert watched.metric("gpuguard_policy_last_reload_failed") == 0
    assert watched.source.generation == 1


def test_the_kubelets_atomic_swap_is_taken_after_one_more_poll(tmp_path: Path) -> None:
    """A ConfigMap volume: policy.yaml -> ..data/policy.yaml, and ..data swapped to a new directory at once."""
    volume = tmp_path / "config"
    for version, text in (("..v1", GOOD), ("..v2", NEW)):
        (volume / version).mkdir(parents=True)
        (volume / version / "policy.yaml").write_text(text)
    (volume / "..data").symlink_to("..v1")
    (volume / "policy.yaml").symlink_to("..data/policy.yaml")
    source = PolicySource(volume / "policy.yaml", registry=CollectorRegistry())
    (volume / "..tmp").symlink_to("..v2")
    os.replace(volume / "..tmp", volume / "..data")
    assert [source.check(), source.check()] == [False, True]
    assert source.policy == parse_policy(NEW)


@pytest.mark.parametrize("fault", ["an alias bomb", "larger than a ConfigMap"])
def test_a_refused_policy_costs_little_and_logs_a_short_line(watched: Watched, fault: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The alias bomb was refused only after pydantic had walked its expansion: seconds per level, and a 34 MB
    log line quoting it."""
    with caplog.at_level(logging.INFO, logger="gpuguard.web.policy_source"):
        FAULTS[fault][0](watched)
        watched.polls(2)
    (refusal,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusal) < 1000


def test_a_policy_of_any_size_gets_an_error_message_of_bounded_size(watched: Watched,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    huge_value = GOOD.replace("mode: enforce", "mode: " + "x" * 900_000)
    many_problems = "apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nrules: [" + ",".join(["{nm: 1}"] * 20_000) + "]\n"
    for text in (huge_value, many_problems):
        with pytest.raises(PolicyError) as refused:
            parse_policy(text)
        assert len(str(refused.value)) < 40_000
    assert len(refused.value.issues) == 40_000, "every problem is still there to inspect"
    with caplog.at_level(logging.INFO, logger="gpuguard.web.policy_source"):
        watched.write(huge_value)
        watched.polls(2)
    assert max(len(r.getMessage()) for r in caplog.records) <= 4200


def test_a_fifo_as_the_first_policy_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="a FIFO, not a regular file"):
        PolicySource(fifo, registry=CollectorRegistry())


def test_the_webhook_keeps_answering_while_a_policy_is_read_and_parsed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy is read and parsed off the event loop: a parse that takes long stalls nothing."""
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    entered, release = threading.Event(), threading.Event()

    def slow_parse(text: str) -> Policy:
        entered.set()
        release.wait(30)
        return parse_policy(text)

    with InProcessServer(policy_path=path, reload_interval=0.05) as server:
        monkeypatch.setattr(policy_source, "parse_policy", slow_parse)
        path.write_text(NEW)
        assert entered.wait(10), "the new file is being parsed"
        assert exchange(server.port, head("GET", "/healthz", "Connection: close"), timeout=5).status == 200
        assert exchange(server.port, post("/validate", review_body("review-knative-sklearn.json"))).status == 200
        release.set()
        for _ in range(200):
            if server.policy.generation == 2:
                break
            time.sleep(0.05)
    assert server.policy.generation == 2


def test_a_fifo_at_the_policy_path_stalls_nothing(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    with InProcessServer(policy_path=path, reload_interval=0.05) as server:
        path.unlink()
        os.mkfifo(path)
        time.sleep(0.3)  # several polls of the FIFO
        for _ in range(5):
            assert exchange(server.port, head("GET", "/healthz", "Connection: close"), timeout=5).status == 200
        assert server.metric("gpuguard_policy_last_reload_failed") == 1
