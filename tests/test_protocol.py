"""The fair evaluation protocol: statistics corpus disjoint from what is scored, locality pools disjoint
between train and eval, Spe against ground truth, and the protocol line of every summary; and the
large TinyWorld's shape (its model is not built here: see docs/tinyworld-settings.md)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from transformers import LlamaConfig

from agents import MEMIT, NoEdit, run_episode
from agents.memit import MEMITConfig
from experiments.report import protocol_line, write_markdown
from rledit_env.editable import EditableModel
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import LoadedModel, load_model
from rledit_env.presets import MODEL_PRESETS, resolve_edit_modules
from rledit_env.tinyworld import TinyWorld, TinyWorldConfig
from tests.helpers import tiny_env


@pytest.fixture(scope="module")
def large_world() -> TinyWorld:
    return TinyWorld(TinyWorldConfig.large())


def test_published_worlds_keep_their_cache_keys():
    # The settings added since (split_neighbours, replay_fraction, bf16_steps, check_every, anneal_steps)
    # must not reach the hash at their defaults, or every cached default/tiny model would be rebuilt.
    keys = {
        name: TinyWorldConfig.named(name).key() for name in ("default", "tiny", "default-gpt2", "tiny-gpt2")
    }
    assert keys == {
        "default": "11d3931077e8",
        "tiny": "e6730436bf47",
        "default-gpt2": "feffbc2990d7",
        "tiny-gpt2": "a607ed449d31",
    }
    assert TinyWorldConfig.tiny().replace(split_neighbours=True).key() != keys["tiny"]
    assert TinyWorldConfig.tiny().replace(replay_fraction=0.5).key() != keys["tiny"]
    assert TinyWorldConfig.tiny().replace(bf16_steps=25).key() != keys["tiny"]
    assert TinyWorldConfig.tiny().replace(check_every=25).key() != keys["tiny"]
    assert TinyWorldConfig.tiny().replace(anneal_steps=100).key() != keys["tiny"]
    with pytest.raises(ValueError, match="anneal_steps"):
        TinyWorldConfig.tiny().replace(anneal_steps=-1)
    with pytest.raises(ValueError, match="multiple of eval_every"):
        TinyWorldConfig.tiny().replace(bf16_steps=30)  # phases change at the running-figure boundaries


def test_large_world_has_room_for_the_papers_schedules(large_world):
    config = large_world.config
    assert config.num_layers >= 8 and config.hidden_size >= 256 and config.intermediate_size >= 1024
    evals, train = large_world.edit_records("eval"), large_world.edit_records("train")
    assert len(evals) >= 8000 and len(train) >= 2000  # 400 x 20 to evaluate, 100 x 20 to train on
    assert len({(r.subject, r.extra["relation"]) for r in evals}) == len(evals)
    assert not {r.subject for r in evals} & {r.subject for r in train}
    assert all(len(r.paraphrase_prompts) == 2 and len(r.locality_prompts) == 4 for r in evals)


@pytest.mark.parametrize("name", ["tiny", "large"])
def test_locality_pools_and_statistics_corpus_are_disjoint_from_evaluation(name, large_world):
    world = large_world if name == "large" else TinyWorld(TinyWorldConfig.tiny())
    evals = world.edit_records("eval")
    eval_prompts = {p for r in evals for p in (r.prompt, *r.paraphrase_prompts, *r.locality_prompts)}
    probe, stats = world.general_texts("probe"), world.general_texts("stats")
    assert probe == world.general_texts()[: len(probe)] and len(probe) == 256
    assert stats and not set(stats) & set(probe)
    # a sentence is its prompt, a space and the answer: no statistics text states an evaluation prompt
    assert not {s.rsplit(" ", 1)[0] for s in stats} & eval_prompts
    if world.config.split_neighbours:  # train and eval records draw their neighbours from disjoint pools
        train_loc = {p for r in world.edit_records("train") for p in r.locality_prompts}
        assert not train_loc & {p for r in evals for p in r.locality_prompts}
        assert not set(world.neighbour_pools["train"]) & set(world.neighbour_pools["eval"])


def test_large_world_presets_edit_bands_of_layers():
    llama8 = LlamaConfig(num_hidden_layers=8, hidden_size=256, intermediate_size=1024)
    modules = resolve_edit_modules(llama8, MODEL_PRESETS["tinyworld-large"].edit_modules)
    assert modules == [f"model.layers.{i}.mlp.{p}" for i in (4, 5, 6) for p in ("gate_proj", "up_proj")]
    assert MEMIT.preferred_edit_modules(llama8) == [f"model.layers.{i}.mlp.down_proj" for i in (1, 2)]


def test_env_statistics_corpus_defaults_to_the_worlds_split_then_to_train_prompts():
    env = tiny_env()
    world = TinyWorld(TinyWorldConfig.tiny())
    assert env.stats_texts == world.general_texts("stats") and env.stats_source == "model's statistics split"
    loaded = load_model("tinyworld-tiny")
    without = LifelongEditEnv(LoadedModel(loaded.editable, loaded.splits, loaded.probe_texts), num_batches=2)
    train = loaded.splits["train"]
    assert without.stats_source == "train split's prompts"
    assert set(without.stats_texts) == {p for r in train for p in (r.prompt, *r.paraphrase_prompts)}
    assert tiny_env(stats_texts=["a b c"]).stats_texts == ["a b c"]


def test_memit_computes_its_statistics_over_the_env_corpus(tmp_path):
    loaded = load_model("tinyworld-tiny")
    model = loaded.editable.model
    editable = EditableModel(model, loaded.editable.tokenizer, MEMIT.preferred_edit_modules(model.config))
    env = LifelongEditEnv(
        LoadedModel(editable, loaded.splits, loaded.probe_texts, loaded.stats_texts),
        action_type="shift",
        num_batches=2,
    )
    agent = MEMIT(env, MEMITConfig(num_prefixes=0, stats_max_texts=None), cache_dir=tmp_path, progress=False)
    assert agent.stats_num_texts == len(env.stats_texts) and agent.stats_source == env.stats_source
    assert not set(env.stats_texts) & set(env.probe_texts)
    with pytest.raises(ValueError, match="no corpus for the key statistics"):
        MEMIT(
            LifelongEditEnv(editable, loaded.splits["eval"], action_type="shift", num_batches=2),
            progress=False,
        )


def test_zsre_spe_is_scored_against_the_ground_truth_locality_answer():
    loaded = load_model("tinyworld-tiny")
    records = loaded.splits["eval"][:6]
    truth = [dataclasses.replace(r, family="zsre", target_true=None) for r in records]
    # a locality answer the world never uses (its tokens are never predicted)
    wrong_answers = [
        dataclasses.replace(r, locality_answers=("Qzx",) * len(r.locality_answers)) for r in truth
    ]
    scores = {}
    for name, recs in (("truth", truth), ("wrong", wrong_answers)):
        env = tiny_env(dataset=recs, num_batches=2, batch_size=3, action_type="shift", probe_texts=[])
        scores[name] = run_episode(env, NoEdit(env), seed=0)["metrics"]
        assert env.spe_reference == "token accuracy on the ground-truth locality answers"
    # the unedited model knows its world: right against the truth, wrong against the made-up answers,
    # and in agreement with itself either way
    assert scores["truth"]["spe"] == scores["truth"]["spe_acc"] > 0.9
    assert scores["wrong"]["spe"] == scores["wrong"]["spe_acc"] < 0.1
    assert scores["truth"]["spe_agree"] == scores["wrong"]["spe_agree"] == 1.0


def test_summary_states_the_protocol_in_one_line(tmp_path):
    run = {"model": "m", "dataset": "d", "schedule": "2x3", "seed": 0, "final": True, "eff": 0.5}
    spe = "token accuracy on the ground-truth locality answers"
    rows = pd.DataFrame(
        [
            {
                **run,
                "agent": a,
                "time_per_edit_s": 0.01,
                "spe_reference": spe,
                "stats_corpus": c,
                "stats_texts": n,
            }
            for a, c, n in (("memit", "train split's prompts", 120.0), ("noedit", None, None))
        ]
    )
    line = protocol_line(rows)
    assert "\n" not in line and "final evaluation over all edits" in line and "teacher-forced" in line
    assert "Spe reference: token accuracy on the ground-truth locality answers" in line
    assert "key statistics: train split's prompts (120 texts)" in line
    text = write_markdown(rows, tmp_path / "summary.md", "t")
    assert text.splitlines()[2] == line
    assert "key statistics: none in this run" in protocol_line(rows[rows["agent"] == "noedit"])
