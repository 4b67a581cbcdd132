"""`gpuguard simulate`: arguments and output; the work is imported when the command runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuguard.cli_support import add_command

HELP = "replay a pod trace: gpuguard's scoring vs the default scheduler's vs an offline best fit"
EXAMPLES = ["gpuguard simulate", "gpuguard simulate --nodes 200 --pods 10000 --seed 7",
            "gpuguard simulate --json | jq '.schedulers.gpuguard'",
            "gpuguard simulate --dynamic-mig --trace mig --layout-delay 120"]


DESCRIPTION = """
Generate a cluster of GPU nodes (whole GPUs, MIG GPUs, time-sliced T4s) and a trace of inference pods arriving and
leaving, then place the same trace three ways: with the extender's own filter and scores, as kube-scheduler does
without gpuguard (resource fit, then LeastAllocated), and with an offline best fit, and print how each did. The same
seed gives the same cluster, trace and results. Every measure is printed for every scheduler, with which way is
better, and the measures gpuguard does worse on are named.

With --dynamic-mig, pods wait while Pending (unschedulable only after --patience) and a fourth replay lets the
dynamic-MIG planner change MIG nodes' layouts (each change keeping the node's GPUs out of use for --layout-delay).
"""


def add_simulate_parser(commands: Any) -> None:
    parser = add_command(commands, "simulate", summary=HELP, description=DESCRIPTION, examples=EXAMPLES)
    parser.add_argument("--nodes", type=int, default=60, help="cluster size (default 60)")
    parser.add_argument("--pods", type=int, default=3000, help="pods in the trace (default 3000)")
    parser.add_argument("--seed", type=int, default=1, help="trace and cluster seed (default 1)")
    parser.add_argument("--lifetime", type=float, default=900.0, help="mean pod lifetime, seconds (default 900)")
    parser.add_argument("--llm-groups", type=int, default=0, metavar="G",
                        help="also mix in G multi-node LLM groups (2 or 4 pods of 8 H100 GPUs) and report how many end "
                             "up split across NVLink cliques with and without group awareness (default 0)")
    parser.add_argument("--policy", type=Path, help="policy whose scheduling section gpuguard uses (default: embedded)")
    parser.add_argument("--json", action="store_true",
                        help='print the report as JSON: {"schedulers": {NAME: {FIELD: value}}}, fields as the table '
                             "names them")
    parser.add_argument("--chart", type=Path, metavar="PNG", help="also draw a bar chart (needs matplotlib)")
    dynamic = parser.add_argument_group("dynamic MIG (pods wait while Pending instead of being dropped)")
    dynamic.add_argument("--dynamic-mig", action="store_true",
                         help="also replay gpuguard with the dynamic-MIG planner changing MIG nodes' layouts")
    dynamic.add_argument("--trace", choices=("default", "mig"), default="default",
                         help="default: the mixed LLM/MIG/dev trace; mig: MIG pods only, their profile mix drifting "
                              "over four phases")
    dynamic.add_argument("--mig-start", default="mixed", metavar="LAYOUT",
                         help="layout the MIG nodes start in with --dynamic-mig: mixed (alternate all-1g and "
                              "all-balanced nodes), all-1g, all-2g, all-3g or all-balanced (default mixed)")
    dynamic.add_argument("--layout-delay", type=float, default=120.0,
                         help="seconds a layout change keeps a node's GPUs out of use (default 120)")
    dynamic.add_argument("--cooldown", type=float, default=600.0,
                         help="seconds before a node may change layout again (default 600)")
    dynamic.add_argument("--patience", type=float, default=600.0,
                         help="seconds a Pending pod waits before it counts as unschedulable (default 600)")
    dynamic.add_argument("--load", type=float, default=0.6,
                         help="--trace mig: demand as a share of the all-1g instances of every MIG GPU (default 0.6)")
    parser.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    from gpuguard.policy.loading import PolicyError, default_policy_text, parse_policy
    from gpuguard.simulate import report
    from gpuguard.simulate.dynamic import DYNAMIC, Dynamics, replay_waiting
    from gpuguard.simulate.engine import SCHEDULERS, Outcome, pickers, replay
    from gpuguard.simulate.model import (
        MIG_STARTS,
        NODE_MIX,
        build_cluster,
        build_mig_trace,
        build_trace,
        offered_whole_load,
    )

    problem = _problem(args, len(NODE_MIX), MIG_STARTS)
    if problem:
        print(f"gpuguard simulate: {problem}", file=sys.stderr)
        return 2
    try:
        policy = parse_policy(args.policy.read_text() if args.policy else default_policy_text())
    except (OSError, PolicyError) as error:
        print(f"gpuguard simulate: cannot use the policy: {error}", file=sys.stderr)
        return 2
    waiting = args.dynamic_mig or args.trace == "mig"
    cluster = build_cluster(args.nodes, args.seed, mig_start=args.mig_start if waiting else None)
    if args.trace == "mig":
        trace = build_mig_trace(args.pods, args.seed, nodes=args.nodes, lifetime=args.lifetime, load=args.load)
    else:
        trace = build_trace(args.pods, args.seed, lifetime=args.lifetime, llm_groups=args.llm_groups)
    schedulers = pickers(cluster, policy.scheduling)
    outcomes: list[Outcome]
    if waiting:
        outcomes = [replay_waiting(cluster, trace, name, schedulers[name], seed=args.seed, patience=args.patience)
                    for name in SCHEDULERS]
        if args.dynamic_mig:
            dynamics = Dynamics(layout_delay=args.layout_delay, cooldown=args.cooldown)
            outcomes.append(replay_waiting(cluster, trace, DYNAMIC, schedulers["gpuguard"], seed=args.seed,
                                           patience=args.patience, dynamics=dynamics))
    else:
        show = sys.stderr.isatty() or args.pods >= 5000
        outcomes = [replay(cluster, trace, name, schedulers[name], seed=args.seed,
                           progress=_bar(name) if show else None) for name in SCHEDULERS]
        if show:
            print(file=sys.stderr)
    if args.json:
        print(report.as_json(outcomes))
    else:
        extra = (f"; MIG nodes start {args.mig_start}, pods wait up to {args.patience:g} s"
                 + (f", a layout change takes {args.layout_delay:g} s" if args.dynamic_mig else "")) if waiting else ""
        print(report.table(outcomes, heading=report.heading(
            nodes=args.nodes, pods=args.pods, seed=args.seed, lifetime=args.lifetime,
            offered=offered_whole_load(cluster, trace), extra=extra)))
        if args.llm_groups:
            print()
            print(report.groups_table(outcomes[0], _without_groups(cluster, trace, policy.scheduling, seed=args.seed)))
    if args.chart:
        try:
            report.chart(outcomes, args.chart)
        except ImportError:
            print("gpuguard simulate: --chart needs matplotlib (pip install 'gpuguard[chart]')", file=sys.stderr)
            return 2
        print(f"chart written to {args.chart}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _without_groups(cluster: Any, trace: Any, scheduling: Any, *, seed: int) -> Any:
    """gpuguard's replay with `scheduling.groupPlacement` off, for the comparison."""
    from gpuguard.simulate.engine import pickers, replay

    off = scheduling.model_copy(update={"group_placement": scheduling.group_placement.model_copy(
        update={"enabled": False})})
    return replay(cluster, trace, "gpuguard", pickers(cluster, off)["gpuguard"], seed=seed)
def _problem(args: argparse.Namespace, kinds: int, starts: tuple[str, ...]) -> str:
    if args.nodes < kinds or args.pods < 1:
        return f"--nodes must be at least {kinds} (one of each node kind) and --pods at least 1"
    if args.llm_groups < 0:
        return "--llm-groups must be 0 or more"
    if args.llm_groups and (args.dynamic_mig or args.trace == "mig"):
        return "--llm-groups works on the default replay only, not with --dynamic-mig or --trace mig"
    if args.mig_start not in starts:
        return f"--mig-start {args.mig_start!r} is not one of {', '.join(starts)}"
    if min(args.layout_delay, args.cooldown, args.patience) < 0 or args.load <= 0:
        return "--layout-delay, --cooldown and --patience must be 0 or more, --load more than 0"
    return ""


def _bar(name: str) -> Callable[[int, int], None]:
    """A progress bar on standard error, redrawn every 1 % of the trace."""

    def draw(done: int, total: int) -> None:
        if done % max(total // 100, 1) and done != total:
            return
        filled = 30 * done // total
        sys.stderr.write(f"\r{name:>9} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        sys.stderr.flush()

    return draw
