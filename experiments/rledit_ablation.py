"""Which of RLEdit's settings does what: the ablation tables of docs/tinyworld-settings.md ("rledit-published"
and "rledit (trained)"), each row a benchmark of one agent with the row's ``agent_configs``::

    python -m experiments.rledit_ablation published --out results/rledit-ablation --seeds 0
    python -m experiments.rledit_ablation trained --out results/rledit-ablation --seeds 0

Rows are cumulative (each adds one change to the row above). Resumable like any benchmark; prints the
table (final metrics over all edits, mean over seeds) and writes it to ``<out>/<which>.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from experiments.cli import _seeds
from experiments.harness import Benchmark, BenchmarkConfig, final_rows

_BEFORE = {
    "paraphrases_per_edit": 1,
    "neighbours_per_edit": 1,
    "gen_edit_prompts": True,
    "reg_gradient": True,
}
_STEP = {"init_lr": 3e-4, "meta_lr": 1e-5, "step_meta_lr": 3e-3}  # TinyWorld's published rule
_ONCE = {"clip_every_step": False, "reward": _BEFORE}  # clipped once, L_gen with edit prompts, reg with grad
VARIANTS: dict[str, dict[str, dict]] = {
    "published": {  # agent rledit-published
        "as before (meta lr 3e-2 for all)": {"init_lr": 3e-3, "meta_lr": 3e-2, "step_meta_lr": None, **_ONCE},
        "+ the blocks at 1e-5": {"init_lr": 3e-3, "meta_lr": 1e-5, "step_meta_lr": 3e-2, **_ONCE},
        "+ initial lr a tenth of the tuned one": {**_STEP, **_ONCE},
        "+ clipped after every step": {**_STEP, "reward": _BEFORE},
        "+ paraphrases only, regulariser without gradient": {},
    },
    "trained": {  # agent rledit
        "as before (normaliser carried)": {"normaliser": "carry"},
        "+ fresh normaliser per sequence": {},
        "+ validation every 4 episodes": {"validate_every": 4},
        "+ step sizes' meta lr 1e-3": {"validate_every": 4, "step_meta_lr": 1e-3},
        "+ locality against the unedited model": {
            "validate_every": 4, "reward": {"loc_reference": "unedited"},
        },
    },
}  # fmt: skip
METRICS = ["eff", "gen", "spe", "eff_acc", "ppl"]


def ablation(which: str, out: Path, seeds: list[int], schedule: str, train_episodes: int) -> pd.DataFrame:
    agent = "rledit-published" if which == "published" else "rledit"
    rows = []
    for i, (label, settings) in enumerate(VARIANTS[which].items()):
        start = time.perf_counter()
        config = BenchmarkConfig(
            model="tinyworld", schedules=[schedule], agents=[agent], seeds=seeds, metrics_every=0,
            general_probe=None, agent_configs={agent: settings}, train_episodes={"rledit": train_episodes},
        )  # fmt: skip
        final = final_rows(Benchmark(config, out / f"{which}-{i}", progress=False).run())
        rows.append(
            {
                "variant": label,
                **final[METRICS].mean().round(3),
                "train_s": round(final["train_time_s"].mean()),
            }
            | {"wall_s": round(time.perf_counter() - start)}
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / f"{which}.csv", index=False)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.rledit_ablation", description=__doc__)
    parser.add_argument("which", choices=sorted(VARIANTS))
    parser.add_argument("--out", default="results/rledit-ablation")
    parser.add_argument("--seeds", type=_seeds, default=[0])
    parser.add_argument("--schedule", default="40x10")
    parser.add_argument("--train-episodes", type=int, default=24, help="rledit's training sequences")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = ablation(args.which, out, args.seeds, args.schedule, args.train_episodes)
    print(table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
