"""The simulator's table and optional chart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from gpuguard.simulate.engine import Outcome
from gpuguard.simulate.model import node_counts

COLUMNS: tuple[tuple[str, Callable[[Outcome], str]], ...] = (
    ("placed before 1st unschedulable", lambda o: f"{o.placed_before_first_failure}"),
    ("placed (whole trace)", lambda o: f"{o.placed}"),
    ("unschedulable", lambda o: f"{o.unschedulable}"),
    ("whole GPUs placed", lambda o: f"{o.whole_gpus_placed}"),
    ("GPUs stranded", lambda o: f"{o.stranded_gpus}"),
    ("MIG slots stranded", lambda o: f"{o.stranded_mig_slots}"),
    ("mean util. of used GPUs", lambda o: f"{o.mean_utilization_of_used:.1f} %"),
)


def table(outcomes: Sequence[Outcome], *, nodes: int, pods: int, seed: int) -> str:
    mix = ", ".join(f"{count} {kind}" for kind, count in node_counts(nodes).items())
    lines = [f"{nodes} nodes ({mix}), {pods} pods, seed {seed}", ""]
    width = max(len(name) for name, _ in COLUMNS)
    lines.append(f"{'':<{width}}  " + "  ".join(f"{o.scheduler:>10}" for o in outcomes))
    for name, value in COLUMNS:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{value(o):>10}" for o in outcomes))
    by = {o.scheduler: o for o in outcomes}
    ours, default, best = by["gpuguard"], by["default"], by["best-fit"]
    lines += ["", f"gpuguard / default scheduler, pods placed before the first unschedulable one: "
                  f"{_ratio(ours, default):.2f}x (target >= 2)",
              f"gpuguard / offline best fit, same measure: {100 * _ratio(ours, best):.0f} % (target >= 95 %)"]
    return "\n".join(lines)


def groups_table(aware: Outcome, unaware: Outcome) -> str:
    """Multi-node groups placed whole and split across NVLink cliques, gpuguard with and without group awareness."""
    lines = [f"multi-node LLM groups (2 or 4 pods of 8 H100 GPUs each): {aware.groups} in the trace",
             f"{'':<28}  {'with group awareness':>20}  {'without':>8}"]
    for name, attribute in (("placed whole", "groups_placed"), ("split across NVLink cliques", "groups_split")):
        lines.append(f"{name:<28}  {getattr(aware, attribute):>20}  {getattr(unaware, attribute):>8}")
    return "\n".join(lines)


def _ratio(a: Outcome, b: Outcome) -> float:
    return a.placed_before_first_failure / max(b.placed_before_first_failure, 1)


def chart(outcomes: Sequence[Outcome], path: Path) -> None:
    """A bar chart of the packing measures (needs matplotlib: pip install 'gpuguard[chart]')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [("placed before 1st unschedulable", "placed_before_first_failure"),
                ("GPUs stranded", "stranded_gpus"), ("MIG slots stranded", "stranded_mig_slots")]
    figure, axes = plt.subplots(1, len(measures), figsize=(12, 3.5))
    for axis, (title, attribute) in zip(axes, measures, strict=True):
        axis.bar([o.scheduler for o in outcomes], [getattr(o, attribute) for o in outcomes],
                 color=["#2b8a3e", "#868e96", "#1c7ed6"])
        axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
