"""The command line, end to end on the tiny TinyWorld."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments import cli
from experiments.cli import CONFIG_DIR, main

TINY = ["--model", "tinyworld-tiny", "--schedule", "2x3", "--metrics-every", "1", "-q"]


def _bench(out, agents="noedit,finetune", *extra) -> pd.DataFrame:
    assert main(["benchmark", *TINY, "--agents", agents, "--out", str(out), *extra]) == 0
    return pd.read_csv(out / "results.csv")


def test_benchmark_writes_table_summary_plots_and_metadata(tmp_path):
    results = _bench(tmp_path)
    for column in (
        "agent",
        "model",
        "dataset",
        "schedule",
        "seed",
        "step",
        "edits",
        "eff",
        "gen",
        "spe",
        "eff_acc",
        "spe_acc",
        "ppl",
        "time_per_edit_s",
        "final",
    ):
        assert column in results.columns
    assert len(results) == 2 * 2  # two agents, two evaluation points each
    assert sorted(results["edits"].unique()) == [3, 6]
    final = results[results["final"]].set_index("agent")
    assert final.loc["noedit", "spe_acc"] == 1.0  # no edit: locality untouched
    assert final.loc["finetune", "eff_acc"] > final.loc["noedit", "eff_acc"]
    assert results[["eff", "gen", "spe"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (tmp_path / "retention-2x3.png").stat().st_size > 10_000
    assert (tmp_path / "time-per-edit.png").exists()
    summary = (tmp_path / "summary.md").read_text()
    assert "| finetune" in summary and "ms_per_edit" in summary
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["config"]["model"] == "tinyworld-tiny" and meta["packages"]["torch"] and "device" in meta


def test_same_seed_same_table_and_resume_skips_finished_runs(tmp_path):
    first = _bench(tmp_path / "a", "noedit,finetune")
    again = _bench(tmp_path / "b", "noedit,finetune")
    metrics = ["eff", "gen", "spe", "eff_acc", "gen_acc", "spe_acc", "ppl"]
    pd.testing.assert_frame_equal(first[metrics], again[metrics])
    resumed = _bench(tmp_path / "a", "noedit,finetune,rledit-untrained")  # only the new agent runs
    assert len(resumed) == len(first) + 2
    pd.testing.assert_frame_equal(resumed.iloc[: len(first)][metrics], first[metrics])


def test_train_then_evaluate_a_checkpoint(tmp_path):
    ckpt = tmp_path / "rledit.safetensors"
    args = ["--model", "tinyworld-tiny", "--schedule", "2x3", "--train-episodes", "2", "-q"]
    assert main(["train", "--agent", "rledit", "--checkpoint", str(ckpt), *args, "--out", str(tmp_path)]) == 0
    assert ckpt.exists()
    out = tmp_path / "eval"
    assert main(["evaluate", "--agent", "rledit", "--checkpoint", str(ckpt), *args, "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert set(results["agent"]) == {"rledit"} and results["final"].any()


@pytest.mark.slow
def test_train_builds_the_registered_agent_with_its_defaults(tmp_path):
    # `sac` is the SB3 adapter with algorithm SAC in the registry; the CLI once built PPO instead
    from agents.sb3 import SB3Agent
    from rledit_env.envs import LifelongEditEnv

    ckpt = tmp_path / "sac.pt"
    args = ["--model", "tinyworld-tiny", "--schedule", "2x3", "--train-episodes", "2", "-q"]
    assert main(["train", "--agent", "sac", "--checkpoint", str(ckpt), *args, "--out", str(tmp_path)]) == 0
    env = LifelongEditEnv("tinyworld-tiny", num_batches=2, batch_size=3)
    agent = SB3Agent.load(ckpt, env)
    assert type(agent.model).__name__ == "SAC" and agent.config.algorithm == "SAC"


def test_clear_errors_for_unknown_names(tmp_path, capsys):
    assert main(["benchmark", *TINY, "--agents", "nosuchagent", "--out", str(tmp_path)]) == 2
    assert "unknown agent 'nosuchagent'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown model 'nosuchmodel'"):
        main(["benchmark", "--model", "nosuchmodel", "--agents", "noedit", "--out", str(tmp_path)])
    assert (
        main(
            [
                "benchmark",
                *TINY,
                "--agents",
                "noedit",
                "--dataset",
                "no/such/file.json",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert (
        main(["benchmark", "--model", "tinyworld-tiny", "--schedule", "20by10", "--out", str(tmp_path)]) == 2
    )


def test_list_shows_agents_models_and_configurations(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "rledit",
        "mend",
        "malmen",
        "memit",
        "alphaedit",
        "ultraedit",
        "tinyworld",
        "demo-tinyworld",
        "paper-llama3-8b-zsre",
    ):
        assert name in out


def test_demo_runs_every_agent_of_its_configuration_and_prints_the_table(tmp_path, capsys):
    # the README's main command, shrunk to the tiny world: the demo configuration's agents and settings
    args = ["--model", "tinyworld-tiny", "--schedule", "2x3", "--train-episodes", "1", "--metrics-every", "1"]
    assert main(["demo", *args, "-q", "--out", str(tmp_path)]) == 0
    demo_agents = json.loads((CONFIG_DIR / "demo-tinyworld.json").read_text())["agents"]
    results = pd.read_csv(tmp_path / "results.csv")
    assert sorted(results["agent"].unique()) == sorted(demo_agents)
    assert {"memit", "alphaedit", "rledit", "rledit-untrained"} <= set(demo_agents)
    final = results[results["final"]].set_index("agent")
    assert final.loc["noedit", "spe_acc"] == 1.0 and final.loc["noedit", "eff"] == 0.0
    assert final.loc["memit", "stats_time_s"] > 0  # the one-off statistics cost, apart from editing
    assert (final.loc["rledit", "train_time_s"] > 0) and (final.loc["rledit-untrained", "train_time_s"] == 0)
    printed = capsys.readouterr().out
    assert "time_vs_rledit" in printed and all(f"| {a} " in printed for a in demo_agents)
    assert (tmp_path / "retention-2x3.png").exists() and (tmp_path / "summary.md").exists()
    # the learning curves of the agents it trained (RLEdit, MALMEN, MEND), from their training logs
    assert {p.name for p in tmp_path.glob("training-*-2x3-seed0.csv")} == {
        f"training-{a}-2x3-seed0.csv" for a in ("rledit", "malmen", "mend")
    }
    assert (tmp_path / "training-curves.png").stat().st_size > 10_000


def test_the_usage_examples_in_the_help_parse():
    # the help text is the first documentation a user reads: its examples must be valid commands
    lines = [line for line in cli.__doc__.splitlines() if line.startswith("rledit ")]
    examples = [line.split("  ")[0].split()[1:] for line in lines]  # without the trailing comment
    assert len(examples) >= 5
    for argv in examples:
        cli.build_parser().parse_args(argv)  # argparse exits on an unknown or missing flag


def test_configurations_share_settings_by_extending_one_another(tmp_path):
    from experiments.harness import BenchmarkConfig

    lifelong = BenchmarkConfig.from_file(CONFIG_DIR / "tinyworld-lifelong.json")
    demo = BenchmarkConfig.from_file(CONFIG_DIR / "demo-tinyworld.json")
    assert lifelong.agent_configs["memit"] == demo.agent_configs["memit"]  # written once, in the demo's
    assert lifelong.train_episodes["rledit"] == 50 and demo.train_episodes["rledit"] == 12
    assert "ppo" in lifelong.agent_configs and "ppo" not in demo.agent_configs
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b", "agents": ["noedit"]}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a", "agents": ["noedit"]}))
    with pytest.raises(ValueError, match="cycle"):
        BenchmarkConfig.from_file(tmp_path / "a.json")
    (tmp_path / "c.json").write_text(json.dumps({"extends": "nowhere", "agents": ["noedit"]}))
    with pytest.raises(ValueError, match="extends 'nowhere'"):
        BenchmarkConfig.from_file(tmp_path / "c.json")
