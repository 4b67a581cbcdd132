"""`gpuguard simulate`: arguments and output; the work is imported when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

HELP = "replay a pod trace: gpuguard's scoring vs the default scheduler's vs an offline best fit"


def add_simulate_parser(commands: Any) -> None:
    parser = commands.add_parser("simulate", help=HELP, description=HELP)
    parser.add_argument("--nodes", type=int, default=60, help="cluster size (default 60)")
    parser.add_argument("--pods", type=int, default=3000, help="pods in the trace (default 3000)")
    parser.add_argument("--seed", type=int, default=1, help="trace and cluster seed (default 1)")
    parser.add_argument("--lifetime", type=float, default=900.0, help="mean pod lifetime, seconds (default 900)")
    parser.add_argument("--policy", type=Path, help="policy whose scheduling section gpuguard uses (default: embedded)")
    parser.add_argument("--json", action="store_true",
                        help='print the report as JSON: {"schedulers": {NAME: {FIELD: value}}}, fields as the table names them')
    parser.add_argument("--chart", type=Path, metavar="PNG", help="also draw a bar chart (needs matplotlib)")
    parser.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    from gpuguard.policy.loading import PolicyError, default_policy_text, parse_policy
    from gpuguard.simulate import report
    from gpuguard.simulate.engine import SCHEDULERS, pickers, replay
    from gpuguard.simulate.model import NODE_MIX, build_cluster, build_trace, offered_whole_load

    if args.nodes < len(NODE_MIX) or args.pods < 1:
        print(f"gpuguard simulate: --nodes must be at least {len(NODE_MIX)} (one of each node kind) and --pods at "
              "least 1", file=sys.stderr)
        return 2
    try:
        policy = parse_policy(args.policy.read_text() if args.policy else default_policy_text())
    except (OSError, PolicyError) as error:
        print(f"gpuguard simulate: cannot use the policy: {error}", file=sys.stderr)
        return 2
    cluster = build_cluster(args.nodes, args.seed)
    trace = build_trace(args.pods, args.seed, lifetime=args.lifetime)
    schedulers = pickers(cluster, policy.scheduling)
    show = sys.stderr.isatty() or args.pods >= 5000
    outcomes = [replay(cluster, trace, name, schedulers[name], seed=args.seed, progress=_bar(name) if show else None)
                for name in SCHEDULERS]
    if show:
        print(file=sys.stderr)
    if args.json:
        print(report.as_json(outcomes))
    else:
        offered = offered_whole_load(cluster, trace)
        print(report.table(outcomes, heading=report.heading(nodes=args.nodes, pods=args.pods, seed=args.seed,
                                                            lifetime=args.lifetime, offered=offered)))
    if args.chart:
        try:
            report.chart(outcomes, args.chart)
        except ImportError:
            print("gpuguard simulate: --chart needs matplotlib (pip install 'gpuguard[chart]')", file=sys.stderr)
            return 2
        print(f"chart written to {args.chart}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _bar(name: str) -> Callable[[int, int], None]:
    """A progress bar on standard error, redrawn every 1 % of the trace."""

    def draw(done: int, total: int) -> None:
        if done % max(total // 100, 1) and done != total:
            return
        filled = 30 * done // total
        sys.stderr.write(f"\r{name:>9} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        sys.stderr.flush()

    return draw
