"""The simulator's report: every measure side by side for each scheduler, as a text table or as JSON, and the
optional chart.

No measure is a headline: each row says which way is better, the comparison columns put gpuguard beside each other
scheduler on every row, and the lines under the table name every measure on which gpuguard did worse."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuguard.simulate.dynamic import DYNAMIC
from gpuguard.simulate.engine import Outcome
from gpuguard.simulate.model import node_counts

OURS = "gpuguard"


@dataclass(frozen=True, slots=True)
class Measure:
    name: str
    """The row's label in the table and the field's name in the JSON report."""
    value: Callable[[Outcome], float]
    higher_is_better: bool
    unit: str = ""
    digits: int = 0


MEASURES: tuple[Measure, ...] = (
    Measure("placed before 1st unschedulable", lambda o: o.placed_before_first_failure, True),
    Measure("placed (whole trace)", lambda o: o.placed, True),
    Measure("unschedulable", lambda o: o.unschedulable, False),
    Measure("whole GPUs placed", lambda o: o.whole_gpus_placed, True),
    Measure("GPUs stranded", lambda o: o.stranded_gpus, False),
    Measure("MIG slots stranded", lambda o: o.stranded_mig_slots, False),
    Measure("mean util. of used GPUs", lambda o: round(o.mean_utilization_of_used, 1), False, " %", 1),
)
"""The rows, in order. Utilization is the other tenants' load on the GPUs the whole-GPU pods were given: lower means
the scheduler steered around busy nodes."""

DYNAMIC_MEASURES: tuple[Measure, ...] = (
    Measure("MIG placed before 1st unschedulable MIG", lambda o: o.mig_placed_before_first_failure, True),
    Measure("MIG placed (whole trace)", lambda o: o.mig_placed, True),
    Measure("mean MIG pending (s)", lambda o: round(o.mean_mig_pending, 1), False, "", 1),
    Measure("layout changes", lambda o: o.layout_changes, False),
)
"""Rows added when pods wait instead of being dropped (`simulate --dynamic-mig`). Fewer layout changes is better
only at equal placements: each one takes a node's GPUs out of use for a while."""


def measures(outcomes: Sequence[Outcome]) -> tuple[Measure, ...]:
    return MEASURES + (DYNAMIC_MEASURES if any(o.waits for o in outcomes) else ())


def as_json(outcomes: Sequence[Outcome]) -> str:
    """`{"schedulers": {NAME: {FIELD: value}}}`, the fields named as the table's rows."""
    rows = measures(outcomes)
    return json.dumps({"schedulers": {o.scheduler: {m.name: _number(m, o) for m in rows} for o in outcomes}}, indent=2)


def _number(measure: Measure, outcome: Outcome) -> float | int:
    value = measure.value(outcome)
    return round(value, measure.digits) if measure.digits else int(value)


def comparisons(outcomes: Sequence[Outcome]) -> list[tuple[Outcome, Outcome]]:
    """gpuguard against each fixed-layout scheduler, and dynamic MIG against gpuguard when it ran."""
    by = {o.scheduler: o for o in outcomes}
    ours = by.get(OURS)
    pairs = [(ours, o) for o in outcomes if ours is not None and o.scheduler not in (OURS, DYNAMIC)]
    if DYNAMIC in by and ours is not None:
        pairs.append((by[DYNAMIC], ours))
    return pairs


def table(outcomes: Sequence[Outcome], *, heading: str) -> str:
    rows = measures(outcomes)
    pairs = comparisons(outcomes)
    width = max(len(m.name) for m in rows) + 2
    cell = max(10, *(len(o.scheduler) + 1 for o in outcomes))
    head = f"{'':<{width}}  " + "  ".join(f"{o.scheduler:>{cell}}" for o in outcomes)
    head += "".join(f"  {a.scheduler + ' vs ' + b.scheduler:>26}" for a, b in pairs)
    lines = [heading, "", head]
    for m in rows:
        arrow = "(higher is better)" if m.higher_is_better else "(lower is better)"
        line = f"{m.name:<{width}}  " + "  ".join(f"{_shown(m, o):>{cell}}" for o in outcomes)
        line += "".join(f"  {_versus(m, a, b):>26}" for a, b in pairs)
        lines.append(f"{line}   {arrow}")
    lines.append("")
    lines += [_verdict(rows, a, b) for a, b in pairs]
    return "\n".join(lines)


def groups_table(aware: Outcome, unaware: Outcome) -> str:
    """Multi-node groups placed whole and split across NVLink cliques, gpuguard with and without group awareness."""
    lines = [f"multi-node LLM groups (2 or 4 pods of 8 H100 GPUs each): {aware.groups} in the trace",
             f"{'':<28}  {'with group awareness':>20}  {'without':>8}"]
    for name, attribute in (("placed whole", "groups_placed"), ("split across NVLink cliques", "groups_split")):
        lines.append(f"{name:<28}  {getattr(aware, attribute):>20}  {getattr(unaware, attribute):>8}")
    return "\n".join(lines)


def _shown(measure: Measure, outcome: Outcome) -> str:
    return f"{measure.value(outcome):.{measure.digits}f}{measure.unit}"


def _sign(measure: Measure, ours: Outcome, other: Outcome) -> int:
    """1 when `ours` did better on this measure, -1 worse, 0 equal."""
    a, b = measure.value(ours), measure.value(other)
    if a == b:
        return 0
    return 1 if (a > b) == measure.higher_is_better else -1


def _versus(measure: Measure, ours: Outcome, other: Outcome) -> str:
    a, b = measure.value(ours), measure.value(other)
    word = {1: "better", 0: "equal", -1: "worse"}[_sign(measure, ours, other)]
    ratio = f"{a / b:.2f}x" if b else ("-" if a == 0 else "n/a")
    return f"{a - b:+.{measure.digits}f} {ratio} {word}"


def _verdict(rows: Sequence[Measure], ours: Outcome, other: Outcome) -> str:
    worse = [m.name for m in rows if _sign(m, ours, other) < 0]
    better = [m.name for m in rows if _sign(m, ours, other) > 0]
    name = f"{ours.scheduler} vs {other.scheduler}"
    if not worse:
        return f"{name}: better on {len(better)} of {len(rows)} measures, worse on none."
    return f"{name}: better on {len(better)} of {len(rows)} measures, WORSE on {len(worse)}: {', '.join(worse)}."


def heading(*, nodes: int, pods: int, seed: int, lifetime: float, offered: float, extra: str = "") -> str:
    mix = ", ".join(f"{count} {kind}" for kind, count in node_counts(nodes).items())
    load = f"whole-GPU pods ask for {offered:.2f}x the whole GPUs there are" if offered else "MIG pods only"
    return f"{nodes} nodes ({mix}), {pods} pods, seed {seed}, mean lifetime {lifetime:g} s; {load}{extra}"


def chart(outcomes: Sequence[Outcome], path: Path) -> None:
    """A bar chart of the packing measures (needs matplotlib: pip install 'gpuguard[chart]')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in measures(outcomes) if m.name != "mean util. of used GPUs"]
    figure, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 3.5))
    for axis, measure in zip(axes, shown, strict=True):
        axis.bar([o.scheduler for o in outcomes], [measure.value(o) for o in outcomes],
                 color=["#2b8a3e", "#868e96", "#1c7ed6", "#e8590c"][:len(outcomes)])
        axis.set_title(measure.name, fontsize=8)
        axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
