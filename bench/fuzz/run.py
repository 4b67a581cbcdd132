"""Run a fuzz target under atheris (libFuzzer) for a fixed number of inputs and print what it found.

    python bench/fuzz/run.py {webhook,extender} --runs 1000000 [--seed 1] [--max-len 65536]

atheris is a bench tool, not a test dependency: `pip install atheris` into the same environment first. A target is a
module under bench/fuzz/ with `test_one_input(data)`, `corpus()` (initial inputs), `DICTIONARY` (tokens libFuzzer
splices in) and `report()` (its own counters); add it to `TARGETS` to run it from here. The fuzzing runs in a child
process, because libFuzzer ends its process when the runs are done; the child writes the target's counters to
`bench/fuzz/out/<target>-stats.json` every 10,000 inputs and after the last one, and this parent prints them with
libFuzzer's summary. A crash (an exception other than the ones the target documents, or a broken invariant)
stops the run and leaves its input as `bench/fuzz/out/crash-*`: replay it with
`python bench/fuzz/run.py webhook --replay bench/fuzz/out/crash-...`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "fuzz" / "out"
TARGETS = {"webhook": "bench.fuzz.webhook_target", "extender": "bench.fuzz.extender_target"}
STATS_EVERY = 10_000


def child(target_name: str, runs: int, seed: int, max_len: int, corpus_dir: Path) -> None:
    import atheris

    target: Any = importlib.import_module(TARGETS[target_name])
    stats_path = OUT / f"{target_name}-stats.json"
    started = time.monotonic()

    def write_stats() -> None:
        report = {**target.report(), "seconds": round(time.monotonic() - started, 1)}
        stats_path.write_text(json.dumps(report, indent=1, sort_keys=True))

    def one(data: bytes) -> None:
        try:
            target.test_one_input(data)
        except BaseException:
            write_stats()
            raise
        done = target.stats["inputs"]
        if done % STATS_EVERY == 0 or done >= runs:
            write_stats()

    dictionary = OUT / f"{target_name}.dict"
    dictionary.write_text("".join(f"{json.dumps(token.decode('latin-1'))}\n" for token in target.DICTIONARY))
    args = [sys.argv[0], f"-runs={runs}", f"-seed={seed}", f"-max_len={max_len}", f"-dict={dictionary}",
            f"-artifact_prefix={OUT}/", "-print_final_stats=1", "-timeout=30", "-rss_limit_mb=4096",
            str(corpus_dir)]
    atheris.Setup(args, one)
    atheris.Fuzz()


def prepare_corpus(target_name: str) -> Path:
    """A fresh working corpus holding the target's initial inputs (libFuzzer adds what it finds)."""
    target: Any = importlib.import_module(TARGETS[target_name])
    corpus_dir = OUT / f"{target_name}-corpus"
    shutil.rmtree(corpus_dir, ignore_errors=True)
    corpus_dir.mkdir(parents=True)
    for index, data in enumerate(target.corpus()):
        (corpus_dir / f"seed-{index:04d}").write_bytes(data)
    return corpus_dir


def replay(target_name: str, path: Path) -> None:
    target: Any = importlib.import_module(TARGETS[target_name])
    target.test_one_input(path.read_bytes())
    print(f"{path}: no failure")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs to try (libFuzzer -runs)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer -seed, for a reproducible run")
    parser.add_argument("--max-len", type=int, default=65536, help="longest input in bytes")
    parser.add_argument("--replay", type=Path, help="run one saved input through the target and exit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    OUT.mkdir(parents=True, exist_ok=True)
    if args.replay:
        replay(args.target, args.replay)
        return 0
    if args.child:
        child(args.target, args.runs, args.seed, args.max_len, OUT / f"{args.target}-corpus")
        return 0
    for stale in (*OUT.glob("crash-*"), *OUT.glob("timeout-*"), *OUT.glob("oom-*"), OUT / f"{args.target}-stats.json"):
        stale.unlink(missing_ok=True)
    prepare_corpus(args.target)
    command = [sys.executable, __file__, args.target, "--child", f"--runs={args.runs}", f"--seed={args.seed}",
               f"--max-len={args.max_len}"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True)
    seconds = time.monotonic() - started
    (OUT / f"{args.target}-libfuzzer.log").write_text(result.stderr)
    summary = {line for line in result.stderr.splitlines() if re.match(r"(Done \d+ runs|stat::|==\d+== ERROR)", line)}
    crashes = sorted(p.name for pattern in ("crash-*", "timeout-*", "oom-*") for p in OUT.glob(pattern))
    stats_path = OUT / f"{args.target}-stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    print("\n".join(sorted(summary)))
    print(json.dumps({"target": args.target, "runs_requested": args.runs, "exit_code": result.returncode,
                      "crash_files": crashes, "wall_seconds": round(seconds, 1), **stats}, indent=1))
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
