"""What MEMIT, AlphaEdit and fine-tuning cost per edit, measured side by side with an earlier commit.

For each agent, one episode of SmolLM2-135M (``--model``) editing ``--num-batches`` x 10 CounterFact
records (``--dataset``; the statistics corpus is the train split's prompts, ``--train-dataset``, as the
benchmark harness has it), its settings from the model's tuned table, at this commit and at
``--baseline`` (default: the commit before the locate-then-edit speed-up, issue 35), checked out into a
temporary folder and run there by this same script. It prints seconds per edit as ``run_episode``
counts them (the agent's ``act``, the environment's update and tracing; not the statistics, which are
computed once and cached, nor the metrics), the agent's ``act`` alone, the final Eff/Gen/Spe of each
(teacher-forced: the two implementations should agree to float tolerance), and the ratio.

    python benchmarks/locate_edit_cost.py                       # SmolLM2, 10 x 10, against the baseline
    python benchmarks/locate_edit_cost.py --agents memit --num-batches 2 --no-baseline --profile /tmp/p

Every measurement runs in a fresh process, one torch thread unless OMP_NUM_THREADS says otherwise; take
timings on an idle machine (and say so when it is not).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from baseline_tree import measure_in, trees

BASELINE = "5931f45"  # the last commit before this benchmark's work (issue 35)
AGENTS = ("memit", "alphaedit", "finetune")


def measure(args) -> dict:
    """One episode of ``args.measure_agent`` in this process's tree: its editing time and final metrics."""
    from agents import run_episode
    from experiments.registry import build_agent
    from rledit_env.datasets import load_dataset
    from rledit_env.editable import EditableModel
    from rledit_env.envs import LifelongEditEnv
    from rledit_env.models import LoadedModel, load_model
    from rledit_env.presets import editor_modules

    plain = load_model(args.model)
    model, tokenizer = plain.editable.model, plain.editable.tokenizer
    editable = EditableModel(model, tokenizer, editor_modules(args.measure_agent, args.model, model.config))
    splits = {"train": load_dataset(args.train_dataset), "eval": load_dataset(args.dataset)}
    loaded = LoadedModel(editable, splits, plain.probe_texts, plain.stats_texts, plain.name)
    env = LifelongEditEnv(
        loaded,
        num_batches=args.num_batches,
        batch_size=10,
        action_type="shift",
        score_reward=False,
        evaluation="teacher_forced",
    )
    agent = build_agent(args.measure_agent, env, progress=False)
    acting = 0.0
    act = agent.act

    def timed_act(observation):
        nonlocal acting
        start = time.perf_counter()
        try:
            return act(observation)
        finally:
            acting += time.perf_counter() - start

    agent.act = timed_act
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    result = run_episode(env, agent, seed=0)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{args.profile}-{args.measure_agent}.prof")
    edits = result["edits"]
    return {
        "seconds_per_edit": result["time_per_edit_s"],
        "act_seconds_per_edit": acting / edits,
        "stats_s": float(getattr(agent, "stats_time_s", 0.0)),
        **{m: result["metrics"].get(m, float("nan")) for m in ("eff", "gen", "spe")},
    }


def run(tree: Path, agent: str, args) -> dict:
    """One measurement in a fresh process of ``tree``."""
    arguments = ["--measure-agent", agent, "--model", args.model, "--dataset", args.dataset]
    arguments += ["--train-dataset", args.train_dataset, "--num-batches", str(args.num_batches)]
    if args.profile:
        arguments += ["--profile", args.profile]
    return measure_in(tree, __file__, arguments)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dataset", default="counterfact-edit-1k")
    parser.add_argument("--train-dataset", default="counterfact-train")
    parser.add_argument("--num-batches", type=int, default=10)
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--profile", default=None, help="write cProfile stats to PREFIX-<agent>.prof")
    parser.add_argument("--measure-agent", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_agent:  # inside a measuring subprocess
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(measure(args)))
        return

    from rledit_env.datasets import resolve_dataset

    # paths both trees read (an earlier commit may resolve dataset names elsewhere)
    args.dataset = str(resolve_dataset(args.dataset).resolve())
    args.train_dataset = str(resolve_dataset(args.train_dataset).resolve())
    with trees(None if args.no_baseline else args.baseline) as found:
        report(found, args)


def report(trees: dict[str, Path], args) -> None:
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    print(f"model {args.model}, {args.num_batches} x 10 on {Path(args.dataset).name}, threads {threads}")
    print(f"{'agent':10s} {'tree':8s} {'s/edit':>8s} {'act s/edit':>10s} {'eff':>6s} {'gen':>6s} {'spe':>6s}")
    start = time.perf_counter()
    for agent in args.agents.split(","):
        results = {}
        for tree, path in trees.items():  # the baseline after: it reuses the statistics cached by now
            r = results[tree] = run(path, agent, args)
            print(
                f"{agent:10s} {tree:8s} {r['seconds_per_edit']:8.3f} {r['act_seconds_per_edit']:10.3f} "
                f"{r['eff']:6.3f} {r['gen']:6.3f} {r['spe']:6.3f}",
                flush=True,
            )
        if "baseline" in results:
            old, new = results["baseline"], results["now"]
            ratio = old["seconds_per_edit"] / new["seconds_per_edit"]
            act_ratio = old["act_seconds_per_edit"] / new["act_seconds_per_edit"]
            print(
                f"{agent:10s} baseline / now: {ratio:.2f}x fewer seconds per edit ({act_ratio:.2f}x in act)"
            )
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
