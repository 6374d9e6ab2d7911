"""What the generation suite costs beside the teacher-forced one, measured side by side in one run.

One lifelong episode (plain gradient steps, so the model really changes), evaluated along the way every
``--metrics-every`` steps and after the last batch by both suites over the same edits and the same
weights, one after the other (the order alternates between evaluation points):

- teacher-forced: ``rledit_env.metrics.EpisodeEvaluator`` (built before the first edit: its unedited
  locality reference), then ``evaluate``;
- generation: ``rledit_env.generation.GenerationEvaluator`` (built before the first edit: the unedited
  model's locality generations), then ``evaluate``.

Perplexity is left out of both (it is the same probe whichever suite runs). Prints each suite's seconds
(construction and evaluations), their ratio, and the final scores of both.

    OMP_NUM_THREADS=1 python benchmarks/generation_cost.py                  # TinyWorld, 20 x 10
    OMP_NUM_THREADS=1 python benchmarks/generation_cost.py --model smollm2 --dataset counterfact-edit-1k \
        --num-batches 10 --lr 0.1

The issue's target (issue 33): generation at most 2x the teacher-forced suite's time.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tinyworld")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--num-batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--metrics-every", type=int, default=5, help="the harness's default")
    parser.add_argument("--lr", type=float, default=0.3, help="the gradient steps' size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from rledit_env.envs import LifelongEditEnv
    from rledit_env.generation import GenerationEvaluator
    from rledit_env.metrics import EpisodeEvaluator

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    env = LifelongEditEnv(
        args.model,
        args.dataset,
        num_batches=args.num_batches,
        batch_size=args.batch_size,
        action_type="shift",
        score_reward=False,
        evaluate_at_end=False,
        obs_backend="torch",
    )
    obs, _ = env.reset(seed=args.seed)
    records = [r for batch in env.episode for r in batch]
    seconds = {"teacher_forced": 0.0, "generation": 0.0}
    start = time.perf_counter()
    teacher = EpisodeEvaluator(env.editable, records)
    seconds["teacher_forced"] += time.perf_counter() - start
    start = time.perf_counter()
    generation = GenerationEvaluator(env.editable, records)
    seconds["generation"] += time.perf_counter() - start
    suites = {"teacher_forced": teacher, "generation": generation}
    build = dict(seconds)
    final: dict[str, dict[str, float]] = {}
    points = 0
    for t in range(1, args.num_batches + 1):
        action = {m: -args.lr * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}
        obs, _, _, _, _ = env.step(action)
        if t % args.metrics_every and t != args.num_batches:
            continue
        order = list(suites) if points % 2 == 0 else list(suites)[::-1]
        for name in order:
            begin = time.perf_counter()
            final[name] = suites[name].evaluate(t * args.batch_size)
            seconds[name] += time.perf_counter() - begin
        points += 1
    env.close()

    rows = len(teacher.edit_new) + len(teacher.para_new) + len(teacher.loc)
    print(
        f"model {args.model}, dataset {args.dataset or 'its own'}, {args.num_batches} x {args.batch_size}, "
        f"{points} evaluation points, {rows} prompts in all, threads {torch.get_num_threads()}"
    )
    for name in suites:
        print(
            f"  {name:15s} {seconds[name]:7.2f} s  (construction {build[name]:.2f} s, "
            f"evaluations {seconds[name] - build[name]:.2f} s)"
        )
    ratio = seconds["generation"] / seconds["teacher_forced"]
    print(f"generation / teacher-forced: {ratio:.2f}x (target: at most 2x)")
    shown = ("eff", "gen", "spe", "eff_acc", "spe_agree", "eff_em", "gen_em", "spe_em", "spe_em_agree")
    scores = {**final["teacher_forced"], **final["generation"]}
    print("final: " + ", ".join(f"{k} {scores[k]:.3f}" for k in shown if k in scores))


if __name__ == "__main__":
    main()
