"""TinyWorld: the synthetic world, its edit records, and the small models pretrained on it."""

from __future__ import annotations

import pytest
import torch

from rledit_env.records import EditRecord
from rledit_env.tinyworld import (
    TinyWorld,
    TinyWorldConfig,
    build_tokenizer,
    fact_accuracy,
    load_tinyworld,
    tinyworld_model_dir,
)
from rledit_env.tinyworld import build as tw_build
from rledit_env.tokenization import IGNORE_INDEX, encode_one


@pytest.fixture(scope="module")
def tiny_world() -> TinyWorld:
    return TinyWorld(TinyWorldConfig.tiny())


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("rledit_cache"))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_model(request, cache_root):
    return load_tinyworld(f"tiny-{request.param}", cache_dir=cache_root, progress=False)


def _prompts(world: TinyWorld, subject: str, relation: str) -> list[str]:
    return [t.format(subject) for t in world.templates[relation]]


def _template_index(world: TinyWorld, record: EditRecord, prompt: str) -> int:
    prompts = _prompts(world, record.subject, record.extra["relation"])
    assert prompts.count(prompt) == 1, prompt
    return prompts.index(prompt)


def test_world_is_deterministic():
    a, b = TinyWorld(TinyWorldConfig.tiny()), TinyWorld(TinyWorldConfig.tiny())
    assert a.entities == b.entities and a.facts == b.facts and a.values == b.values
    for split in ("train", "eval"):
        assert a.edit_records(split) == b.edit_records(split)
    assert a.general_texts() == b.general_texts()
    assert TinyWorld(TinyWorldConfig.tiny().replace(seed=1)).facts != a.facts


def test_world_shape(tiny_world):
    world = tiny_world
    assert len(world.relations) >= 8
    assert len(set(world.entities)) == len(world.entities) == world.config.num_entities
    for relation in world.relations:
        templates = world.templates[relation]
        assert len(templates) >= 4 and len(set(templates)) == len(templates)
        for template in templates:
            assert template.count("{}") == 1 and template == template.strip()
    assert len(world.facts) == len(world.entities) * len(world.relations)
    for fact in world.facts:
        assert fact.object in world.values[fact.relation]
        assert world.truth[fact.subject, fact.relation] == fact.object
    texts = world.general_texts()
    assert len(texts) == sum(len(world.templates[f.relation]) for f in world.facts)
    assert texts[0] == f"{world.prompt(*world.facts[0][:2], 0)} {world.facts[0].object}"


def test_splits_are_disjoint(tiny_world):
    train, eval_ = tiny_world.edit_records("train"), tiny_world.edit_records("eval")
    assert train and eval_
    train_subjects, eval_subjects = {r.subject for r in train}, {r.subject for r in eval_}
    assert not train_subjects & eval_subjects
    assert not {(r.subject, r.extra["relation"]) for r in train} & {
        (r.subject, r.extra["relation"]) for r in eval_
    }
    # Neighbourhood prompts are about subjects that no split edits, so their answers stay true.
    neighbours = set(tiny_world.split_subjects["neighbour"])
    assert not neighbours & (train_subjects | eval_subjects)
    with pytest.raises(ValueError):
        tiny_world.edit_records("test")


@pytest.mark.parametrize("split", ["train", "eval"])
def test_records_are_well_formed(tiny_world, split):
    world = tiny_world
    for record in world.edit_records(split):
        relation = record.extra["relation"]
        assert record.family == "counterfact"
        assert record.subject in record.prompt
        assert record.target_true == world.truth[record.subject, relation]
        assert record.target_new != record.target_true and record.target_new in world.values[relation]
        main = _template_index(world, record, record.prompt)
        paraphrases = [_template_index(world, record, p) for p in record.paraphrase_prompts]
        assert (
            2 <= len(paraphrases) <= 4
            and main not in paraphrases
            and len(set(paraphrases)) == len(paraphrases)
        )
        assert 3 <= len(record.locality_prompts) <= 5
        for prompt, answer in zip(record.locality_prompts, record.locality_answers, strict=True):
            subject = next(
                n for n in world.split_subjects["neighbour"] if prompt in _prompts(world, n, relation)
            )
            assert subject != record.subject and answer == world.truth[subject, relation]


def test_neighbourhood_prefers_same_true_answer():
    world = TinyWorld(TinyWorldConfig.default())
    records = world.edit_records("eval")
    shared = sum(a == r.target_true for r in records for a in r.locality_answers)
    assert shared / sum(len(r.locality_answers) for r in records) > 0.5


def test_default_world_size():
    world = TinyWorld(TinyWorldConfig.default())
    assert len(world.relations) >= 8 and len(world.entities) >= 150
    assert len(world.edit_records("eval")) >= 200 and len(world.edit_records("train")) >= 400


def test_config_names_and_keys():
    default, tiny = TinyWorldConfig.default(), TinyWorldConfig.tiny()
    assert TinyWorldConfig.named("default") == default and TinyWorldConfig.named("tiny") == tiny
    assert TinyWorldConfig.named("tiny-gpt2") == tiny.replace(arch="gpt2")
    assert TinyWorldConfig.named("large") == TinyWorldConfig.large()
    assert tiny.key() == TinyWorldConfig.tiny().key()
    assert len({default.key(), tiny.key(), tiny.replace(arch="gpt2").key(), tiny.replace(seed=3).key()}) == 4
    with pytest.raises(ValueError):
        TinyWorldConfig.named("huge")
    with pytest.raises(ValueError):
        TinyWorldConfig(arch="bert")


@pytest.mark.parametrize("kind", ["bpe", "metaspace"])
def test_encode_one_labels_decode_to_answer(kind):
    world = TinyWorld(TinyWorldConfig.tiny().replace(tokenizer=kind))
    tokenizer = build_tokenizer(world)
    assert tokenizer.is_fast and None not in (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    pairs = [(r.prompt, a) for r in world.edit_records("eval") for a in (r.target_new, r.target_true)]
    pairs += [
        (p, a)
        for r in world.edit_records("train")
        for p, a in zip(r.locality_prompts, r.locality_answers, strict=True)
    ]
    for prompt, answer in pairs:
        ids, labels = encode_one(tokenizer, prompt, answer)
        assert ids[0] == tokenizer.bos_token_id
        answer_ids = [label for label in labels if label != IGNORE_INDEX]
        assert labels[-len(answer_ids) :] == ids[-len(answer_ids) :]
        assert tokenizer.decode(answer_ids).strip() == answer
        assert tokenizer.decode(ids, skip_special_tokens=True) == f"{prompt} {answer}"


def test_tiny_model_knows_its_world(tiny_model):
    model, tokenizer, world = tiny_model
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert tokenizer.is_fast and tokenizer(world.general_texts()[0])["input_ids"][0] == tokenizer.bos_token_id
    result = fact_accuracy(model, tokenizer, world, batch_size=100)
    assert result["num_queries"] == len(world.general_texts())
    assert result["overall"] >= 0.99 and result["min_template"] >= 0.99
    assert set(result["per_relation"]) == set(world.relations)
    assert min(result["per_relation"].values()) >= 0.99


def test_architectures(tiny_model):
    model, _, world = tiny_model
    expected = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[world.config.arch]
    assert type(model).__name__ == expected


def test_cache_directory_is_a_plain_hf_model(tiny_model, cache_root):
    _, _, world = tiny_model
    path = tinyworld_model_dir(world.config, cache_dir=cache_root)
    assert path.name == world.config.key() and path.parent.parent == type(path)(cache_root)
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tinyworld.json"} <= names
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # no half-written leftovers


def test_second_load_hits_cache(tiny_model, cache_root, monkeypatch):
    _, _, world = tiny_model

    def no_training(*args, **kwargs):
        raise AssertionError("a cached TinyWorld model was rebuilt")

    monkeypatch.setattr(tw_build, "train_model", no_training)
    monkeypatch.setattr(tw_build, "build_tinyworld", no_training)
    monkeypatch.setenv("RLEDIT_CACHE", cache_root)  # also checks the env var names the cache root
    model, tokenizer, again = load_tinyworld(world.config, progress=False)
    assert again.facts == world.facts
    assert fact_accuracy(model, tokenizer, again)["min_template"] >= 0.99


def test_build_fails_loudly_and_leaves_nothing(tmp_path):
    config = TinyWorldConfig.tiny().replace(max_steps=10, eval_every=5)
    with pytest.raises(RuntimeError, match="did not reach"):
        tinyworld_model_dir(config, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "tinyworld" / config.key()).exists()
    assert not [p for p in (tmp_path / "tinyworld").iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    config = TinyWorldConfig.tiny()
    a = load_tinyworld(config, cache_dir=tmp_path / "a", progress=False)[0].state_dict()
    b = load_tinyworld(config, cache_dir=tmp_path / "b", progress=False)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_metaspace_model(tmp_path):
    config = TinyWorldConfig.tiny().replace(tokenizer="metaspace")
    model, tokenizer, world = load_tinyworld(config, cache_dir=tmp_path, progress=False)
    assert fact_accuracy(model, tokenizer, world)["min_template"] >= 0.99


@pytest.mark.slow
def test_replay_build_knows_every_template(tmp_path):
    # revisiting a quarter of what is already known still ends with every template learnt
    config = TinyWorldConfig.tiny().replace(replay_fraction=0.25)
    model, tokenizer, world = load_tinyworld(config, cache_dir=tmp_path, progress=False)
    assert fact_accuracy(model, tokenizer, world)["min_template"] >= config.target_accuracy


def test_learning_rate_schedule_with_and_without_the_final_anneal():
    large = TinyWorldConfig.large()  # warmup 100, cosine to 10% by 5,000, bf16 until 16,000, anneal 4,000
    factors = {
        step: tw_build.lr_factor(large, step) for step in (0, 99, 5000, 15999, 16000, 18000, 20000, 25000)
    }
    assert factors[0] == pytest.approx(0.01) and factors[99] == pytest.approx(1.0)
    assert factors[5000] == factors[15999] == pytest.approx(0.1)
    assert factors[16000] == pytest.approx(0.1) and factors[18000] == pytest.approx(0.055)
    assert factors[20000] == factors[25000] == pytest.approx(0.01)
    flat = large.replace(anneal_steps=0)
    assert tw_build.lr_factor(flat, 25000) == pytest.approx(0.1)


def test_bf16_phase_then_fp32_with_scheduled_checks(monkeypatch):
    # bf16 autocast for the first bf16_steps steps only; after them a full check every check_every steps
    # even while the running figures are far below the trigger (an unreachable target keeps it silent)
    config = TinyWorldConfig.tiny().replace(bf16_steps=50, check_every=50, max_steps=150, target_accuracy=1.5)
    world = TinyWorld(config)
    tokenizer = tw_build.build_tokenizer(world)
    model = tw_build.build_model(config, tokenizer)
    autocast_on: list[bool] = []  # one per training forward pass (the checks run in eval mode)
    model.register_forward_hook(
        lambda module, *_: autocast_on.append(torch.is_autocast_enabled("cpu")) if module.training else None
    )
    checks_after: list[int] = []  # training steps done when each full check began
    real_check = tw_build._correct_rows

    def counted_check(*args, **kwargs):
        checks_after.append(len(autocast_on))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(tw_build, "_correct_rows", counted_check)
    with pytest.raises(RuntimeError, match="within 150 steps"):
        tw_build.train_model(model, tokenizer, world, progress=False)
    assert autocast_on == [True] * 50 + [False] * 100
    assert checks_after == [100, 150]  # the scheduled ones; the one at the cap is the failed build's figure
    assert next(model.parameters()).dtype == torch.float32


@pytest.fixture(scope="module")
def uninterrupted_tiny_build():
    """(config, world, tokenizer, model, steps) of a tiny build trained here without a stop (the cached
    model may come from another thread count: other sums)."""
    config = TinyWorldConfig.tiny()
    world = TinyWorld(config)
    tokenizer = tw_build.build_tokenizer(world)
    whole = tw_build.build_model(config, tokenizer)
    result = tw_build.train_model(whole, tokenizer, world, progress=False)
    return config, world, tokenizer, whole, result["steps"]


def _assert_same_weights(expected: torch.nn.Module, got: torch.nn.Module) -> None:
    for (name, want), have in zip(expected.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.equal(want, have), name


@pytest.mark.slow  # two builds of the tiny world's model
def test_an_interrupted_build_resumes_to_the_same_model(tmp_path, monkeypatch, uninterrupted_tiny_build):
    config, world, tokenizer, whole, _ = uninterrupted_tiny_build
    progress = tmp_path / "progress.pt"
    steps, step = 0, torch.optim.AdamW.step

    def interrupted_after_40(self, *args, **kwargs):
        nonlocal steps
        steps += 1
        if steps > 40:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupted_after_40)
    with pytest.raises(KeyboardInterrupt):
        tw_build.train_model(
            tw_build.build_model(config, tokenizer), tokenizer, world, progress=False,
            resume_file=progress, checkpoint_seconds=0,
        )  # fmt: skip
    monkeypatch.undo()
    assert progress.exists()
    resumed = tw_build.build_model(config.replace(seed=config.seed + 1), tokenizer)  # other initial weights
    result = tw_build.train_model(resumed, tokenizer, world, progress=False, resume_file=progress)
    assert result["min_template"] >= config.target_accuracy
    _assert_same_weights(whole, resumed)


@pytest.mark.slow
def test_a_build_stopped_at_its_cap_continues_once_the_cap_is_raised(tmp_path, uninterrupted_tiny_build):
    config, world, tokenizer, whole, steps = uninterrupted_tiny_build
    capped = config.replace(max_steps=steps // 2)
    assert capped.key() != config.key() and capped.progress_key() == config.progress_key()
    progress = tmp_path / "progress.pt"
    model = tw_build.build_model(config, tokenizer)
    with pytest.raises(RuntimeError, match="raise max_steps"):
        tw_build.train_model(model, tokenizer, TinyWorld(capped), progress=False, resume_file=progress)
    assert torch.load(progress, weights_only=True)["step"] == steps // 2  # saved at the cap, not before
    result = tw_build.train_model(model, tokenizer, world, progress=False, resume_file=progress)
    assert result["steps"] == steps
    _assert_same_weights(whole, model)
