"""The label protocol with NVIDIA's MIG manager: what to write on a node to change its layout, and what to do as the
MIG manager reports progress. Pure: a node's labels, annotations and taints in, the changes to write out.

The MIG manager applies the layout named by `nvidia.com/mig.config` and reports in `nvidia.com/mig.config.state`
(`pending` while it drains the node's GPU operands and re-partitions, `rebooting` when a MIG mode change needs a
reboot, then `success` or `failed`). Per node:

    idle --start--> changing: set nvidia.com/mig.config=<new>, remove the old state label (so a stale `success`
                    cannot end the change), taint gpuguard.io/mig-reconfiguring=<new>:NoSchedule (no new pod lands
                    on GPUs about to be re-cut), annotate the previous name and the time
    changing, state pending / rebooting / none yet -> keep the taint
    changing, state success -> remove the taint and the previous-name annotation: `applied`
    changing, state failed  -> set nvidia.com/mig.config back to the previous name, remove the state label, keep
                               the taint, annotate the name that failed: `failed` (then it is a rollback in progress)
    rolling back, state success -> remove the taint and the annotations: `rolled-back`
    rolling back, state failed  -> keep the taint, stop acting on the node (an admin must look): `stuck`
    changing, state failed, no previous name (the node had no nvidia.com/mig.config) -> `failed`, and stuck at once

Everything the protocol needs to resume after a restart is on the node itself (the annotations), so the component
that drives it keeps no state of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

CONFIG_LABEL = "nvidia.com/mig.config"
STATE_LABEL = "nvidia.com/mig.config.state"
TAINT_KEY = "gpuguard.io/mig-reconfiguring"
PREVIOUS = "gpuguard.io/mig-config-previous"
"""Annotation: the layout name to roll back to; present while a change of ours is under way."""
FAILED = "gpuguard.io/mig-config-failed"
"""Annotation: the layout name the MIG manager failed to apply; present while rolling back."""
STUCK = "gpuguard.io/mig-config-stuck"
"""Annotation: the rollback failed too; the node stays tainted and is left to an admin."""
CHANGED_AT = "gpuguard.io/mig-config-changed-at"
"""Annotation: unix seconds of the last layout change started here (for the cool-down)."""

Event = Literal["started", "applied", "failed", "rolled-back", "stuck", ""]
Taint = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    version: str = ""
    """metadata.resourceVersion, sent with every patch so a concurrent change is refused (409), not overwritten."""

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> NodeView:
        metadata = node.get("metadata") or {}
        taints = (node.get("spec") or {}).get("taints") or []
        return cls(str(metadata.get("name", "")), dict(metadata.get("labels") or {}),
                   dict(metadata.get("annotations") or {}), tuple(t for t in taints if isinstance(t, dict)),
                   str(metadata.get("resourceVersion") or ""))

    @property
    def config(self) -> str:
        return self.labels.get(CONFIG_LABEL, "")

    @property
    def state(self) -> str:
        return self.labels.get(STATE_LABEL, "")

    @property
    def changing(self) -> bool:
        """A change of ours is under way (or a rollback, or it is stuck): the planner leaves the node alone."""
        return PREVIOUS in self.annotations or FAILED in self.annotations or STUCK in self.annotations

    @property
    def changed_at(self) -> float | None:
        try:
            return float(self.annotations[CHANGED_AT])
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Step:
    """What to write on one node: a JSON merge patch of labels, annotations and (when they change) taints."""

    node: str
    event: Event
    labels: Mapping[str, str | None] = field(default_factory=dict)
    annotations: Mapping[str, str | None] = field(default_factory=dict)
    taints: tuple[Taint, ...] | None = None
    """The node's whole new taint list (a merge patch replaces lists), None to leave it."""
    version: str = ""

    def patch(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        if self.version:
            metadata["resourceVersion"] = self.version
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        body: dict[str, Any] = {"metadata": metadata}
        if self.taints is not None:
            body["spec"] = {"taints": list(self.taints)}
        return body


def _with_taint(view: NodeView, value: str) -> tuple[Taint, ...] | None:
    ours = {"key": TAINT_KEY, "value": value, "effect": "NoSchedule"}
    if ours in view.taints:
        return None
    return tuple(t for t in view.taints if t.get("key") != TAINT_KEY) + (ours,)


def _without_taint(view: NodeView) -> tuple[Taint, ...] | None:
    kept = tuple(t for t in view.taints if t.get("key") != TAINT_KEY)
    return kept if len(kept) != len(view.taints) else None


def start(view: NodeView, target: str, *, now: float) -> Step:
    """Begin moving the node to layout `target`."""
    return Step(view.name, "started", {CONFIG_LABEL: target, STATE_LABEL: None},
                {PREVIOUS: view.config, CHANGED_AT: f"{now:.0f}"}, _with_taint(view, target), view.version)


def progress(view: NodeView) -> Step | None:
    """The next step of a change under way, given what the MIG manager reports; None when there is nothing to do."""
    if STUCK in view.annotations or not view.changing:
        return None
    state = view.state
    if FAILED in view.annotations:
        if state == "success":
            return Step(view.name, "rolled-back", {}, {FAILED: None, PREVIOUS: None}, _without_taint(view),
                        view.version)
        if state == "failed":
            return Step(view.name, "stuck", {}, {STUCK: view.annotations[FAILED]}, None, view.version)
        return _keep_cordon(view)
    if state == "success":
        return Step(view.name, "applied", {}, {PREVIOUS: None}, _without_taint(view), view.version)
    if state == "failed":
        previous = view.annotations.get(PREVIOUS) or None
        if previous is None:  # no name to go back to: the GPUs' layout is unknown, so an admin must look
            return Step(view.name, "failed", {}, {FAILED: view.config, PREVIOUS: None, STUCK: view.config}, None,
                        view.version)
        return Step(view.name, "failed", {CONFIG_LABEL: previous, STATE_LABEL: None},
                    {FAILED: view.config, PREVIOUS: None}, _with_taint(view, previous), view.version)
    return _keep_cordon(view)


def _keep_cordon(view: NodeView) -> Step | None:
    taints = _with_taint(view, view.config or "disabled")
    return Step(view.name, "", taints=taints, version=view.version) if taints is not None else None
