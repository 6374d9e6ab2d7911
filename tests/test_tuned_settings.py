"""Settings that fit the model: an agent bound to a known model edits it with no configuration, an
unknown model gets its step size calibrated (and cached), explicit values win, and a run that did not
edit is flagged, never shown as a plain result."""

from __future__ import annotations

import dataclasses
import json
import logging

import pandas as pd
import pytest
from helpers import TINY_MODELS, _loaded, save_random_llama, tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from agents import RLEdit, RLEditConfig, UltraEdit, UltraEditConfig, run_episode
from agents import auto_settings as auto
from agents.auto_settings import AUTO, choose, resolve_settings
from experiments import cli
from experiments.harness import Benchmark, BenchmarkConfig
from experiments.registry import AGENTS, build_agent
from experiments.report import did_not_edit
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import LoadedModel
from rledit_env.tuned_settings import TUNED_SETTINGS, known_model, tuned_settings

EDITORS = ["rledit-untrained", "ultraedit", "memit", "alphaedit"]


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Calibrations and key statistics cached in a folder of this test's own."""
    monkeypatch.setenv("RLEDIT_CACHE", str(tmp_path / "cache"))


def _eff(env, agent) -> float:
    return float(run_episode(env, agent, seed=0)["metrics"]["eff"])


def test_agents_made_with_no_config_edit_a_known_model():
    from agents import NoEdit

    unedited = _eff(env := tiny_env(num_batches=10, batch_size=8, action_type="shift"), NoEdit(env))
    env = tiny_env(num_batches=10, batch_size=8)
    rledit = RLEdit(env)
    assert rledit.config.init_lr == TUNED_SETTINGS["tinyworld-tiny"]["rledit"]["init_lr"]
    assert rledit.settings_sources == {
        "init_lr": "tuned for tinyworld-tiny",
        "meta_lr": "tuned for tinyworld-tiny",
        "step_meta_lr": "published (not calibrated)",  # None: the network's meta lr, one Adam group rate
    }
    assert _eff(env, rledit) >= unedited + 0.3
    # UltraEdit's tuned lr is for its own modules (down_proj); on the default env's it is calibrated
    ultra = UltraEdit(env)
    assert ultra.settings_sources["lr"].startswith("calibrated on tinyworld-tiny's train split")
    assert _eff(env, ultra) >= unedited + 0.3


def test_explicit_values_win_over_the_table():
    env = tiny_env()
    agent = RLEdit(env, RLEditConfig(init_lr=1e-5, rank=8, num_blocks=1))
    assert agent.config.init_lr == 1e-5 and agent.config.meta_lr == 1e-4  # meta_lr still from the table
    assert set(agent.settings_sources) == {"meta_lr", "step_meta_lr"}
    built = build_agent("rledit", env, {"meta_lr": 2e-4, "rank": 8, "num_blocks": 1})
    assert (built.config.init_lr, built.config.meta_lr) == (3e-3, 2e-4)


def test_registry_names_come_before_the_class_name():
    published_settings = {"init_lr": 3e-4, "meta_lr": 1e-5, "step_meta_lr": 3e-3}
    assert tuned_settings("tinyworld", ("rledit-published", "rledit")) == pytest.approx(published_settings)
    env = tiny_env()
    published = build_agent("rledit-published", env, {"rank": 8, "num_blocks": 1})
    assert (published.config.meta_lr, published.config.step_meta_lr) == (1e-5, 3e-3)
    assert known_model("meta-llama/Meta-Llama-3-8B-Instruct") == "llama3-8b"  # paper configs name hub ids
    assert tuned_settings("llama3-8b", ("rledit",)) == {"init_lr": 1e-6, "meta_lr": 1e-5}
    assert known_model("/some/local/dir") is None


def test_the_shipped_configurations_resolve_to_the_settings_they_held():
    """The demo's table is unchanged: each agent gets from the model table what its configuration
    held before the table existed."""
    held = {
        "rledit": {"init_lr": 3e-3, "meta_lr": 1e-4},
        "rledit-untrained": {"init_lr": 3e-3, "meta_lr": 1e-4},
        "malmen": {"init_lr": 3e-3, "meta_lr": 1e-4},
        "mend": {"init_lr": 3e-3, "meta_lr": 1e-4},
        "finetune": {"lr": 3e-3, "steps": 10},
        "memit": {"lookup": "last", "z_lr": 0.5, "num_prefixes": 0, "mom2_weight": 10.0},
        "alphaedit": {
            "lookup": "last",
            "z_lr": 0.5,
            "num_prefixes": 0,
            "nullspace_threshold": 0.02,
            "l2": 0.1,
        },
        "ultraedit": {"lr": 1.5e-3},
    }
    config = BenchmarkConfig.from_file(cli.CONFIG_DIR / "demo-tinyworld.json")
    bench = Benchmark(dataclasses.replace(config, model="tinyworld-tiny"), "unused", progress=False)
    for name, expected in held.items():
        spec = AGENTS[name]
        env = bench.make_env(spec, 2, 4)
        cls = spec.load()
        settings = {**config.agent_configs.get(name, {}), **({"rank": 8} if spec.trainable else {})}
        resolved = resolve_settings(cls, cls.Config(**settings), env, (name,)).config
        assert {k: getattr(resolved, k) for k in expected} == expected, name
        env.close()


@pytest.fixture
def unknown_model(tmp_path):
    """A random-weight tiny Llama saved to a local directory, and a small record file: a model that
    the settings table does not know."""
    path = save_random_llama(tmp_path / "my-llama")
    records = _loaded("tinyworld-tiny").splits["train"][:60]
    return path, records


def _unknown_env(path, records) -> LifelongEditEnv:
    from rledit_env.editable import EditableModel

    editable = EditableModel.from_pretrained(str(path))
    loaded = LoadedModel(editable, {"train": records[:50], "eval": records[50:]}, ["a short text"] * 4)
    return LifelongEditEnv(loaded, num_batches=2, batch_size=5)


def test_an_unknown_model_is_calibrated_at_first_use_and_the_choice_is_cached(
    unknown_model, monkeypatch, caplog
):
    path, records = unknown_model
    env = _unknown_env(path, records)
    assert known_model(env.unwrapped.model_name) is None
    with caplog.at_level(logging.INFO, logger="rledit"):
        logging.getLogger("rledit").propagate = True  # let caplog see the library's own handler's records
        first = UltraEdit(env)
    logging.getLogger("rledit").propagate = False
    assert first.settings_sources["lr"] == f"calibrated on {path}'s train split"
    assert first.config.lr in UltraEditConfig.AUTO_SETTINGS["lr"].grid
    assert any("calibrated on" in r.getMessage() and "lr=" in r.getMessage() for r in caplog.records)
    cached = list((auto.cache_root() / "calibration").glob("*.json"))
    assert len(cached) == 1
    saved = json.loads(cached[0].read_text())
    assert saved["value"] == first.config.lr and len(saved["table"]) == 6

    def no_runs(*args, **kwargs):
        raise AssertionError("the second use must reuse the cached calibration")

    monkeypatch.setattr(auto, "_final_metrics", no_runs)
    second = UltraEdit(_unknown_env(path, records))
    assert second.config.lr == first.config.lr
    assert second.settings_sources["lr"].endswith("(cached)")
    # a pinned value needs no calibration, and other agents' settings are their own
    assert UltraEdit(env, UltraEditConfig(lr=1e-4)).settings_sources == {}


def test_an_unknown_model_without_a_train_split_says_how_to_give_one(unknown_model):
    from rledit_env.editable import EditableModel

    path, records = unknown_model
    env = LifelongEditEnv(
        LoadedModel(EditableModel.from_pretrained(str(path))), records, num_batches=1, batch_size=2
    )
    with pytest.raises(ValueError, match=r"train_dataset.*or pin the value \(UltraEditConfig\(lr=\.\.\.\)\)"):
        UltraEdit(env)
    assert UltraEdit(env, UltraEditConfig(lr=1e-3)).config.lr == 1e-3


def test_the_selection_rule():
    rows = [
        {"lr": 1, "score": 0.2, "ppl": 4.0},
        {"lr": 2, "score": 0.5, "ppl": 5.9},
        {"lr": 3, "score": 0.9, "ppl": 6.1},  # the best score, but over the perplexity bound
    ]
    assert choose(rows, "lr", unedited_ppl=4.0) == 2
    assert choose(rows, "lr", unedited_ppl=1.0) == 1  # none within the bound: the lowest perplexity
    assert choose(rows, "lr", unedited_ppl=10.0) == 3


def test_bad_values_name_the_setting():
    with pytest.raises(ValueError, match="lr must be a finite number > 0 or 'auto', got 'fast'"):
        UltraEditConfig(lr="fast")
    with pytest.raises(ValueError, match="init_lr"):
        RLEditConfig(init_lr=-1.0)
    assert RLEditConfig().init_lr == AUTO


@pytest.mark.parametrize("model", TINY_MODELS)  # the Llama and the GPT-2 tiny world
def test_the_command_line_with_no_configuration_edits_and_flags_what_did_not(model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["benchmark", "--model", model, "--agents", ",".join([*EDITORS, "noedit"])]
    assert cli.main([*argv, "--schedule", "10x8", "--out", str(out), "-q"]) == 0
    final = pd.read_csv(out / "results.csv").query("final")
    eff = final.set_index("agent")["eff"]
    for agent in EDITORS:
        assert eff[agent] >= eff["noedit"] + 0.3, agent
    settings = json.loads(final.set_index("agent").loc["memit", "auto_settings"])
    assert settings["mom2_weight"] == [10.0, f"tuned for {model}"]
    recorded = json.loads((out / "run.json").read_text())["agent_settings"]
    assert recorded["memit"] == settings and "noedit" not in recorded  # no-edit has nothing to fill
    assert "Warning" not in (out / "summary.md").read_text()
    assert did_not_edit(final) == []

    # an editor pinned at a step size that does nothing is flagged, on the console and in summary.md
    small = tmp_path / "small.json"
    small.write_text(
        json.dumps(
            {"model": "tinyworld-tiny", "agents": ["ultraedit"], "schedules": ["4x4"],
             "agent_configs": {"ultraedit": {"lr": 1e-9}}}
        )
    )  # fmt: skip
    assert cli.main(["benchmark", "--config", str(small), "--out", str(tmp_path / "small"), "-q"]) == 0
    assert "ultraedit 4x4 did not edit" in capsys.readouterr().err
    assert "**Warning:** ultraedit 4x4 did not edit" in (tmp_path / "small" / "summary.md").read_text()


def test_rledit_tune_prints_the_sweep_and_reuses_it(tmp_path, capsys):
    argv = ["tune", "--model", "tinyworld-tiny", "--agent", "ultraedit", "--values", "3e-4,3e-3", "-q"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    # 3e-3 edits more but takes perplexity past 1.5x the unedited model's: the rule keeps 3e-4
    rows = [line.split("|")[1].strip() for line in first.splitlines() if line.startswith("| 0.")]
    assert rows == ["0.0003", "0.003"] and "chosen: lr = 0.0003 (computed" in first
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    assert "(cached" in capsys.readouterr().out
    assert cli.main(["tune", "--model", "tinyworld-tiny", "--agent", "noedit", "-q"]) == 2


@pytest.mark.slow
def test_with_no_configuration_every_editor_edits_the_default_world(tmp_path):
    out = tmp_path / "run"
    editors = [*EDITORS, "stableedit"]  # (its 20 warm-up batches need more than tinyworld-tiny's records)
    argv = ["benchmark", "--model", "tinyworld", "--agents", ",".join([*editors, "noedit"]), "-q"]
    assert cli.main([*argv, "--schedule", "10x10", "--out", str(out)]) == 0
    eff = pd.read_csv(out / "results.csv").query("final").set_index("agent")["eff"]
    for agent in editors:
        assert eff[agent] >= eff["noedit"] + 0.3, agent


@pytest.mark.slow
def test_values_interface_editors_edit_smollm2_with_no_configuration(tmp_path):
    pytest.importorskip("gguf")
    out = tmp_path / "run"
    argv = ["benchmark", "--model", "smollm2", "--dataset", "counterfact-edit-1k", "--general-probe", "off"]
    argv += ["--train-dataset", "counterfact-train", "--agents", "rledit-untrained,ultraedit,noedit"]
    assert cli.main([*argv, "--schedule", "10x10", "--out", str(out), "-q"]) == 0
    eff = pd.read_csv(out / "results.csv").query("final").set_index("agent")["eff"]
    for agent in ("rledit-untrained", "ultraedit"):
        assert eff[agent] >= eff["noedit"] + 0.3, agent
