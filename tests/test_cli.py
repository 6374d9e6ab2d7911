"""The command line, end to end on the tiny TinyWorld."""

from __future__ import annotations

import dataclasses
import json
import os

import pandas as pd
import pytest
import torch
from helpers import Malicious, old_format_checkpoint, tiny_env

from agents import NoEdit
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
    assert final.loc["noedit", "spe_agree"] == 1.0  # no edit: locality untouched
    assert final.loc["finetune", "eff_acc"] > final.loc["noedit", "eff_acc"]
    assert results[["eff", "gen", "spe"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (tmp_path / "retention-2x3.png").stat().st_size > 10_000
    assert (tmp_path / "time-per-edit.png").exists()
    summary = (tmp_path / "summary.md").read_text()
    assert "| finetune" in summary and "ms_per_edit" in summary and "Protocol: final evaluation" in summary
    header = next(line for line in summary.splitlines() if line.startswith("| agent"))
    assert [cell.strip() for cell in header.split("|")[-4:-1]] == ["train_s", "wall_s", "seeds"]
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

    ckpt = tmp_path / "sac.safetensors"
    args = ["--model", "tinyworld-tiny", "--schedule", "2x3", "--train-episodes", "2", "-q"]
    assert main(["train", "--agent", "sac", "--checkpoint", str(ckpt), *args, "--out", str(tmp_path)]) == 0
    env = LifelongEditEnv("tinyworld-tiny", num_batches=2, batch_size=3)
    agent = SB3Agent.load(ckpt, env)
    assert type(agent.model).__name__ == "SAC" and agent.config.algorithm == "SAC"


def _one_line_error(capsys, argv) -> str:
    """Run the command line on bad input: exit code 2 and one line on stderr, never a traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def test_bad_command_line_input_is_one_clear_line_and_exit_code_2(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    bench = ["benchmark", *TINY, "--agents", "noedit", *out]
    unknown_keys = tmp_path / "unknown.json"
    unknown_keys.write_text(json.dumps({"agents": ["noedit"], "shedules": ["2x3"]}))
    wrong_type = tmp_path / "wrong-type.json"
    wrong_type.write_text(json.dumps({"agents": "noedit"}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"agents": ["noedit"]')
    cases = {
        "unknown model 'nosuchmodel'": ["benchmark", "--model", "nosuchmodel", "--agents", "noedit", *out],
        "unknown agent 'nosuchagent'": ["benchmark", *TINY, "--agents", "nosuchagent", *out],
        "dataset 'nosuchdataset' is neither a file": [*bench, "--dataset", "nosuchdataset"],
        "no/such/file.json": [*bench, "--dataset", "no/such/file.json"],
        "schedule '20x' is not of the form TxN": [
            "benchmark",
            "--schedule",
            "20x",
            "--agents",
            "noedit",
            *out,
        ],
        "schedule '0x10': T and n must be positive": ["benchmark", "--schedule", "0x10", *out],
        "schedule '20by10'": ["benchmark", "--schedule", "20by10", *out],
        "no checkpoint file": ["evaluate", *TINY, "--agent", "rledit", "--checkpoint", "missing.safetensors"],
        "unknown settings ['shedules']": ["benchmark", "--config", str(unknown_keys), *out],
        "setting 'agents' must be list[str], got 'noedit'": ["benchmark", "--config", str(wrong_type), *out],
        "broken.json: invalid JSON at line 1": ["benchmark", "--config", str(broken), *out],
        "no configuration 'nosuchconfig'": ["benchmark", "--config", "nosuchconfig", *out],
        "agent 'noedit' needs no training": ["train", *TINY, "--agent", "noedit", "--checkpoint", "x", *out],
        "seeds must be integers": ["benchmark", "--seeds", "0,one", *out],
        "invalid choice: 'float8'": ["benchmark", "--dtype", "float8", *out],
        "the following arguments are required: --agent": ["train", "--checkpoint", "x"],
    }
    for expected, argv in cases.items():
        line = _one_line_error(capsys, argv)
        assert expected in line, (argv, line)
        assert line.startswith("rledit"), line
    assert not (tmp_path / "out" / "results.csv").exists()


def test_convert_checkpoint_refuses_a_malicious_file_and_converts_an_old_one(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "agent": "NoEdit", "state": Malicious(marker)}, evil)
    line = _one_line_error(capsys, ["convert-checkpoint", str(evil), str(tmp_path / "new.safetensors")])
    assert "not convertible" in line and not marker.exists()
    line = _one_line_error(capsys, ["evaluate", *TINY, "--agent", "malmen", "--checkpoint", str(evil)])
    assert "old pickle-format checkpoint" in line and "rledit convert-checkpoint" in line
    assert not marker.exists()
    env = tiny_env(action_type=NoEdit.action_type)
    old, new = tmp_path / "noedit.pt", tmp_path / "noedit.safetensors"
    old_format_checkpoint(old, NoEdit(env), {})
    assert main(["convert-checkpoint", str(old), str(new)]) == 0
    assert f"converted {old} (NoEdit) to {new}" in capsys.readouterr().out
    assert isinstance(NoEdit.load(new, env), NoEdit)
    line = _one_line_error(capsys, ["evaluate", *TINY, "--agent", "malmen", "--checkpoint", str(new)])
    assert "is a NoEdit checkpoint, not MALMEN (--agent malmen)" in line


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
        "stableedit",
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
    assert final.loc["noedit", "spe_agree"] == 1.0 and final.loc["noedit", "eff"] == 0.0
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
    # `rledit report` makes them again from the folder's results, e.g. of an interrupted run
    again = tmp_path / "again"
    assert main(["report", str(tmp_path), "--out", str(again), "--title", "again"]) == 0
    summary = (again / "summary.md").read_text()
    assert summary.startswith("# again") and "Protocol:" in summary and "| rledit " in summary
    assert (again / "retention-2x3.png").exists() and (again / "training-curves.png").exists()
    assert main(["report", str(again / "nowhere")]) == 2


def test_version_is_the_package_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rledit {metadata.version('rledit-env')}"
    assert cli.package_version() == metadata.version("rledit-env")


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
    assert lifelong.agent_configs["finetune"] == demo.agent_configs["finetune"]  # written once, in the demo's
    assert lifelong.train_episodes["rledit"] == 50 and demo.train_episodes["rledit"] == 12
    assert "ppo" in lifelong.agent_configs and "ppo" not in demo.agent_configs
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b", "agents": ["noedit"]}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a", "agents": ["noedit"]}))
    with pytest.raises(ValueError, match="cycle"):
        BenchmarkConfig.from_file(tmp_path / "a.json")
    (tmp_path / "c.json").write_text(json.dumps({"extends": "nowhere", "agents": ["noedit"]}))
    with pytest.raises(ValueError, match="extends 'nowhere'"):
        BenchmarkConfig.from_file(tmp_path / "c.json")


def _assert_schedules_fit(config, num_train: int, num_eval: int) -> None:
    """Each schedule's T x n distinct evaluation edits exist in the evaluation split, and each trained
    agent's training sequence in the training split (rledit-published's is as long as the evaluation's
    by default), as do StableEdit's warm-up batches."""
    from experiments.harness import parse_schedule
    from experiments.registry import agent_settings, agent_spec

    for schedule in config.schedules:
        num_batches, batch_size = parse_schedule(schedule)
        assert num_batches * batch_size <= num_eval
        for agent in config.agents:
            spec = agent_spec(agent)
            fields = {f.name for f in dataclasses.fields(spec.load().Config)}
            if "warmup_batches" in fields:  # StableEdit's warm-up: batches of n training edits
                settings = agent_settings(agent, spec, config.agent_configs.get(agent, {}))
                assert spec.load().Config(**settings).warmup_batches * batch_size <= num_train, agent
            if not (spec.trainable and spec.train and "train_num_batches" in fields):
                continue  # trains on whole sequences (RLEdit, SB3), not on single batches (MALMEN, MEND)
            settings = agent_settings(agent, spec, config.agent_configs.get(agent, {}))
            train_batches = settings.get("train_num_batches") or num_batches
            train_size = settings.get("train_batch_size") or batch_size
            assert train_batches * train_size <= num_train, agent


@pytest.mark.parametrize(
    "name",
    [
        "smollm2-counterfact",
        "smollm2-counterfact-100x20",
        "smollm2-zsre",
        "smollm2-zsre-29x20",
        "smollm2-fever",
    ],
)
def test_shipped_dataset_configurations_have_the_edits_their_schedules_need(name, tmp_path):
    """The schedules and training sequences fit the splits (ZsRE's 998 usable records, split half and
    half, would leave 499 for 50 x 10)."""
    from experiments.harness import Benchmark, BenchmarkConfig

    config = BenchmarkConfig.from_file(CONFIG_DIR / f"{name}.json")
    splits = Benchmark(config, tmp_path)._dataset_splits()
    _assert_schedules_fit(config, len(splits["train"]), len(splits["eval"]))


@pytest.mark.parametrize(
    "name",
    [
        "tinyworld-large-100x20",
        "tinyworld-large-400x20",
        "tinyworld-large-100x20-horizon",
        "tinyworld-large-100x20-sb3",
    ],
)
def test_large_world_configurations_fit_its_splits(name):
    """The same for the paper's schedules on TinyWorld-large, from the world's records alone (its model
    takes over an hour to build): 8,000 evaluation edits for 400 x 20, and every whole-sequence trainer's
    sequence within the 2,280 training edits (rledit-published's default, the evaluation's 400 batches,
    would need 8,000)."""
    from experiments.harness import BenchmarkConfig
    from rledit_env.tinyworld.world import TinyWorld, TinyWorldConfig

    config = BenchmarkConfig.from_file(CONFIG_DIR / f"{name}.json")
    config.validate()
    world = TinyWorld(TinyWorldConfig.named(config.model.removeprefix("tinyworld-")))
    if name.endswith("-horizon"):  # RLEdit alone, trained on sequences as long as the evaluation's
        assert config.agents == ["rledit"] and config.agent_configs["rledit"]["train_num_batches"] == 100
    elif name.endswith("-sb3"):
        assert config.agents == ["ppo", "sac"]
    else:
        assert set(config.agents) >= {"rledit", "rledit-published", "rledit-untrained", "malmen", "mend",
                                      "finetune", "noedit", "memit", "alphaedit", "ultraedit"}  # fmt: skip
    _assert_schedules_fit(config, len(world.edit_records("train")), len(world.edit_records("eval")))


def test_train_episodes_flag_leaves_the_published_procedures_one_sequence():
    from experiments import cli

    args = cli.build_parser().parse_args(
        ["benchmark", "--agents", "rledit,rledit-published,mend", "--train-episodes", "7"]
    )
    config = cli.resolve_config(args, None)
    assert config.train_episodes == {"rledit": 7, "mend": 7}  # rledit-published keeps its 1


def test_quiet_shows_no_progress_bar_not_even_the_key_statistics(tmp_path, monkeypatch, capfd):
    from rledit_env.cache import cache_root

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tinyworld").symlink_to(cache_root() / "tinyworld")  # the built models; no statistics yet
    monkeypatch.setenv("RLEDIT_CACHE", str(cache))
    try:
        assert main(["benchmark", *TINY, "--agents", "memit", "--out", str(tmp_path / "out")]) == 0
    finally:
        os.environ.pop("TQDM_DISABLE", None)  # -q sets it for the rest of its process
    assert any((cache / "stats").rglob("*.pt"))  # the statistics were computed here, under -q
    err = capfd.readouterr().err
    assert "key statistics" not in err and "it/s" not in err
