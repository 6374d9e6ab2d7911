"""Standard RL algorithms against RLEdit on TinyWorld's held-out edits, in one reproducible run.

    python -m experiments.rl_baselines --threads 1                  # tinyworld, 20 batches x 10 edits
    python -m experiments.rl_baselines --model tinyworld-tiny --batches 5 --batch-size 4   # a quick look

PPO and SAC (stable-baselines3, ``MlpPolicy``, unchanged) and the cross-entropy-method example agent
(examples/cem_agent.py) learn on the compact interface (``rledit_env/LifelongEditCompact-v0``) from
training-split episodes of ``train_batches`` x n edits, for a fixed budget of environment steps. RLEdit,
fine-tuning (plain gradient steps) and no-edit come from ``experiments.lifelong_agents`` with its
TinyWorld settings (RLEdit also trains on ``train_batches``-batch sequences there). Every agent then
edits the same T x n sequence of the eval split, from the original model; one row per agent.
Run it from the repository root (it imports the example agent from examples/).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import pandas as pd
import torch

from agents import run_episode
from agents.sb3 import SB3Agent, SB3AgentConfig
from examples.cem_agent import CEMConfig, CEMStepSizes
from experiments.lifelong_agents import METRICS, TRAIN_EPISODES, evaluate_agents
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import LoadedModel, load_model

# Small-budget settings: rollouts and replay start short enough that a few hundred episodes train.
SB3_SETTINGS = {
    "PPO": {"n_steps": 100, "batch_size": 50, "n_epochs": 10},
    "SAC": {"learning_starts": 100, "batch_size": 64},
}


def compact_agents(
    model: str,
    num_batches: int,
    batch_size: int,
    seed: int,
    train_batches: int,
    sb3_steps: int,
    cem_episodes: int,
    progress: bool,
) -> pd.DataFrame:
    """PPO, SAC and CEM: trained on the train split, then one eval episode each; one row per agent."""
    loaded = load_model(model)
    env = LifelongEditEnv(loaded, num_batches=num_batches, batch_size=batch_size)  # action_type "values"
    agents = {
        name.lower(): SB3Agent(
            env,
            config=SB3AgentConfig(
                seed=seed, algorithm=name, algorithm_kwargs=kwargs, train_num_batches=train_batches
            ),
        )
        for name, kwargs in SB3_SETTINGS.items()
    }
    agents["cem (example)"] = CEMStepSizes(env, CEMConfig(seed=seed))
    train_env = LifelongEditEnv(
        LoadedModel(loaded.editable, loaded.splits),
        split="train",
        num_batches=train_batches,
        batch_size=batch_size,
        probe_texts=[],
    )
    rows = []
    for name, agent in agents.items():
        start = time.perf_counter()
        if isinstance(agent, SB3Agent):
            episodes = sb3_steps // train_batches
            agent.learn(episodes, progress_bar=progress)
        else:
            episodes = cem_episodes
            agent.learn(episodes, train_env=train_env, progress_bar=progress)
            train_env.close()  # give back the weights from before training
        train_time = time.perf_counter() - start
        result = run_episode(env, agent, seed=seed)
        env.close()  # restore the original weights for the next agent
        rows.append(
            {
                "agent": name,
                "edits": result["edits"],
                **{m: result["metrics"].get(m, float("nan")) for m in METRICS},
                "ms_per_edit": 1000 * result["time_per_edit_s"],
                "train_s": train_time,
                "train_episodes": episodes,
            }
        )
    return pd.DataFrame(rows)


def compare(
    model: str = "tinyworld",
    num_batches: int = 20,
    batch_size: int = 10,
    seed: int = 0,
    train_batches: int = 5,
    sb3_steps: int = 400,
    cem_episodes: int = 32,
    rledit_episodes: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The comparison table: PPO, SAC, the CEM example, RLEdit, fine-tuning and no-edit.

    ``sb3_steps``: environment steps for PPO and SAC each (``sb3_steps // train_batches`` training
    episodes); ``cem_episodes``: training episodes for CEM; ``rledit_episodes``: RLEdit's training
    sequences (None: ``experiments.lifelong_agents``' TinyWorld budget). All on ``train_batches`` x
    ``batch_size`` training episodes.
    """
    if rledit_episodes is None:
        rledit_episodes = TRAIN_EPISODES["rledit"]
    library = evaluate_agents(
        model,
        num_batches,
        batch_size,
        seed,
        agents=("rledit", "finetune", "noedit"),
        train_episodes={"rledit": rledit_episodes},
        configs={"rledit": {"train_num_batches": train_batches}},
        progress=progress,
    )
    compact = compact_agents(
        model, num_batches, batch_size, seed, train_batches, sb3_steps, cem_episodes, progress
    )
    frame = pd.concat([library, compact], ignore_index=True)
    frame.attrs["settings"] = {
        "model": model,
        "num_batches": num_batches,
        "batch_size": batch_size,
        "seed": seed,
        "train_batches": train_batches,
        "sb3_steps": sb3_steps,
        "cem_episodes": cem_episodes,
        "rledit_episodes": rledit_episodes,
    }
    return frame


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tinyworld")
    parser.add_argument("--batches", type=int, default=20, help="T of the evaluation sequence")
    parser.add_argument("--batch-size", type=int, default=10, help="n, edits per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-batches", type=int, default=5, help="T of the training episodes")
    parser.add_argument("--sb3-steps", type=int, default=400, help="training steps for PPO and SAC each")
    parser.add_argument("--cem-episodes", type=int, default=32)
    parser.add_argument("--rledit-episodes", type=int, help="default: lifelong_agents' TinyWorld budget")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (1 is best on shared cores)")
    parser.add_argument("--csv", help="also write the table here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    frame = compare(
        args.model,
        args.batches,
        args.batch_size,
        args.seed,
        args.train_batches,
        args.sb3_steps,
        args.cem_episodes,
        args.rledit_episodes,
        progress=not args.no_progress,
    )
    settings = ", ".join(f"{k}={v}" for k, v in frame.attrs["settings"].items())
    print(f"held-out (eval split) edits; {settings}; {time.perf_counter() - start:.0f} s in all\n")
    print(frame.to_markdown(index=False, floatfmt=".3f"))
    if args.csv:
        frame.to_csv(args.csv, index=False)
    return frame


if __name__ == "__main__":
    main()
