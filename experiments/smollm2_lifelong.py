"""Lifelong editing of SmolLM2-135M-Instruct on CounterFact with a plain gradient action, next to no edit.

Each batch's update is one plain gradient step on its edit loss, dW = -lr * keys^T @ value_grads (the
"shift" interface; fine-tuning without an optimiser), applied one batch after another to the same
model. Both agents see the same knowledge sequence (the same reset seed). Eff/Gen/Spe are the
environment's end-of-episode metrics over every edit made.

    python experiments/smollm2_lifelong.py                       # 10 batches x 10 edits, lr 0.1
    python experiments/smollm2_lifelong.py --lr 0.003 --num-batches 20 --out results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource

import torch

from agents.base import AgentConfig, EditAgent, like_observation, run_episode
from agents.noedit import NoEdit
from rledit_env.datasets import load_dataset
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import load_model

COLUMNS = ("eff", "gen", "spe", "eff_acc", "gen_acc", "spe_acc", "ppl")


@dataclasses.dataclass
class PlainGradientConfig(AgentConfig):
    lr: float = 0.1


class PlainGradient(EditAgent):
    """dW = -lr * keys^T @ value_grads: one plain gradient step on the batch's edit loss."""

    Config = PlainGradientConfig
    action_type = "shift"
    name = "gradient"

    def act(self, observation) -> dict:
        keys, grads = observation["keys"], observation["value_grads"]
        update = {m: -self.config.lr * torch.as_tensor(keys[m]).T @ torch.as_tensor(grads[m]) for m in keys}
        return like_observation(update, observation)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="counterfact-edit-1k")
    parser.add_argument("--num-batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.1], help="one run per value")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    loaded = load_model("smollm2")
    records = load_dataset(args.dataset)
    agents = [("no edit", NoEdit, None)] + [
        (f"gradient lr={lr:g}", PlainGradient, PlainGradientConfig(lr=lr)) for lr in args.lr
    ]
    results = []
    for label, agent_cls, config in agents:
        env = LifelongEditEnv(
            loaded,
            records,
            num_batches=args.num_batches,
            batch_size=args.batch_size,
            action_type="shift",
            obs_backend="torch",
            backtrack_depth=1,  # these agents do not use the reward; score only the current batch
        )
        try:
            outcome = run_episode(env, agent_cls(env, config), seed=args.seed)
        finally:
            env.close()  # the next agent starts from the original weights
        row = {"agent": label, **{c: outcome["metrics"].get(c, float("nan")) for c in COLUMNS}}
        row["time_per_edit_s"] = outcome["time_per_edit_s"]
        results.append(row)
        print(json.dumps(row), flush=True)

    edits = args.num_batches * args.batch_size
    print(
        f"\nSmolLM2-135M-Instruct, {args.dataset}, {args.num_batches} x {args.batch_size} = {edits} edits, "
        f"seed {args.seed}, edit modules {len(loaded.editable.names)} (layers 20-28 gate/up)"
    )
    print("| agent | " + " | ".join(COLUMNS) + " | s/edit |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for row in results:
        cells = " | ".join(f"{row[c]:.3f}" for c in COLUMNS)
        print(f"| {row['agent']} | {cells} | {row['time_per_edit_s']:.3f} |")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"config": vars(args), "results": results}, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
