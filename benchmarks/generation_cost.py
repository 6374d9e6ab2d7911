"""What the evaluation suites cost, measured side by side in one run, here and at a baseline commit.

One lifelong episode (plain gradient steps, so the model really changes), evaluated along the way every
``--metrics-every`` steps and after the last batch over the same edits and the same weights, three ways
(the order rotating between evaluation points):

- teacher-forced: ``rledit_env.metrics.EpisodeEvaluator`` (built before the first edit: its unedited
  locality reference), then ``evaluate``;
- generation: ``rledit_env.generation.GenerationEvaluator`` (likewise), then ``evaluate``;
- both, as the environment runs them under ``evaluation="both"``: since each prompt is run once for
  both suites (``rledit_env.prompt_pass``), one ``run_prompts`` over both evaluators' requests; in a
  tree from before that, the two evaluations one after the other.

Perplexity is left out (it is the same probe whichever suite runs). Each tree runs in a fresh process
(one torch thread unless OMP_NUM_THREADS says otherwise); the script prints each suite's seconds
(construction and evaluations), generation / teacher-forced (issue 33's target: at most 2x), and,
with a baseline, baseline / now for each, and the final scores of both trees.

    OMP_NUM_THREADS=1 python benchmarks/generation_cost.py --no-baseline        # TinyWorld, 20 x 10
    OMP_NUM_THREADS=1 python benchmarks/generation_cost.py --model smollm2 --dataset counterfact-edit-1k \\
        --num-batches 10 --lr 0.1                       # against the commit before the shared prompt runs
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from baseline_tree import measure_in, trees

BASELINE = "513444d"  # the last commit before each prompt ran once for both suites
SUITES = ("teacher_forced", "generation", "both")
SHOWN = ("eff", "gen", "spe", "eff_acc", "spe_agree", "eff_em", "gen_em", "spe_em", "spe_em_agree")


def measure(args) -> dict:
    """The three ways's seconds and final scores in this process's tree."""
    import torch

    from rledit_env.envs import LifelongEditEnv
    from rledit_env.generation import GenerationEvaluator
    from rledit_env.metrics import EpisodeEvaluator

    joint = hasattr(EpisodeEvaluator, "requests")  # trees from before the shared prompt runs have none
    if joint:
        from rledit_env.prompt_pass import run_prompts

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
    seconds = dict.fromkeys(SUITES, 0.0)
    start = time.perf_counter()
    teacher = EpisodeEvaluator(env.editable, records)
    seconds["teacher_forced"] += time.perf_counter() - start
    start = time.perf_counter()
    generation = GenerationEvaluator(env.editable, records)
    seconds["generation"] += time.perf_counter() - start
    seconds["both"] = seconds["teacher_forced"] + seconds["generation"]  # both evaluators are built
    build = dict(seconds)

    def both(n: int) -> dict[str, float]:
        if not joint:
            return {**teacher.evaluate(n), **generation.evaluate(n)}
        scored, generated = run_prompts(
            env.editable, teacher.requests(n), generation.requests(n), **generation.stops()
        )
        return {**teacher.metrics(n, scored), **generation.metrics(n, generated)}

    ways = {"teacher_forced": teacher.evaluate, "generation": generation.evaluate, "both": both}
    final: dict[str, float] = {}
    points = 0
    for t in range(1, args.num_batches + 1):
        action = {m: -args.lr * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}
        obs, _, _, _, _ = env.step(action)
        if t % args.metrics_every and t != args.num_batches:
            continue
        for name in SUITES[points % 3 :] + SUITES[: points % 3]:
            begin = time.perf_counter()
            scores = ways[name](t * args.batch_size)
            seconds[name] += time.perf_counter() - begin
            if name == "both":
                final = scores
        points += 1
    env.close()
    return {"seconds": seconds, "build": build, "points": points, "records": len(records), "final": final}


def run(tree: Path, args) -> dict:
    """One measurement in a fresh process of ``tree``."""
    arguments = ["--measure", "--model", args.model, "--num-batches", str(args.num_batches)]
    arguments += ["--batch-size", str(args.batch_size), "--metrics-every", str(args.metrics_every)]
    arguments += ["--lr", str(args.lr), "--seed", str(args.seed)]
    if args.dataset:
        arguments += ["--dataset", args.dataset]
    return measure_in(tree, __file__, arguments)


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
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # inside a measuring subprocess
        print(json.dumps(measure(args)))
        return
    if args.dataset:  # a path both trees read (an earlier commit may resolve dataset names elsewhere)
        from rledit_env.datasets import resolve_dataset

        args.dataset = str(resolve_dataset(args.dataset).resolve())
    start = time.perf_counter()
    with trees(None if args.no_baseline else args.baseline) as found:
        results = {name: run(path, args) for name, path in found.items()}
    now = results["now"]
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    print(
        f"model {args.model}, dataset {Path(args.dataset).name if args.dataset else 'its own'}, "
        f"{args.num_batches} x {args.batch_size}, {now['points']} evaluation points, threads {threads}"
    )
    for tree, r in results.items():
        for name in SUITES:
            total, build = r["seconds"][name], r["build"][name]
            print(f"  {tree:8s} {name:15s} {total:7.2f} s  (construction {build:.2f} s)")
    seconds = now["seconds"]
    ratio = seconds["generation"] / seconds["teacher_forced"]
    print(f"now: generation / teacher-forced {ratio:.2f}x (target: at most 2x)")
    print(f"now: both / teacher-forced {seconds['both'] / seconds['teacher_forced']:.2f}x")
    if "baseline" in results:
        old = results["baseline"]["seconds"]
        print("baseline / now: " + ", ".join(f"{n} {old[n] / seconds[n]:.2f}x" for n in SUITES))
    for tree, r in results.items():
        print(f"final ({tree}): " + ", ".join(f"{k} {r['final'][k]:.3f}" for k in SHOWN if k in r["final"]))
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
