"""`gpuguard demo`: arguments and output; the work is in `gpuguard.demo.run`, imported when the command runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from gpuguard.cli_support import add_command

HELP = "run the webhook, extender and node agents on this machine and admit + schedule demo pods (no cluster, no GPU)"
DESCRIPTION = """
Start the real webhook, scheduler extender and one node agent per node on this machine, with fake GPUs and a
cluster-state file standing in for the API server, then send demo InferenceService pods through admission and
scheduling and print, per pod, what the webhook added, whether it was refused, and which node won and why. Prometheus
is used for utilization when the `prometheus` binary is installed. Nothing outside this machine is touched.

Output uses the terminal's width and colour; piped, it is plain and 110 columns wide (NO_COLOR=1 also turns colour
off). Exit status: 0 when the flow ran and every process stopped cleanly, 1 otherwise.
"""


def add_demo_parser(commands: Any) -> None:
    parser = add_command(commands, "demo", summary=HELP, description=DESCRIPTION,
                         examples=["gpuguard demo", "gpuguard demo --workdir /tmp/gpuguard-demo --no-prometheus",
                                   "gpuguard demo --color never | less"])
    parser.add_argument("--workdir", type=Path, help="keep the cluster state, certificates and logs here")
    use = parser.add_mutually_exclusive_group()
    use.add_argument("--prometheus", dest="prometheus", action="store_true", default=None,
                     help="require a real Prometheus (the `prometheus` binary) for utilization")
    use.add_argument("--no-prometheus", dest="prometheus", action="store_false",
                     help="take utilization from the agents' annotations even if Prometheus is installed")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="colour the output: auto (default: on a terminal, unless NO_COLOR is set), always, never")
    parser.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from gpuguard.demo import report
    from gpuguard.demo.run import DemoSettings, run_demo
    from gpuguard.demo.services import ServiceError
    from gpuguard.terminal import style_for

    style = style_for(sys.stdout, choice=args.color)
    started = time.monotonic()
    print(report.cluster_table(style), "\n", flush=True)
    try:
        result = asyncio.run(run_demo(DemoSettings(workdir=args.workdir, prometheus=args.prometheus),
                                      say=lambda line: print(line, flush=True)))
    except (ServiceError, TimeoutError, OSError) as error:
        print(f"gpuguard demo failed: {error}", file=sys.stderr)
        return 1
    source = "Prometheus (scraping the agents)" if result.used_prometheus else "the agents' node annotations"
    used = f"GPU utilization from {source}; time-slicing applied by the agent: {result.time_slicing or 'none'}"
    print("\n" + textwrap.fill(used, style.width) + "\n")
    print(report.trips_table(result.trips, style), "\n")
    refused = report.refusals(result.trips, style)
    if refused:
        print(refused, "\n")
    unclean = [name for name, code in result.exit_codes.items() if code != 0]
    print(f"{len(result.exit_codes)} processes stopped" + (f"; not cleanly: {', '.join(unclean)}" if unclean else
                                                           " cleanly") + f"; {time.monotonic() - started:.1f} s.\n")
    print(report.NEXT_STEPS)
    return 0 if result.clean_exit else 1
