"""Which setting of an agent does what: the ablation tables of docs/tinyworld-settings.md, each row a
benchmark of one agent with the row's ``agent_configs`` on top of a base configuration::

    python -m experiments.ablation published --seeds 0          # rledit-published, TinyWorld 40 x 10
    python -m experiments.ablation trained --seeds 0            # rledit (trained)
    python -m experiments.ablation stableedit --config tinyworld-large-100x20 --seeds 0,1,2

Without ``--config`` the base is the default TinyWorld at ``--schedule`` (40 x 10); with one, its model,
edits, schedules and agent settings, the row's settings merged on top. Only the final evaluation is
scored (no curves, no general-ability probe). RLEdit's rows are cumulative (each adds one change to the
row above; each states its validation, so a base configuration's does not reach the first two);
StableEdit's take its two parts away, one at a time and together (a step size left at "auto" is
calibrated for each row by the same rule; the table's ``auto_settings`` says what each got). Resumable
like any benchmark; prints the table (final metrics over all edits, mean over seeds) and writes it to
``<out>/<which>.csv`` (``--rows``: the chosen rows only, to ``<out>/<which>-rows-<numbers>.csv``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from experiments.cli import UsageError, _seeds, config_path
from experiments.harness import Benchmark, BenchmarkConfig, final_rows

_BEFORE = {
    "paraphrases_per_edit": 1,
    "neighbours_per_edit": 1,
    "gen_edit_prompts": True,
    "reg_gradient": True,
}
_STEP = {"init_lr": 3e-4, "meta_lr": 1e-5, "step_meta_lr": 3e-3}  # TinyWorld's published rule
_ONCE = {"clip_every_step": False, "reward": _BEFORE}  # clipped once, L_gen with edit prompts, reg with grad
AGENTS = {"published": "rledit-published", "trained": "rledit", "stableedit": "stableedit"}
VARIANTS: dict[str, dict[str, dict]] = {
    "published": {
        "as before (meta lr 3e-2 for all)": {"init_lr": 3e-3, "meta_lr": 3e-2, "step_meta_lr": None, **_ONCE},
        "+ the blocks at 1e-5": {"init_lr": 3e-3, "meta_lr": 1e-5, "step_meta_lr": 3e-2, **_ONCE},
        "+ initial lr a tenth of the tuned one": {**_STEP, **_ONCE},
        "+ clipped after every step": {**_STEP, "reward": _BEFORE},
        "+ paraphrases only, regulariser without gradient": {},
    },
    "trained": {
        "as before (normaliser carried)": {"normaliser": "carry", "validate_every": None},
        "+ fresh normaliser per sequence": {"validate_every": None},
        "+ validation every 4 episodes": {"validate_every": 4},
        "+ step sizes' meta lr 1e-3": {"validate_every": 4, "step_meta_lr": 1e-3},
        "+ locality against the unedited model": {
            "validate_every": 4, "reward": {"loc_reference": "unedited"},
        },
    },
    "stableedit": {
        "StableEdit (warm-up + whitening)": {},
        "no warm-up": {"warmup_position": "none"},
        "no whitening": {"whiten": False},
        "neither": {"warmup_position": "none", "whiten": False},
    },
}  # fmt: skip
METRICS = ["eff", "gen", "spe", "eff_acc", "ppl", "ms_per_edit"]


def base_config(config: str | None, schedule: str | None, train_episodes: int | None) -> BenchmarkConfig:
    """The configuration every row starts from: a named or JSON one, or the default TinyWorld."""
    if config is None:  # rledit trains on 24 sequences of the default world unless told otherwise
        base = BenchmarkConfig(
            model="tinyworld", schedules=[schedule or "40x10"], train_episodes={"rledit": 24}
        )
    else:
        base = BenchmarkConfig.from_file(config_path(config))
        if schedule is not None:
            base.schedules = [schedule]
    if train_episodes is not None:
        base.train_episodes = {**base.train_episodes, "rledit": train_episodes}
    return base


def ablation(
    which: str, base: BenchmarkConfig, out: Path, seeds: list[int], only: list[int] | None = None
) -> pd.DataFrame:
    """The table's rows (``only``: those, by number from 0), each a benchmark in ``<out>/<which>-<row>``."""
    agent = AGENTS[which]
    rows = []
    for i, (label, settings) in enumerate(VARIANTS[which].items()):
        if only is not None and i not in only:
            continue
        start = time.perf_counter()
        config = dataclasses.replace(
            base, agents=[agent], seeds=seeds, metrics_every=0, general_probe=None,
            agent_configs={agent: {**base.agent_configs.get(agent, {}), **settings}},
        )  # fmt: skip
        final = final_rows(Benchmark(config, out / f"{which}-{i}", progress=False).run())
        final = final.assign(ms_per_edit=final["time_per_edit_s"] * 1e3)
        rows.append(
            {
                "variant": label,
                **final[METRICS].mean().round(3),
                "train_s": round(final["train_time_s"].mean()),
                "wall_s": round(time.perf_counter() - start),
                "auto_settings": _resolved(final["auto_settings"].iloc[0]),
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(
        out / f"{which}.csv" if only is None else out / f"{which}-rows-{'-'.join(map(str, only))}.csv",
        index=False,
    )
    return table


def _resolved(auto_settings: str) -> str:
    """A results row's settings left at "auto", as the values they got (e.g. "lr=0.0003")."""
    settings = json.loads(auto_settings) if isinstance(auto_settings, str) and auto_settings else {}
    return ", ".join(f"{name}={value}" for name, (value, _) in settings.items())


def _rows(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rows must be numbers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.ablation", description=__doc__)
    parser.add_argument("which", choices=sorted(VARIANTS))
    parser.add_argument("--config", help="a configuration name or JSON file; default: TinyWorld")
    parser.add_argument("--out", help="default: results/ablation-<which>-<configuration>")
    parser.add_argument("--seeds", type=_seeds, default=[0])
    parser.add_argument("--schedule", help="T x n; default: the configuration's, else 40x10")
    parser.add_argument("--rows", type=_rows, help="only these rows, numbered from 0 (e.g. 1,4)")
    parser.add_argument(
        "--train-episodes",
        type=int,
        help="rledit's training sequences; default: the configuration's, else 24",
    )
    args = parser.parse_args(argv)
    try:
        base = base_config(args.config, args.schedule, args.train_episodes)
    except UsageError as exc:
        parser.error(str(exc))
    out = Path(args.out or f"results/ablation-{args.which}-{Path(args.config or 'tinyworld').stem}")
    out.mkdir(parents=True, exist_ok=True)
    table = ablation(args.which, base, out, args.seeds, args.rows)
    print(table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
