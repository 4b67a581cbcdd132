"""`gpuguard demo`: arguments and output; the work is in `gpuguard.demo.run`, imported when the command runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

HELP = "run the webhook, extender and node agents on this machine and admit + schedule demo pods (no cluster, no GPU)"


def add_demo_parser(commands: Any) -> None:
    parser = commands.add_parser("demo", help=HELP, description=HELP)
    parser.add_argument("--workdir", type=Path, help="keep the cluster state, certificates and logs here")
    use = parser.add_mutually_exclusive_group()
    use.add_argument("--prometheus", dest="prometheus", action="store_true", default=None,
                     help="require a real Prometheus (the `prometheus` binary) for utilization")
    use.add_argument("--no-prometheus", dest="prometheus", action="store_false",
                     help="take utilization from the agents' annotations even if Prometheus is installed")
    parser.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from gpuguard.demo import report
    from gpuguard.demo.run import DemoSettings, run_demo
    from gpuguard.demo.services import ServiceError

    started = time.monotonic()
    print(report.cluster_table(), "\n", flush=True)
    try:
        result = asyncio.run(run_demo(DemoSettings(workdir=args.workdir, prometheus=args.prometheus),
                                      say=lambda line: print(line, flush=True)))
    except (ServiceError, TimeoutError, OSError) as error:
        print(f"gpuguard demo failed: {error}", file=sys.stderr)
        return 1
    source = "Prometheus (scraping the agents)" if result.used_prometheus else "the agents' node annotations"
    print(f"\nGPU utilization from {source}; time-slicing applied by the agent: {result.time_slicing or 'none'}\n")
    print(report.trips_table(result.trips), "\n")
    refused = report.refusals(result.trips)
    if refused:
        print(refused, "\n")
    unclean = [name for name, code in result.exit_codes.items() if code != 0]
    print(f"{len(result.exit_codes)} processes stopped" + (f"; not cleanly: {', '.join(unclean)}" if unclean else
                                                           " cleanly") + f"; {time.monotonic() - started:.1f} s.\n")
    print(report.NEXT_STEPS)
    return 0 if result.clean_exit else 1
