"""Dynamic MIG against fixed layouts on the mixed MIG trace: pods placed before the first unschedulable one and the
mean pending time of the placed ones, three seeds, two cluster sizes.

    python bench/dynamic_mig.py [--sizes 60:3000,200:8000] [--seeds 1,2,3] [--load 0.6] [--layout-delay 120]

For each run: gpuguard with the MIG nodes held in each fixed start (`mixed`: alternate all-1g and all-balanced
nodes; all-1g, all-2g, all-3g, all-balanced: every node), and gpuguard with the dynamic-MIG planner from the
`mixed` start. Pods wait up to 600 s (`gpuguard simulate --patience`). Prints one Markdown row per run.
"""

from __future__ import annotations

import argparse

from gpuguard.policy.loading import default_policy
from gpuguard.simulate.dynamic import Dynamics, replay_waiting
from gpuguard.simulate.engine import Outcome, pickers
from gpuguard.simulate.model import MIG_STARTS, build_cluster, build_mig_trace

PATIENCE = 600.0


def run(nodes: int, pods: int, seed: int, load: float, start: str, dynamics: Dynamics | None) -> Outcome:
    cluster = build_cluster(nodes, seed, mig_start=start)
    trace = build_mig_trace(pods, seed, nodes=nodes, load=load)
    picker = pickers(cluster, default_policy().scheduling)["gpuguard"]
    return replay_waiting(cluster, trace, start, picker, seed=seed, patience=PATIENCE, dynamics=dynamics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="60:3000,200:8000", help="nodes:pods, comma-separated")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--load", type=float, default=0.6)
    parser.add_argument("--layout-delay", type=float, default=120.0)
    args = parser.parse_args()
    dynamics = Dynamics(layout_delay=args.layout_delay)
    print("| nodes | pods | seed | fixed: " + " / ".join(MIG_STARTS) + " | best fixed | dynamic from mixed "
          "| vs mixed | vs best fixed | mean pending s: mixed / best fixed / dynamic | layout changes |")
    print("|---:|---:|---:|---|---|---:|---:|---:|---|---:|")
    for size in args.sizes.split(","):
        nodes, pods = (int(x) for x in size.split(":"))
        for seed in (int(s) for s in args.seeds.split(",")):
            fixed = {start: run(nodes, pods, seed, args.load, start, None) for start in MIG_STARTS}
            best = max(fixed.values(), key=lambda o: o.mig_placed_before_first_failure)
            dyn = run(nodes, pods, seed, args.load, "mixed", dynamics)
            mixed = fixed["mixed"]
            counts = " / ".join(str(o.mig_placed_before_first_failure) for o in fixed.values())
            print(f"| {nodes} | {pods} | {seed} | {counts} | {best.scheduler} {best.mig_placed_before_first_failure}"
                  f" | {dyn.mig_placed_before_first_failure}"
                  f" | {dyn.mig_placed_before_first_failure / max(mixed.mig_placed_before_first_failure, 1):.2f}x"
                  f" | {dyn.mig_placed_before_first_failure / max(best.mig_placed_before_first_failure, 1):.2f}x"
                  f" | {mixed.mean_mig_pending:.0f} / {best.mean_mig_pending:.0f} / {dyn.mean_mig_pending:.0f}"
                  f" | {dyn.layout_changes} |", flush=True)


if __name__ == "__main__":
    main()
