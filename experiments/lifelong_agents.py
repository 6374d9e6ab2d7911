"""Lifelong editing on TinyWorld's held-out edits: RLEdit against its baselines, in one run.

    python -m experiments.lifelong_agents                     # tinyworld, 20 batches x 10 edits
    python -m experiments.lifelong_agents --model tinyworld-tiny --batches 8 --batch-size 10

Every agent edits the same knowledge sequence of the eval split, starting from the original model.
The hypernetwork editors are first trained briefly on the train split (RLEdit on whole sequences of
training edits, MALMEN and MEND one batch at a time on the unedited model); "rledit-untrained" is
RLEdit's network before training, the ablation that shows what training buys.

The paper's step sizes (initial per-module lr 1e-6, meta lr 1e-5) are set for 7-9B models. A TinyWorld
model's keys and value gradients are on another scale and training here lasts minutes, so
``TINYWORLD_CONFIGS`` starts the per-module lr at 3e-3 (where the untrained network's edits already
move the default TinyWorld's answers: probed on single batches, lr 1e-3 barely does, 1e-2 breaks
locality) with meta lr 1e-4, and trains RLEdit on 5-batch sequences (a whole 20-batch training
sequence costs ~20 s of CPU on the default TinyWorld). Fine-tuning takes 10 Adam steps of 3e-3.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from agents import MALMEN, MEND, EditAgent, FineTune, NoEdit, RLEdit, run_episode
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import load_model

AGENT_NAMES = ("rledit", "rledit-untrained", "malmen", "mend", "finetune", "noedit")
AGENT_CLASSES: dict[str, type[EditAgent]] = {
    "rledit": RLEdit,
    "rledit-untrained": RLEdit,
    "malmen": MALMEN,
    "mend": MEND,
    "finetune": FineTune,
    "noedit": NoEdit,
}
TINYWORLD_CONFIGS: dict[str, dict[str, Any]] = {
    "rledit": {"init_lr": 3e-3, "meta_lr": 1e-4, "train_num_batches": 5},
    "malmen": {"init_lr": 3e-3, "meta_lr": 1e-4},
    "mend": {"init_lr": 3e-3, "meta_lr": 1e-4},
    "finetune": {"lr": 3e-3, "steps": 10},
}
TRAIN_EPISODES = {"rledit": 100, "malmen": 100, "mend": 100}
METRICS = ("eff", "gen", "spe", "eff_acc", "gen_acc", "spe_acc", "ppl")


def build_agent(name: str, env: LifelongEditEnv, seed: int, overrides: Mapping[str, Any] | None = None):
    """An agent by name, with the TinyWorld settings (and ``overrides``) on top of its defaults."""
    if name not in AGENT_CLASSES:
        raise ValueError(f"unknown agent {name!r}; known: {', '.join(AGENT_CLASSES)}")
    cls = AGENT_CLASSES[name]
    settings = {
        **TINYWORLD_CONFIGS.get(name.removesuffix("-untrained"), {}),
        **(overrides or {}),
        "seed": seed,
    }
    return cls(env, cls.Config(**settings))


def evaluate_agents(
    model: str = "tinyworld",
    num_batches: int = 20,
    batch_size: int = 10,
    seed: int = 0,
    agents: Sequence[str] = AGENT_NAMES,
    train_episodes: int | Mapping[str, int] | None = None,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    metrics_every: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Train the trainable agents, then run each on the same T x n eval episode; one row per agent.

    ``train_episodes``: one number for every trainable agent, or {agent: episodes} (default
    ``TRAIN_EPISODES``). ``configs``: {agent: config overrides}. Columns: the final metrics over all
    edits (Eff/Gen/Spe, their token-accuracy variants, perplexity), editing time per edit in ms
    (``run_episode``: act + update + trace), training time and episodes. ``metrics_every`` > 0 also
    puts each agent's curve in ``frame.attrs["curves"]`` and training logs go in
    ``frame.attrs["training_logs"]``.
    """
    unknown = sorted(set(agents) - set(AGENT_CLASSES))
    if unknown:
        raise ValueError(f"unknown agents {unknown}; known: {', '.join(AGENT_CLASSES)}")
    if isinstance(train_episodes, int) or train_episodes is None:
        episodes = {k: train_episodes if train_episodes is not None else v for k, v in TRAIN_EPISODES.items()}
    else:
        episodes = {**TRAIN_EPISODES, **train_episodes}
    loaded = load_model(model)
    envs = {
        action_type: LifelongEditEnv(
            loaded,
            num_batches=num_batches,
            batch_size=batch_size,
            action_type=action_type,
            metrics_every=metrics_every,
        )
        for action_type in {AGENT_CLASSES[name].action_type for name in agents}
    }
    built: dict[str, tuple[EditAgent, float]] = {}
    # Train every agent before any evaluation: training starts from (and gives back) unedited weights.
    for name in agents:
        base = name.removesuffix("-untrained")  # the ablation shares its trained twin's settings
        overrides = {**(configs or {}).get(base, {}), **(configs or {}).get(name, {})}
        agent = build_agent(name, envs[AGENT_CLASSES[name].action_type], seed, overrides)
        start = time.perf_counter()
        if name in episodes:
            agent.learn(episodes[name], progress_bar=progress)
        built[name] = (agent, time.perf_counter() - start)
    rows, curves, logs = [], {}, {}
    for name, (agent, train_time) in built.items():
        result = run_episode(agent.env, agent, seed=seed)
        agent.env.close()  # restore the original weights for the next agent
        rows.append(
            {
                "agent": name,
                "edits": result["edits"],
                **{m: result["metrics"].get(m, float("nan")) for m in METRICS},
                "ms_per_edit": 1000 * result["time_per_edit_s"],
                "train_s": train_time,
                "train_episodes": episodes.get(name, 0),
            }
        )
        curves[name] = result["curve"]
        logs[name] = list(getattr(agent, "training_log", []))
    frame = pd.DataFrame(rows)
    frame.attrs.update(
        curves=curves,
        training_logs=logs,
        settings={"model": model, "num_batches": num_batches, "batch_size": batch_size, "seed": seed},
        configs={name: dataclasses.asdict(agent.config) for name, (agent, _) in built.items()},
    )
    return frame


def _parse_episodes(items: Sequence[str]) -> dict[str, int] | int | None:
    if not items:
        return None
    try:
        if len(items) == 1 and "=" not in items[0]:
            return int(items[0])
        return {name: int(n) for name, n in (item.split("=", 1) for item in items)}
    except ValueError:
        raise SystemExit(
            f"--train-episodes takes one number or agent=N pairs, got {' '.join(items)}"
        ) from None


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tinyworld")
    parser.add_argument("--batches", type=int, default=20, help="T, batches per sequence")
    parser.add_argument("--batch-size", type=int, default=10, help="n, edits per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agents", nargs="+", default=list(AGENT_NAMES), choices=list(AGENT_CLASSES))
    parser.add_argument("--train-episodes", nargs="*", default=[], help="N, or agent=N pairs")
    parser.add_argument("--metrics-every", type=int, default=0, help="also score along the sequence")
    parser.add_argument("--csv", help="also write the table here")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (1 is fastest on shared cores)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frame = evaluate_agents(
        args.model,
        args.batches,
        args.batch_size,
        args.seed,
        args.agents,
        _parse_episodes(args.train_episodes),
        metrics_every=args.metrics_every,
        progress=not args.no_progress,
    )
    print(f"{args.model}, {args.batches} x {args.batch_size} edits, eval split, seed {args.seed}\n")
    print(frame.to_markdown(index=False, floatfmt=".3f"))
    if args.metrics_every:
        curve = pd.DataFrame(
            [{"agent": a, **p} for a, points in frame.attrs["curves"].items() for p in points]
        ).pivot(index="step", columns="agent", values="eff")
        print("\nEff over all edits so far, along the sequence:\n")
        print(curve.to_markdown(floatfmt=".3f"))
    if args.csv:
        frame.to_csv(args.csv, index=False)
    return frame


if __name__ == "__main__":
    main()
