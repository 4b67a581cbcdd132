"""The demo's output: per pod, what the webhook changed, the decision, the node and why. Pure: returns text.

Text is wrapped to the `Style`'s width (the terminal's, or a fixed width when piped) and coloured only when the style
says so; padding is applied before colour, so the columns line up either way.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from gpuguard.demo import cluster, pods
from gpuguard.demo.flow import Trip
from gpuguard.terminal import PLAIN, Role, Style


def cluster_table(style: Style = PLAIN) -> str:
    lines = [style.paint("The cluster (a cluster-state file standing in for the API server):", "heading")]
    lines += [f"  {node.name:<11} {node.role}" for node in cluster.NODES]
    return "\n".join(lines)


def busy_percent(name: str) -> str:
    """The mean utilization of a node's whole GPUs, as the demo's fake GPUs report it ("" for MIG-only or CPU)."""
    node = next((n for n in cluster.NODES if n.name == name), None)
    utils = [g.util_percent for g in node.gpus if g.util_percent is not None] if node else []
    return f" ({sum(utils) / len(utils):.0f}% busy)" if utils else ""


LEGEND = ("Scores are the extender's 0..10 (kube-scheduler multiplies them by the extender's weight): the best fit "
          "first (fewest devices of the kind left free, keeping big blocks whole), then the idlest GPUs within a fit.")


RESULT_ROLES: dict[str, Role] = {"scheduled": "good", "DENIED": "bad", "PENDING": "warn"}


def trips_table(trips: Sequence[Trip], style: Style = PLAIN) -> str:
    stories = {p.name: p.story for p in pods.PODS}
    header = f"{'#':<2} {'InferenceService pod':<28} {'asked for':<28} {'result':<10} node"
    lines = [*textwrap.wrap(LEGEND, style.width), "", style.paint(header, "heading"), "-" * style.width]
    for number, trip in enumerate(trips, 1):
        result, node, why = _verdict(trip)
        lines.append(f"{number:<2} {trip.namespace + '/' + trip.name:<28} {stories.get(trip.name, ''):<28} "
                     f"{style.paint(f'{result:<10}', RESULT_ROLES[result])} {node}")
        lines += _indented("webhook added: " + (", ".join(trip.changes) or "nothing") + f"  [rule {trip.rule}]", style)
        if trip.denied:
            lines += _indented("validate: " + trip.denied.split(": ", 1)[-1], style)
        else:
            lines += _indented("why: " + why, style)
    return "\n".join(lines)


def _verdict(trip: Trip) -> tuple[str, str, str]:
    if trip.denied:
        return "DENIED", "-", ""
    if trip.error or not trip.node:
        reasons = "; ".join(f"{n}: {r}" for n, r in trip.refused.items()) or trip.error
        return "PENDING", "-", reasons
    # Utilization only decides among whole GPUs; MIG instances report none (NVML cannot measure them).
    busy = busy_percent if any(c.startswith("nvidia.com/gpu:") for c in trip.changes + trip.asked) else _nothing
    others = [f"{name} {score}{busy(name)}" for name, score in list(trip.scores.items())[1:]]
    why = f"score {trip.scores[trip.node]}{busy(trip.node)}" + (
        f" vs {', '.join(others)}" if others else " (the only node that fits)")
    if others and list(trip.scores.values())[1] == trip.scores[trip.node]:
        why += " (a tie: kube-scheduler picks either; the demo takes the first by name)"
    refused = [f"{name}: {reason}" for name, reason in trip.refused.items()]
    if refused:
        why += f"; refused {len(refused)}"
    return "scheduled", trip.node, why


def _nothing(_: str) -> str:
    return ""


def _indented(text: str, style: Style) -> list[str]:
    return textwrap.wrap(text, style.width, initial_indent=" " * 6, subsequent_indent=" " * 8)


def refusals(trips: Sequence[Trip], style: Style = PLAIN) -> str:
    lines = [style.paint("Why nodes were refused by the extender's filter:", "heading")]
    for trip in trips:
        for name, reason in trip.refused.items():
            lines += textwrap.wrap(f"{trip.name} x {name}: {reason}", style.width, initial_indent="  ",
                                   subsequent_indent="      ")
    return "\n".join(lines) if len(lines) > 1 else ""


NEXT_STEPS = """Next: install gpuguard on a cluster (KServe, the NVIDIA GPU Operator or device plugin + GFD; cert-manager and
Prometheus optional):
  helm install gpuguard charts/gpuguard --namespace gpuguard --create-namespace
See README.md, "Installing on a cluster"."""
