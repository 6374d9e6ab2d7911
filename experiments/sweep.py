"""Sweep one agent setting on the *train* split of a benchmark configuration, as the TinyWorld settings in
docs/tinyworld-settings.md were chosen (the eval split the tables report stays unseen)::

    python -m experiments.sweep --config tinyworld-lifelong --agent ultraedit --setting lr \\
        --values 1e-3,3e-3,1e-2 --seeds 0

Each value runs the configuration's schedules for that one agent, with ``env.split = "train"``, into
``<out>/<setting>=<value>/`` (resumable like any benchmark), and the final metrics are printed as one
table, mean over seeds, with ``score``, the harmonic mean of eff, gen and spe (CounterFact's score, the
selection criterion). ``--edit-modules`` sets the model's edit modules, which an agent named by its class
(``agents.ultraedit:UltraEdit``) edits; registered agents with their own choice (``ultraedit``) keep it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from agents.auto_settings import selection_score
from experiments.cli import UsageError, _csv, _json_value, _seeds, config_path
from experiments.harness import Benchmark, BenchmarkConfig, final_rows

COLUMNS = ["eff", "gen", "spe", "eff_acc", "gen_acc", "spe_acc", "ppl"]


def sweep(config: BenchmarkConfig, agent: str, setting: str, values: list, out: Path) -> pd.DataFrame:
    """Final metrics of ``agent`` on the train split for each value of ``setting``, mean over seeds."""
    rows = []
    for value in values:
        agent_configs = {agent: {**config.agent_configs.get(agent, {}), setting: value}}
        trial = dataclasses.replace(  # no general-ability probe: the choice is made on eff/gen/spe
            config,
            agents=[agent],
            agent_configs=agent_configs,
            env={**config.env, "split": "train"},
            general_probe=None,
        )
        results = Benchmark(trial, out / f"{setting}={value}", progress=False).run()
        final = final_rows(results)
        means = final[COLUMNS].mean()
        score = selection_score(means)
        rows.append({setting: str(value), "schedule": ",".join(trial.schedules), "score": score, **means})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a configuration name or JSON file")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--setting", required=True, help="a field of the agent's config dataclass")
    parser.add_argument("--values", required=True, type=_csv, help="comma-separated, e.g. 1e-3,3e-3")
    parser.add_argument("--seeds", type=_seeds, help="default: the configuration's")
    parser.add_argument(
        "--schedule", action="append", help="T x n (repeatable); default: the configuration's"
    )
    parser.add_argument("--edit-modules", type=_csv, help="comma-separated module names (see above)")
    parser.add_argument("--out", help="default: results/sweep-<config>-<agent>-<setting>")
    args = parser.parse_args(argv)
    try:
        config = BenchmarkConfig.from_file(config_path(args.config))
    except UsageError as exc:
        parser.error(str(exc))
    config = dataclasses.replace(
        config,
        seeds=args.seeds or config.seeds,
        schedules=args.schedule or config.schedules,
        edit_modules=args.edit_modules or config.edit_modules,
    )
    out = Path(args.out or f"results/sweep-{config.name}-{args.agent}-{args.setting}")
    table = sweep(config, args.agent, args.setting, [_json_value(v) for v in args.values], out)
    print(table.round(3).to_markdown(index=False, disable_numparse=True))  # the values as given
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
