"""RLEdit's training as the public code does it, and the settings that give the trained network every fair
chance: the reward's published variants (paraphrases only, a regulariser without gradient), the
locality reference, the normaliser per sequence, and validation on the train split."""

from __future__ import annotations

import pytest
import torch
from helpers import _loaded, gradient_action, tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from agents import RLEdit, RLEditConfig, run_episode
from rledit_env.episode import EncodedEdits
from rledit_env.reward import RewardConfig

SMALL = {"rank": 16, "num_blocks": 1}


def _records(n: int):
    return _loaded("tinyworld-tiny").splits["eval"][:n]


def test_the_published_generalisation_loss_scores_paraphrases_only():
    tok = _loaded("tinyworld-tiny").editable.tokenizer
    records = _records(3)
    both = EncodedEdits.build(tok, records, paraphrases=1)
    paraphrases = EncodedEdits.build(tok, records, paraphrases=1, edit_prompts=False)
    assert len(both.gen) == 6 and len(paraphrases.gen) == 3
    assert paraphrases.gen.edit_index.tolist() == [0, 1, 2]
    bare = [r.__class__(**{**r.__dict__, "paraphrase_prompts": ()}) for r in records[:1]]
    assert len(EncodedEdits.build(tok, bare, edit_prompts=False).gen) == 1  # keeps its edit prompt


def _loss_gradient(**reward) -> torch.Tensor:
    env = tiny_env(num_batches=2, batch_size=3, differentiable=True, obs_backend="torch", reward=reward)
    obs, _ = env.reset(seed=0)
    values = {m: torch.zeros_like(obs["value_grads"][m], requires_grad=True) for m in env.module_names}
    values = {m: v + 0.01 * obs["value_grads"][m] for m, v in values.items()}
    leaf = next(iter(values.values()))
    leaf.retain_grad()
    _, _, _, _, info = env.step({"values": values})
    info["loss"].backward()
    return leaf.grad.clone(), info["losses"]["reg"]


def test_a_regulariser_without_gradient_is_scored_but_steers_nothing():
    without_reg, _ = _loss_gradient(reg_coef=0.0)
    detached, reg = _loss_gradient(reg_coef=1e3, reg_gradient=False)
    attached, _ = _loss_gradient(reg_coef=1e3)
    assert reg > 0 and torch.allclose(detached, without_reg)
    assert not torch.allclose(attached, without_reg)


def test_the_locality_reference_is_the_previous_model_or_the_unedited_one():
    def loc_losses(reference: str) -> list[float]:
        env = tiny_env(num_batches=3, batch_size=3, action_type="shift", reward={"loc_reference": reference})
        obs, _ = env.reset(seed=0)
        losses = []
        for _ in range(3):
            obs, _, _, _, info = env.step(gradient_action(env, obs, lr=50.0))
            losses.append(info["losses"]["loc"])
        return losses

    previous, unedited = loc_losses("previous"), loc_losses("unedited")
    assert previous[0] == pytest.approx(unedited[0])  # the first step's reference is the unedited model
    assert unedited[2] > previous[2]  # against the original model, every earlier edit counts too
    with pytest.raises(ValueError, match="loc_reference"):
        RewardConfig(loc_reference="initial")


def test_a_fresh_normaliser_starts_every_sequence_empty_a_carried_one_accumulates():
    def counts(normaliser: str) -> list[float]:
        env = tiny_env(num_batches=2, batch_size=3)
        agent = RLEdit(env, RLEditConfig(**SMALL, normaliser=normaliser))
        norm = next(iter(agent.net.nets.values())).norm
        seen = []
        for _ in range(2):
            run_episode(env, agent, seed=0)
            seen.append(float(norm.count))
        return seen

    fresh, carried = counts("fresh"), counts("carry")
    assert fresh[0] == fresh[1] == carried[0] and carried[1] == 2 * carried[0]


def test_validation_keeps_the_best_network_the_untrained_one_a_candidate():
    env = tiny_env(num_batches=2, batch_size=3)
    agent = RLEdit(env, RLEditConfig(**SMALL, validate_every=1, train_num_batches=2))
    agent.learn(3, progress_bar=False)
    log = agent.training_log
    assert all("valid_score" in row and "valid_ppl" in row for row in log)
    assert agent.validated_episode in (0, 1, 2, 3)
    validations = agent.validation_log  # the untrained network's validation first, then one per episode
    assert [row["episodes_trained"] for row in validations] == [0, 1, 2, 3]
    assert [row["kept"] for row in validations] == [
        row["episodes_trained"] == agent.validated_episode for row in validations
    ]
    assert [row["valid_score"] for row in validations[1:]] == [row["valid_score"] for row in log]
    with pytest.raises(ValueError, match="validate_every"):
        RLEditConfig(validate_every=0)


def test_the_benchmark_writes_the_validations_beside_the_training_log(tmp_path):
    import pandas as pd

    from experiments.harness import Benchmark, BenchmarkConfig

    config = BenchmarkConfig(
        model="tinyworld-tiny",
        schedules=["2x3"],
        agents=["rledit"],
        train_episodes={"rledit": 2},
        agent_configs={"rledit": {**SMALL, "validate_every": 1, "train_num_batches": 2}},
    )
    Benchmark(config, tmp_path, progress=False).run()
    training = pd.read_csv(tmp_path / "training-rledit-2x3-seed0.csv")
    validation = pd.read_csv(tmp_path / "validation-rledit-2x3-seed0.csv")
    assert validation["episodes_trained"].tolist() == [0, 1, 2] and validation["kept"].sum() == 1
    assert validation["valid_score"].tolist()[1:] == training["valid_score"].tolist()
