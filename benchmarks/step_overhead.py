"""Environment overhead: the time of ``env.step`` over the bare forward/backward passes it needs.

Each step of LifelongEditEnv needs (i) a forward pass for the locality references of the new batch,
(ii) a forward pass scoring the current and the last k-1 batches (L_gen and L_loc), and (iii) a
forward and backward pass tracing the next batch's keys and value gradients. This script times the
environment's steps and, side by side in the same run, plain Hugging Face calls doing the same passes
on the same token batches (``model(...)`` and ``loss.backward()``), and prints the ratio.

    python benchmarks/step_overhead.py                      # TinyWorld
    python benchmarks/step_overhead.py --model smollm2 --dataset counterfact-edit-1k
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from rledit_env.editable import stack_rows
from rledit_env.envs import LifelongEditEnv


def bare_passes(env: LifelongEditEnv, t: int) -> float:
    """Seconds that plain model calls take for the passes of step t (the env's own batches)."""
    model = env.editable.model
    batches = env._batches
    window = [b for b in range(t, max(t - env.reward_config.backtrack_depth, -1), -1)]
    start = time.perf_counter()
    with torch.no_grad():
        if len(batches[t].loc):
            model(**_inputs(batches[t].loc.batch))
        sets = [batches[b].gen.batch for b in window] + [
            batches[b].loc.batch for b in window if len(batches[b].loc)
        ]
        stacked = stack_rows(sets)
        for i in range(0, len(stacked), env.editable.eval_batch_size):
            model(**_inputs(stacked, slice(i, i + env.editable.eval_batch_size)))
    if t + 1 < env.num_batches:
        weights = [m.weight for m in env.editable.modules.values()]
        for w in weights:
            w.requires_grad_(True)
        edit = batches[t + 1].edit.batch
        loss = model(**_inputs(edit), labels=edit.labels).loss
        loss.backward()
        for w in weights:
            w.grad = None
            w.requires_grad_(False)
    return time.perf_counter() - start


def _inputs(batch, rows: slice = slice(None)) -> dict:
    return {
        "input_ids": batch.input_ids[rows],
        "attention_mask": batch.attention_mask[rows],
        "use_cache": False,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tinyworld")
    parser.add_argument(
        "--dataset", default=None, help="records (default: the model's own, e.g. TinyWorld's)"
    )
    parser.add_argument("--num-batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--backtrack-depth", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1, help="step size of the gradient action")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    env = LifelongEditEnv(
        args.model,
        args.dataset,
        num_batches=args.num_batches,
        batch_size=args.batch_size,
        reward={"backtrack_depth": args.backtrack_depth},
        action_type="shift",
        obs_backend="torch",
        evaluate_at_end=False,
        timing=True,
    )
    params = sum(p.numel() * p.element_size() for p in env.editable.model.parameters())
    obs, _ = env.reset(seed=args.seed)
    env_time = bare_time = 0.0
    for t in range(args.num_batches):
        action = {m: -args.lr * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}
        start = time.perf_counter()
        obs, _, _, _, info = env.step(action)
        env_time += time.perf_counter() - start
        # The bare passes run on the weights the step scored (theta_t), right after it.
        bare_time += bare_passes(env, t)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model {args.model}: {params / 2**20:.1f} MiB of weights, edit modules {len(env.module_names)}")
    print(f"{args.num_batches} steps x {args.batch_size} edits, backtrack depth {args.backtrack_depth}")
    print(f"env.step total   {env_time:8.3f} s")
    print(f"bare passes      {bare_time:8.3f} s")
    print(f"ratio            {env_time / bare_time:8.3f}x  (target <= 1.3x)")
    print(f"peak RSS         {peak_mib:8.1f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
