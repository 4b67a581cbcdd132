"""A policy file deleted, cut short mid-write or invalid: the last good policy stays, and a metric and a log say so.

Each check here is one poll of `PolicySource.check()`, the call every service makes once per reload interval (the
webhook's background task, the agent's cycle), so the sequences are exact rather than timed. The running webhook's
side (requests still answered under the last good policy) is in tests/webhook/test_server.py.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gpuguard.policy.loading import parse_policy
from gpuguard.web.policy_source import PolicySource
from tests.conftest import ROOT

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


FAULTS: dict[str, tuple[Callable[[Watched], None], str]] = {
    "deleted": (_delete, "cannot read"),
    "replaced by a directory": (_directory, "cannot read"),
    "cut short and left so": (lambda w: w.write(NEW[: NEW.index("rules:") + 20]), "is invalid"),
    "invalid value": (lambda w: w.write(NEW.replace("mode: enforce", "mode: sometimes")), "mode"),
    "not YAML": (lambda w: w.write("apiVersion: gpuguard.io/v1\nkind: [GpuPolicy\n"), "is invalid"),
    "empty": (lambda w: w.write(""), "is invalid"),
    "binary": (lambda w: w.path.write_bytes(b"\xff\xfe\x00garbage"), "cannot read"),
    "unknown version": (lambda w: w.write(NEW.replace("gpuguard.io/v1", "gpuguard.io/v9")), "v9"),
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
