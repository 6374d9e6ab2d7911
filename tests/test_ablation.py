"""experiments/ablation.py: an agent's settings taken away or added one row at a time, on a base config."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from experiments.ablation import AGENTS, VARIANTS, ablation, base_config, main


@pytest.mark.parametrize("which", sorted(VARIANTS))
def test_every_row_is_a_valid_benchmark_of_its_agent(which):
    base = base_config("tinyworld-large-100x20", None, None)
    for settings in VARIANTS[which].values():
        agent = AGENTS[which]
        merged = {**base.agent_configs.get(agent, {}), **settings}
        dataclasses.replace(base, agents=[agent], agent_configs={agent: merged}).validate()


def test_a_named_base_keeps_its_model_and_settings_and_takes_the_overrides():
    base = base_config("tinyworld-large-100x20", "10x5", 3)
    assert (base.model, base.schedules) == ("tinyworld-large", ["10x5"])
    assert base.train_episodes["rledit"] == 3 and base.train_episodes["mend"] == 100
    assert base.agent_configs["rledit"]["validate_every"] == 4
    default = base_config(None, None, None)
    assert (default.model, default.schedules) == ("tinyworld", ["40x10"])
    assert default.train_episodes == {"rledit": 24}


def test_chosen_stableedit_rows_run_their_settings_and_are_tabled(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model": "tinyworld-tiny", "schedules": ["2x4"], "agents": ["noedit"]}))
    table = ablation("stableedit", base_config(str(path), None, None), tmp_path, [0], only=[0, 2])
    names = list(VARIANTS["stableedit"])
    assert list(table["variant"]) == [names[0], names[2]]
    assert (table["ms_per_edit"] > 0).all()
    assert all(s.startswith("lr=") for s in table["auto_settings"])  # tinyworld-tiny: the tuned lr
    # whitening changes the update: the rows with and without it differ
    assert table.loc[0, "eff_acc"] != table.loc[1, "eff_acc"] or table.loc[0, "ppl"] != table.loc[1, "ppl"]
    saved = pd.read_csv(tmp_path / "stableedit-rows-0-2.csv")
    assert list(saved["variant"]) == list(table["variant"])
    assert not (tmp_path / "stableedit-1").exists()
    runs = pd.read_csv(tmp_path / "stableedit-2" / "results.csv")
    assert set(runs["agent"]) == {"stableedit"}


def test_the_command_line_takes_rows_and_names_a_bad_one(tmp_path, capsys):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model": "tinyworld-tiny", "schedules": ["1x2"], "agents": ["noedit"]}))
    assert main(["stableedit", "--config", str(path), "--rows", "3", "--out", str(tmp_path)]) == 0
    assert list(pd.read_csv(tmp_path / "stableedit-rows-3.csv")["variant"]) == ["neither"]
    with pytest.raises(SystemExit):
        main(["stableedit", "--config", str(path), "--rows", "one", "--out", str(tmp_path)])
    assert "rows must be numbers separated by commas, got 'one'" in capsys.readouterr().err


def test_an_unknown_configuration_is_named_with_the_shipped_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stableedit", "--config", "no-such-config"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no configuration 'no-such-config'" in err and "demo-tinyworld" in err
