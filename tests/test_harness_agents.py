"""The harness with every kind of agent: trained, ablated, stable-baselines3, closed-form and a user's own
(``"module:Class"``), on the same edits of the tiny TinyWorld."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from experiments.harness import Benchmark, BenchmarkConfig
from experiments.registry import agent_spec, build_agent

SMALL_NET = {"rank": 16, "num_blocks": 1, "train_num_batches": 2}


def _run(tmp_path, agents, **settings) -> pd.DataFrame:
    config = BenchmarkConfig(
        model="tinyworld-tiny", schedules=["2x3"], agents=agents, metrics_every=1, **settings
    )
    results = Benchmark(config, tmp_path, progress=False).run()
    return results[results["final"]].set_index("agent")


def test_trained_agents_train_once_and_every_agent_edits_the_same_sequence(tmp_path):
    final = _run(
        tmp_path,
        ["rledit", "rledit-untrained", "noedit"],
        train_episodes={"rledit": 2},
        agent_configs={"rledit": SMALL_NET, "rledit-untrained": SMALL_NET},
    )
    assert (final["edits"] == 6).all() and (final["time_per_edit_s"] > 0).all()
    assert final.loc["rledit", "train_time_s"] > 0 and final.loc["rledit-untrained", "train_time_s"] == 0
    parts = final["edit_time_s"] + final["train_time_s"]
    assert (final["wall_time_s"] > parts).all()  # the whole run, its evaluations included
    log = pd.read_csv(tmp_path / "training-rledit-2x3-seed0.csv")
    assert len(log) == 2 and "loss" in log.columns
    assert (tmp_path / "checkpoints" / "rledit-2x3-seed0.safetensors").exists()
    assert not (tmp_path / "checkpoints" / "rledit-untrained-2x3-seed0.safetensors").exists()
    assert final.loc["noedit", "spe_agree"] == 1.0  # the unedited model agrees with itself


def test_rledit_published_trains_one_sequence_of_the_evaluations_length_with_one_step(tmp_path):
    final = _run(
        tmp_path, ["rledit-published"], agent_configs={"rledit-published": {"rank": 16, "num_blocks": 1}}
    )
    assert final.loc["rledit-published", "train_time_s"] > 0
    log = pd.read_csv(tmp_path / "training-rledit-published-2x3-seed0.csv")
    assert len(log) == 1  # one sequence, one optimiser step
    lrs = [c for c in log.columns if c.startswith("lr/")]  # each module's learned step size
    assert lrs == ["lr/model.layers.0.mlp.gate_proj", "lr/model.layers.0.mlp.up_proj"]
    assert "update_sq_norm" in log.columns
    spec = agent_spec("rledit-published")
    assert (
        spec.fixed_training
        and spec.defaults["clip_every_step"]
        and spec.defaults["reward"]
        == {
            "paraphrases_per_edit": 1,
            "neighbours_per_edit": 1,
            "gen_edit_prompts": False,
            "reg_gradient": False,
        }
    )


def test_the_published_step_moves_the_network_as_the_reference_does():
    """The public code's single Adam step (meta lr 1e-5, lr from 1e-6) moves each network weight by
    about 1e-5 and the step sizes by at most about 10x their initial value: so does ours, at the model's
    scale (rledit_env.tuned_settings._published_rledit)."""
    env = tiny_env(num_batches=3, batch_size=3, obs_backend="torch")
    agent = build_agent("rledit-published", env, {"rank": 16, "num_blocks": 2}, progress=False)
    init_lr, blocks = agent.config.init_lr, agent.config.meta_lr
    assert blocks == 1e-5 and agent.config.step_meta_lr == pytest.approx(10 * init_lr)
    before = {k: v.detach().clone() for k, v in agent.net.named_parameters()}
    agent.learn(progress_bar=False)
    after = dict(agent.net.named_parameters())
    for name, value in before.items():
        moved = float((after[name].detach() - value).abs().max())
        if name == "lr":
            assert 0 < moved <= 10 * init_lr * 1.001  # lr in [-9, 11] x its initial value
            assert float(after[name].abs().max()) <= 11 * init_lr * 1.001
        elif name != "log_lambda":
            assert moved <= blocks * 1.001, name
    assert any(
        float((after[n].detach() - v).abs().max()) > 0.5 * blocks for n, v in before.items() if n != "lr"
    )


def test_the_benchmarks_reward_reaches_rledits_training(tmp_path):
    # one owner for the reward: an env-level setting is what RLEdit trains on, unless its config says
    # otherwise. With backtrack_depth 1 the backtracking term is exactly 0 at every training step.
    settings = {"train_episodes": {"rledit": 1}, "agent_configs": {"rledit": SMALL_NET}}
    _run(tmp_path / "k1", ["rledit"], env={"reward": {"backtrack_depth": 1}}, **settings)
    _run(tmp_path / "default", ["rledit"], **settings)
    overridden = {"rledit": {**SMALL_NET, "reward": {"backtrack_depth": 1}}}
    _run(tmp_path / "own", ["rledit"], train_episodes={"rledit": 1}, agent_configs=overridden)
    backtrack = {
        run: float(pd.read_csv(tmp_path / run / "training-rledit-2x3-seed0.csv")["backtrack"].iloc[0])
        for run in ("k1", "default", "own")
    }
    assert backtrack["k1"] == 0.0 and backtrack["own"] == 0.0 and backtrack["default"] > 0.0


def test_a_users_agent_joins_by_module_and_class(tmp_path):
    spec = agent_spec("examples.cem_agent:CEMStepSizes")
    assert spec.trainable and spec.env_kwargs == {"action_type": "values"}
    final = _run(
        tmp_path,
        ["examples.cem_agent:CEMStepSizes", "noedit"],
        train_episodes={"examples.cem_agent:CEMStepSizes": 4},
        agent_configs={"examples.cem_agent:CEMStepSizes": {"population": 2, "elite": 1}},
    )
    assert final.loc["examples.cem_agent:CEMStepSizes", "train_time_s"] > 0
    assert final.loc["examples.cem_agent:CEMStepSizes", "eff"] > final.loc["noedit", "eff"]


def test_closed_form_agents_report_their_statistics_cost(tmp_path, monkeypatch):
    import agents.key_stats

    monkeypatch.setattr(agents.key_stats, "stats_cache_dir", lambda cache_dir=None: tmp_path / "stats")
    lookup = {"lookup": "last", "num_prefixes": 0, "z_steps": 5}
    final = _run(tmp_path / "out", ["memit"], agent_configs={"memit": lookup})
    assert final.loc["memit", "stats_time_s"] > 0 and not final.loc["memit", "stats_cached"]
    again = _run(tmp_path / "again", ["memit"], agent_configs={"memit": lookup})
    assert bool(again.loc["memit", "stats_cached"])  # computed once per model and corpus
    assert again.loc["memit", "eff"] == final.loc["memit", "eff"]


@pytest.mark.slow
def test_stable_baselines3_agents_train_and_edit_in_the_benchmark(tmp_path):
    budget = {"algorithm_kwargs": {"n_steps": 4, "batch_size": 4}, "train_num_batches": 2}
    final = _run(
        tmp_path,
        ["ppo", "sac"],
        train_episodes={"ppo": 4, "sac": 4},
        agent_configs={"ppo": budget, "sac": {"algorithm_kwargs": {"learning_starts": 2}}},
    )
    assert (final["train_time_s"] > 0).all() and (final["edits"] == 6).all()
    assert final[["eff", "gen", "spe"]].apply(lambda c: c.between(0, 1)).all().all()


def test_unknown_agents_and_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown agent 'rome'.*module:Class"):
        BenchmarkConfig(model="tinyworld-tiny", agents=["rome"]).validate()
    with pytest.raises(ValueError, match="cannot import"):
        BenchmarkConfig(model="tinyworld-tiny", agents=["nowhere.to_be:Found"]).validate()
    with pytest.raises(ValueError, match="not a subclass of agents.EditAgent"):
        BenchmarkConfig(model="tinyworld-tiny", agents=["pathlib:Path"]).validate()
    with pytest.raises(ValueError, match=r"FineTuneConfig has no settings \['lr_typo'\]"):
        BenchmarkConfig(agents=["finetune"], agent_configs={"finetune": {"lr_typo": 1.0}}).validate()
