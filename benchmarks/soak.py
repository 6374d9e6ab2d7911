"""Soak test: many episodes in one process, to catch memory growth, slow-down and inexact restores.

Runs ``--episodes`` lifelong episodes of ``--batches`` steps (default 50 x 20 = 1000 steps) on
TinyWorld-tiny with plain gradient actions (dW = -lr U^T D, the shift interface), and prints

- the resident memory (RSS) before the first step, after the first episode (the warm baseline:
  allocator caches and lazily built parts exist by then) and at the end, and the growth from the warm
  baseline (the check: under ``--max-growth``, 5% by default);
- how many resets restored the edit modules bitwise to the initial weights;
- the mean time per step over the first and the last episode, wall-clock and CPU time of this process
  (on a shared machine the wall time also measures the neighbours; the CPU time much less so).

It exits with 1 if the memory grew more than allowed or a restore was not exact.

    OMP_NUM_THREADS=1 python benchmarks/soak.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from rledit_env.envs import LifelongEditEnv


def rss_mib() -> float:
    """The current resident set size (not the peak), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tinyworld-tiny")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--batches", type=int, default=20, help="steps per episode")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.05, help="gradient step of the actions")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth (fraction)")
    args = parser.parse_args(argv)

    env = LifelongEditEnv(
        args.model, num_batches=args.batches, batch_size=args.batch_size, action_type="shift"
    )
    initial = env.editable.snapshot()
    rss_start = rss_mib()
    rss_warm = rss_start
    exact, step_times, cpu_times = 0, [], []
    for episode in range(args.episodes):
        obs, _ = env.reset(seed=episode)
        current = env.editable.snapshot()
        exact += all(torch.equal(current[m], initial[m]) for m in initial)
        times, done, cpu_start = [], False, time.process_time()
        while not done:
            action = {m: -args.lr * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}
            start = time.perf_counter()
            obs, _, terminated, truncated, _ = env.step(action)
            times.append(time.perf_counter() - start)
            done = terminated or truncated
        step_times.append(float(np.mean(times)))
        cpu_times.append((time.process_time() - cpu_start) / len(times))
        if episode == 0:
            rss_warm = rss_mib()
    env.close()
    rss_end = rss_mib()
    growth = rss_end / rss_warm - 1
    steps = args.episodes * args.batches
    print(
        f"{steps} steps: {args.episodes} episodes x {args.batches} batches x {args.batch_size} edits, "
        f"{args.model}"
    )
    print(
        f"RSS: {rss_start:.1f} MiB before the first step, {rss_warm:.1f} MiB after episode 1, "
        f"{rss_end:.1f} MiB at the end"
    )
    print(
        f"RSS growth from episode 1 to the end: {100 * growth:+.2f}% (allowed {100 * args.max_growth:.0f}%)"
    )
    print(f"restores bitwise exact: {exact} of {args.episodes}")
    for what, series in (("wall", step_times), ("CPU", cpu_times)):
        print(
            f"{what} time per step: {1000 * series[0]:.1f} ms in episode 1, {1000 * series[-1]:.1f} ms in "
            f"episode {args.episodes} (median over episodes {1000 * float(np.median(series)):.1f} ms)"
        )
    ok = growth < args.max_growth and exact == args.episodes
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
