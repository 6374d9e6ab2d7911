"""The general-ability probe: prompts, batching, determinism, and its columns in benchmark results."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import _loaded, data_file
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from experiments.harness import AUTO_PROBE, Benchmark, BenchmarkConfig
from rledit_env import general_probe
from rledit_env.general_probe import (
    COLUMNS,
    TASKS,
    GeneralProbeConfig,
    _groups,
    _records,
    _single_tokens,
    label_nll,
    probe_general,
    prompts,
    score_task,
)
from rledit_env.tokenization import encode_batch

CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_packaged_task_files_are_the_shared_ones(name):
    task = TASKS[name]
    source = data_file(f"general/{task.file}", folder="general")
    assert list(_records(task.file)) == json.loads(source.read_text())


def test_prompts_hold_solved_shots_then_the_query():
    task = TASKS["sst2"]
    texts, gold = prompts(task, shots=2, max_examples=5)
    assert len(texts) == len(gold) == 5 and set(gold) <= {0, 1}
    for text in texts:
        assert text.count("Sentiment:") == 3 and text.endswith("Sentiment:")
        solved = [line.split(": ")[1] for line in text.splitlines() if line.startswith("Sentiment: ")]
        assert len(solved) == 2 and set(solved) <= {"negative", "positive"}
    # The shots are never scored: no scored sentence appears among the shots.
    shots = texts[0].split("\n\n")[:2]
    assert not any(t.split("\n\n")[-1].splitlines()[0] in "".join(shots) for t in texts)
    mmlu, _ = prompts(TASKS["mmlu"], shots=0, max_examples=1)
    assert mmlu[0].startswith("Question: ") and "\nD. " in mmlu[0] and mmlu[0].endswith("Answer:")


def test_groups_cover_every_example_once_within_the_limits():
    lengths = [int(x) for x in np.random.default_rng(0).integers(10, 3000, size=40)]
    groups = _groups(lengths, k=4, max_rows=64)
    assert sorted(i for g in groups for i in g) == list(range(40))
    for g in groups:
        assert len(g) * 4 <= 64
        assert len(g) == 1 or len(g) * 4 * max(lengths[i] for i in g) <= 16384


def test_batched_scoring_equals_one_example_at_a_time():
    editable = _loaded("tinyworld-tiny").editable
    task = TASKS["mmlu"]
    texts, gold = prompts(task, shots=1, max_examples=6)
    alone = []
    for text in texts:
        batch = encode_batch(editable.tokenizer, [text] * 4, list(task.words))
        alone.append(int(editable.target_logits(batch).nll().argmin()))
    expected = float(np.mean(np.asarray(alone) == np.asarray(gold)))
    assert score_task(editable, task, shots=1, max_examples=6) == expected


def test_one_pass_for_one_token_label_words_equals_one_pass_per_word(monkeypatch):
    editable = _loaded("tinyworld-tiny").editable
    tok = editable.tokenizer
    base = TASKS["sst2"]
    prompt = prompts(base, shots=1, max_examples=1)[0][0]
    # TinyWorld knows no English label word: take two words its tokenizer keeps as one token each.
    words = [w for w in (tok.decode([i]).strip() for i in range(len(tok))) if w.isalpha()]
    pair = next(
        (a, b)
        for a, b in zip(words, words[1:], strict=False)
        if _single_tokens(tok, prompt, [a, b]) is not None
    )
    task = dataclasses.replace(base, words=pair)
    fast, gold = label_nll(editable, task, shots=1, max_examples=6)
    monkeypatch.setattr(general_probe, "_single_tokens", lambda *args: None)
    slow, same_gold = label_nll(editable, task, shots=1, max_examples=6)
    assert gold == same_gold and np.allclose(fast, slow, atol=1e-4) and fast.std() > 0


def test_probe_is_deterministic_and_in_range():
    editable = _loaded("tinyworld-tiny").editable
    config = GeneralProbeConfig(max_examples=4, shots=1)
    first = probe_general(editable, config)
    assert list(first) == COLUMNS and all(0.0 <= v <= 1.0 for v in first.values())
    assert probe_general(editable, config) == first


def test_probe_settings_are_checked():
    with pytest.raises(ValueError, match="unknown tasks"):
        BenchmarkConfig(general_probe={"tasks": ["squad"]}).validate()
    with pytest.raises(TypeError):
        BenchmarkConfig(general_probe={"max_exmples": 3}).validate()


def test_the_probe_is_on_by_default_for_real_models_and_can_be_set_from_the_command_line():
    from experiments.cli import build_parser, resolve_config

    assert BenchmarkConfig(model="smollm2").probe_settings() == AUTO_PROBE  # "auto" on a real model
    assert BenchmarkConfig(model="meta-llama/Meta-Llama-3-8B").probe_settings() == AUTO_PROBE
    assert BenchmarkConfig(model="tinyworld-large").probe_settings() is None
    assert BenchmarkConfig(model="tinyworld", general_probe={"shots": 1}).probe_settings() == {"shots": 1}
    with pytest.raises(ValueError, match="'auto'"):
        BenchmarkConfig(general_probe="on").validate()

    def settings(*argv: str):
        return resolve_config(build_parser().parse_args(["benchmark", *argv]), None).probe_settings()

    assert settings("--model", "smollm2") == AUTO_PROBE
    assert settings("--model", "smollm2", "--general-probe", "off") is None
    assert settings("--model", "tinyworld") is None
    assert settings("--model", "tinyworld", "--general-probe", "on") == {}
    assert settings("--config", "smollm2-counterfact") == {"max_examples": 20, "shots": 2}
    assert settings("--config", "smollm2-counterfact", "--general-probe", "off") is None


def test_benchmark_rows_carry_the_probe_before_and_after(tmp_path):
    config = BenchmarkConfig(
        model="tinyworld-tiny",
        schedules=["2x2"],
        agents=["noedit", "finetune"],
        metrics_every=1,
        general_probe={"tasks": ["sst2", "mmlu"], "max_examples": 4, "shots": 1},
        agent_configs={"finetune": {"lr": 0.05, "steps": 10}},
    )
    results = Benchmark(config, tmp_path, progress=False).run()
    final = results[results["final"].astype(bool)].set_index("agent")
    for column in ("glue_sst2", "mmlu", "glue_sst2_before", "mmlu_before", "probe_time_s"):
        assert final[column].notna().all() and results.loc[~results["final"], column].isna().all()
    assert "glue_rte" not in results.columns
    # The unedited model is scored once; no-edit leaves it as it was, so its after equals its before.
    assert final["glue_sst2_before"].nunique() == 1
    assert final.loc["noedit", "mmlu"] == final.loc["noedit", "mmlu_before"]
    assert "glue_sst2" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_probe_is_on_for_real_model_configurations_and_off_for_tinyworld():
    for path in CONFIGS.glob("*.json"):
        if path.stem == "models":  # the model table, not a benchmark
            continue
        config = BenchmarkConfig.from_file(path)
        on = config.probe_settings() is not None
        assert on == (not config.model.startswith("tinyworld")), path.name
