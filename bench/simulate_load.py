"""When packing costs total placements: `gpuguard simulate`'s trace at rising load, gpuguard against the default
scheduler, with the pods each one placed by size.

    python bench/simulate_load.py [--nodes 60] [--pods 3000] [--lifetimes 100,200,300,450,500,600,900] [--seeds 1,2,3]

The load is the mean pod lifetime; the "offered" column is what the whole-GPU pods ask for over the trace in GPU
seconds, per GPU second the whole-GPU nodes have (above 1, some pods cannot be placed whatever the scheduler does).
Unschedulable pods are not retried, as in `gpuguard simulate`.
"""

from __future__ import annotations

import argparse
from collections import Counter

from gpuguard.policy.loading import default_policy
from gpuguard.simulate.engine import pickers, replay
from gpuguard.simulate.model import build_cluster, build_trace, offered_whole_load

NAMES = ("gpuguard", "default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--pods", type=int, default=3000)
    parser.add_argument("--lifetimes", default="100,200,300,450,500,600,900")
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    scheduling = default_policy().scheduling
    sizes = ("1-GPU", "2-GPU", "4-GPU", "8-GPU")
    print("| lifetime | offered | pods placed gpuguard / default | " + " | ".join(sizes) + " |")
    print("|---:|---:|---|" + "---|" * len(sizes))
    for lifetime in (float(x) for x in args.lifetimes.split(",")):
        offered, totals = 0.0, {n: Counter[str]() for n in NAMES}
        seeds = [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            cluster = build_cluster(args.nodes, seed)
            trace = build_trace(args.pods, seed, lifetime=lifetime)
            offered += offered_whole_load(cluster, trace) / len(seeds)
            chosen = pickers(cluster, scheduling)
            for name in NAMES:
                totals[name] += Counter(replay(cluster, trace, name, chosen[name], seed=seed).placed_by_kind)
        ours, theirs = totals["gpuguard"], totals["default"]
        cells = " | ".join(f"{ours[s]} / {theirs[s]}" for s in sizes)
        total = f"{sum(ours.values())} / {sum(theirs.values())} ({sum(ours.values()) - sum(theirs.values()):+d})"
        print(f"| {lifetime:g} s | {offered:.2f}x | {total} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
