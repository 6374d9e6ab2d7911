"""What evaluation and RLEdit training cost, measured side by side with an earlier commit in one run.

Prints, for the default TinyWorld (and SmolLM2 with ``--model smollm2``):

(a) an evaluation step with the reward off (tracing the next batch and applying the update) over the
    bare forward and backward passes that tracing needs;
(b) the reward's scoring of a step over one plain forward pass over all of its window's prompts;
(c) a 20 x 10 evaluation episode (final metrics included) of no-edit and of RLEdit's untrained
    hypernetwork, with the reward on and off;
(d) RLEdit's seconds per 20 x 10 training sequence (the default reward, and one paraphrase and one
    neighbour per edit) and the peak resident memory of the training process;
(e) (c) and (d) at ``--baseline`` (default: the commit before the reward-off setting existed), checked
    out into a temporary folder and run there by this same script, so each speed-up is a ratio of
    two measurements from one run of this command.

    python benchmarks/evaluation_cost.py                        # TinyWorld, against the baseline
    python benchmarks/evaluation_cost.py --sequences 50         # peak RSS over 50 training sequences
    python benchmarks/evaluation_cost.py --model smollm2 --dataset counterfact-edit-1k --no-baseline

Every measurement runs in a fresh process (peak memory is per process), one torch thread unless
OMP_NUM_THREADS says otherwise; take timings on an idle machine.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import time
from pathlib import Path

from baseline_tree import MeasurementFailed, measure_in, trees

BASELINE = "10b7061"  # the last commit before this benchmark's work (issue 13)
PUBLISHED = {"paraphrases_per_edit": 1, "neighbours_per_edit": 1}


# ------------------------------------------------------------------------------ one measurement each
def _env(args, **settings):
    """A LifelongEditEnv that works at this commit and at the baseline (whose reward had other names)."""
    from rledit_env.envs import LifelongEditEnv

    if "score_reward" in settings and "score_reward" not in inspect.signature(LifelongEditEnv).parameters:
        on = settings.pop("score_reward")
        if not on:
            raise SystemExit("unsupported")  # the baseline cannot turn the reward off
    return LifelongEditEnv(args.model, args.dataset, num_batches=args.num_batches, batch_size=10, **settings)


def measure_episode(args) -> dict:
    """(c): one evaluation episode of ``args.agent``, the reward on or off, final metrics included."""
    import torch

    from agents import NoEdit, RLEdit, RLEditConfig

    env = _env(
        args,
        action_type="values" if args.agent == "rledit-untrained" else "shift",
        score_reward=args.reward == "on",
    )
    agent = RLEdit(env, RLEditConfig(init_lr=3e-3)) if args.agent == "rledit-untrained" else NoEdit(env)
    obs, _ = env.reset(seed=0)
    start, done = time.perf_counter(), False
    with torch.no_grad():
        while not done:
            obs, _, done, _, info = env.step(agent.act(obs))
    return {"seconds": time.perf_counter() - start, "eff": info["metrics"]["eff"]}


def measure_training(args) -> dict:
    """(d): RLEdit training sequences; seconds per sequence (median) and the process's peak RSS."""
    from agents import RLEdit, RLEditConfig

    env = _env(args, evaluate_at_end=False)
    settings = {"init_lr": 3e-3, "meta_lr": 1e-4}
    reward = {"reward": PUBLISHED} if args.published else {}
    train_env = None
    if args.dataset:  # a dataset has no training split of its own: train on its records (cost, not quality)
        train_env = _env(args, evaluate_at_end=False, differentiable=True, obs_backend="torch", **reward)
    elif args.published:
        settings.update(reward)
    agent = RLEdit(env, RLEditConfig(**settings))
    agent.learn(args.sequences, train_env=train_env, progress_bar=False)
    seconds = [log["seconds"] for log in agent.training_log]
    return {
        "seconds_per_sequence": statistics.median(seconds),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "sequences": len(seconds),
    }


def measure_passes(args) -> dict:
    """(a) and (b) at this commit: env phases against the bare passes they need, summed over an episode."""
    import torch

    from rledit_env.editable import stack_rows

    env = _env(args, action_type="shift", timing=True, evaluate_at_end=False, obs_backend="torch")
    model = env.editable.model
    weights = [m.weight for m in env.editable.modules.values()]
    totals = {"trace": 0.0, "bare_trace": 0.0, "score": 0.0, "bare_window": 0.0}
    obs, _ = env.reset(seed=0)
    for t in range(env.num_batches):
        action = {m: -0.1 * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}
        obs, _, _, _, info = env.step(action)
        totals["score"] += info["time"]["score"]
        totals["trace"] += info["time"].get("trace", 0.0) + info["time"]["update"]
        window = env._reward.window(t)  # the prompts the step scored, in one plain forward pass
        stacked = stack_rows(
            [env._batches[b].gen.batch for b in window] + [env._batches[b].loc.batch for b in window]
        )
        start = time.perf_counter()
        with torch.no_grad():
            model(input_ids=stacked.input_ids, attention_mask=stacked.attention_mask, use_cache=False)
        totals["bare_window"] += time.perf_counter() - start
        if t + 1 < env.num_batches:  # tracing: one forward and backward pass of the next batch's edit loss
            edit = env._batches[t + 1].edit.batch
            start = time.perf_counter()
            for w in weights:
                w.requires_grad_(True)
            model(
                input_ids=edit.input_ids, attention_mask=edit.attention_mask, labels=edit.labels
            ).loss.backward()
            for w in weights:
                w.grad = None
                w.requires_grad_(False)
            totals["bare_trace"] += time.perf_counter() - start
    return totals


MEASURES = {"episode": measure_episode, "training": measure_training, "passes": measure_passes}


# ------------------------------------------------------------------------------ orchestration
def run(tree: Path, kind: str, args, **extra) -> dict | None:
    """One measurement in a fresh process of ``tree`` (None where that tree does not support it)."""
    arguments = ["--measure", kind, "--model", args.model, "--num-batches", str(args.num_batches)]
    arguments += ["--sequences", str(args.sequences)]
    if args.dataset:
        arguments += ["--dataset", args.dataset]
    for key, value in extra.items():
        arguments += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    try:
        return measure_in(tree, __file__, arguments)
    except MeasurementFailed as failed:
        if "unsupported" in failed.stderr:
            return None
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tinyworld")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--num-batches", type=int, default=20)
    parser.add_argument("--sequences", type=int, default=5, help="RLEdit training sequences per measurement")
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--measure", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    parser.add_argument("--agent", default="noedit", help=argparse.SUPPRESS)
    parser.add_argument("--reward", default="on", help=argparse.SUPPRESS)
    parser.add_argument("--published", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # inside a measuring subprocess
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(MEASURES[args.measure](args)))
        return

    if args.dataset:  # a path both trees read (an earlier commit may resolve dataset names elsewhere)
        from rledit_env.datasets import resolve_dataset

        args.dataset = str(resolve_dataset(args.dataset).resolve())
    with trees(None if args.no_baseline else args.baseline) as found:
        report(found, args)


def print_ratio(label: str, totals: dict, numerator: str, denominator: str) -> None:
    a, b = totals[numerator], totals[denominator]
    print(f"{label}: {a:.2f} s / {b:.2f} s = {a / b:.2f}x")


def report(trees: dict[str, Path], args) -> None:
    print(f"model {args.model}, {args.num_batches} x 10, threads {os.environ.get('OMP_NUM_THREADS', '1')}")
    passes = run(trees["now"], "passes", args)
    print_ratio(
        "(a) evaluation step (reward off, metrics apart) / bare tracing passes", passes, "trace", "bare_trace"
    )
    print_ratio(
        "(b) reward scoring / one plain forward over the window's prompts", passes, "score", "bare_window"
    )
    episodes = {}
    for tree in trees:
        for agent in ("noedit", "rledit-untrained"):
            for reward in ("on", "off"):
                episodes[tree, agent, reward] = run(trees[tree], "episode", args, agent=agent, reward=reward)
    print("(c) evaluation episode, final metrics included (seconds; Eff):")
    for (tree, agent, reward), result in episodes.items():
        if result is not None:
            seconds, eff = result["seconds"], result["eff"]
            print(f"    {tree:8s} {agent:17s} reward {reward:3s}  {seconds:7.2f} s  eff {eff:.3f}")
    for agent in ("noedit", "rledit-untrained"):
        if "baseline" in trees:
            old, new = episodes["baseline", agent, "on"]["seconds"], episodes["now", agent, "off"]["seconds"]
            print(f"    {agent}: baseline (reward on, as its harness ran it) / now (off) {old / new:.2f}x")
    training = {
        "now default": run(trees["now"], "training", args),
        "now one-of-each": run(trees["now"], "training", args, published=True),
    }
    if "baseline" in trees:
        training["baseline default"] = run(trees["baseline"], "training", args)
    print(f"(d) RLEdit training, {args.sequences} x {args.num_batches} x 10 (median s/sequence; peak RSS):")
    for name, result in training.items():
        print(f"    {name:17s} {result['seconds_per_sequence']:7.2f} s  {result['peak_rss_mib']:8.0f} MiB")
    if "baseline" in trees:
        base = training["baseline default"]
        for name in ("now default", "now one-of-each"):
            speed = training[name]["seconds_per_sequence"] / base["seconds_per_sequence"]
            rss = training[name]["peak_rss_mib"] / base["peak_rss_mib"]
            print(f"(e) {name} / baseline default: {speed:.2f}x time, {rss:.2f}x peak RSS")


if __name__ == "__main__":
    main()
