"""Training and evaluation curves as TensorBoard event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import sys

import pytest
from single_thread import one_torch_thread  # noqa: F401  (autouse)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.cli import main
from experiments.harness import Benchmark, BenchmarkConfig
from experiments.tracking import Tracking

SMALL_NET = {"rank": 16, "num_blocks": 1, "train_num_batches": 2}
GROUP = "tinyworld-tiny-tinyworld-tiny-own"


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_benchmark_writes_training_and_evaluation_curves(tmp_path):
    config = BenchmarkConfig(
        model="tinyworld-tiny",
        schedules=["2x3"],
        metrics_every=1,
        agents=["rledit", "ppo", "noedit"],
        train_episodes={"rledit": 3, "ppo": 4},
        agent_configs={
            "rledit": SMALL_NET,
            "ppo": {"algorithm_kwargs": {"n_steps": 4, "batch_size": 4}, "train_num_batches": 2},
        },
    )
    board = tmp_path / "tb"
    results = Benchmark(
        config, tmp_path / "out", progress=False, tracking=Tracking(tensorboard=str(board))
    ).run()

    rledit = _scalars(board / GROUP / "rledit-2x3-seed0")
    for term in ("loss", "gen", "loc", "backtrack", "reg", "grad_norm", "lr"):
        assert [step for step, _ in rledit[f"train/{term}"]] == [0, 1, 2], term
    log = results[results["agent"] == "rledit"]
    assert [step for step, _ in rledit["eval/eff"]] == list(log["edits"])
    assert [value for _, value in rledit["eval/eff"]] == pytest.approx(list(log["eff"]))
    assert [step for step, _ in rledit["eval/spe"]] == [3, 6]

    ppo = _scalars(board / GROUP / "ppo-2x3-seed0")
    assert len(ppo["train/return"]) == 4 and len(ppo["eval/gen"]) == 2  # our callback, per episode
    sb3 = _scalars(next((board / GROUP / "ppo-2x3-seed0" / "sb3").iterdir()))  # SB3's own logger
    assert "rollout/ep_rew_mean" in sb3 and "train/value_loss" in sb3 and "edit/eff" in sb3

    noedit = _scalars(board / GROUP / "noedit-2x3-seed0")
    assert not any(tag.startswith("train/") for tag in noedit) and len(noedit["eval/eff"]) == 2


def test_train_command_writes_the_training_curve(tmp_path):
    board = tmp_path / "tb"
    args = ["--model", "tinyworld-tiny", "--schedule", "2x3", "--train-episodes", "3", "-q"]
    ckpt = tmp_path / "mend.pt"
    assert (
        main(["train", "--agent", "mend", "--checkpoint", str(ckpt), *args, "--tensorboard", str(board)]) == 0
    )
    curves = _scalars(board / GROUP / "mend-2x3-seed0")
    assert len(curves["train/loss"]) == 3 and len(curves["train/lr"]) == 3


def test_wandb_is_optional_and_its_absence_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import raises ImportError
    args = ["--model", "tinyworld-tiny", "--schedule", "2x3", "--agents", "noedit", "-q"]
    assert main(["benchmark", *args, "--out", str(tmp_path), "--wandb", "my-project"]) == 2
    assert "--wandb needs the wandb package" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()
