"""experiments/sweep.py: one agent setting swept on a configuration's train split."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from experiments.harness import BenchmarkConfig
from experiments.sweep import main, sweep


def test_each_value_runs_on_the_train_split_and_is_scored(tmp_path, monkeypatch):
    config = BenchmarkConfig(model="tinyworld-tiny", schedules=["1x4"], agents=["noedit"], metrics_every=0)
    made = []
    import experiments.harness

    real = experiments.harness.LifelongEditEnv

    def spy(*args, **kwargs):  # records the split every environment is made on
        made.append(kwargs.get("split"))
        return real(*args, **kwargs)

    monkeypatch.setattr(experiments.harness, "LifelongEditEnv", spy)
    table = sweep(config, "ultraedit", "lr", [1e-5, 5e-4], tmp_path)
    assert made == ["train"] * 4  # each value's run and its unedited reference (the "did not edit" check)
    assert list(table["lr"]) == ["1e-05", "0.0005"]
    harmonic = 3 / (1 / table["eff"].clip(lower=1e-9) + 1 / table["gen"].clip(lower=1e-9) + 1 / table["spe"])
    assert table["score"].tolist() == pytest.approx(harmonic.tolist())
    assert table.loc[1, "eff"] > table.loc[0, "eff"]  # a larger step installs more of the edits
    for value in ("1e-05", "0.0005"):
        results = pd.read_csv(tmp_path / f"lr={value}" / "results.csv")
        assert set(results["agent"]) == {"ultraedit"}


def test_the_command_line_refuses_a_setting_the_agent_does_not_have(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model": "tinyworld-tiny", "schedules": ["1x2"], "agents": ["noedit"]}))
    with pytest.raises(ValueError, match="UltraEditConfig has no settings \\['step'\\]"):
        main(
            [
                "--config",
                str(path),
                "--agent",
                "ultraedit",
                "--setting",
                "step",
                "--values",
                "1",
                "--out",
                str(tmp_path),
            ]
        )


def test_the_command_line_names_an_unknown_configuration(capsys):
    args = ["--agent", "ultraedit", "--setting", "lr", "--values", "1"]
    with pytest.raises(SystemExit) as exit_:
        main(["--config", "no-such-config", *args])
    assert exit_.value.code == 2
    assert "no configuration 'no-such-config'" in capsys.readouterr().err
