"""Evaluation by generation (rledit_env.generation) beside teacher forcing, on the tiny TinyWorld: what
the scores mean, the protocol setting from the command line to the results, and EasyEdit's names."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import gradient_action, tiny_env

from agents import MEMIT, NoEdit, run_episode
from agents.memit import MEMITConfig
from experiments.cli import build_parser, main, resolve_config
from experiments.harness import Benchmark, BenchmarkConfig
from experiments.registry import agent_spec
from experiments.report import protocol_line, write_markdown
from rledit_env.editable import EditableModel
from rledit_env.envs import LifelongEditEnv
from rledit_env.envs.lifelong_edit import resolve_evaluation
from rledit_env.generation import (
    GenerationEvaluator,
    begins_with,
    generate_texts,
    greedy_generate,
    normalise,
)
from rledit_env.models import LoadedModel, load_model
from rledit_env.presets import locate_edit_modules
from rledit_env.tokenization import encode_batch

TINY = "tinyworld-tiny"
MEMIT_CONFIG = MEMITConfig(
    mom2_weight=10.0, stats_max_texts=400, num_prefixes=0, lookup="last", z_lr=0.5, z_steps=12
)


def test_normalised_prefix_match():
    assert normalise("  The  Eiffel-Tower, Paris.") == "the eiffel tower paris"
    assert begins_with(" Renish.", "Renish") and begins_with("renish is spoken", "RENISH")
    assert begins_with("St. Louis, Missouri", "St. Louis")
    assert not begins_with(" Roturish", "Renish") and not begins_with("", "Renish")


def test_unedited_model_never_says_the_counterfactual_answer():
    # a model of its own: the one tiny_env shares is restored only in its default edit modules
    env = LifelongEditEnv(
        load_model(TINY), num_batches=4, batch_size=4, evaluation="generation", action_type="shift"
    )
    metrics = run_episode(env, NoEdit(env), seed=0)["metrics"]
    assert metrics["eff_em"] == 0.0 and metrics["gen_em"] == 0.0
    assert metrics["spe_em_agree"] == 1.0  # nothing changed: every locality generation is the same
    assert metrics["spe_em"] > 0.9  # the model knows its world's neighbours
    assert "eff" not in metrics and "eff_acc" not in metrics  # the suites are never mixed


@pytest.fixture(scope="module")
def memit_env(tmp_path_factory):
    """A private tiny model with MEMIT's edit modules, and MEMIT over it."""
    plain = load_model(TINY)
    model, tokenizer = plain.editable.model, plain.editable.tokenizer
    editable = EditableModel(model, tokenizer, locate_edit_modules(model.config))
    loaded = LoadedModel(editable, plain.splits, plain.probe_texts, plain.stats_texts, TINY)
    env = LifelongEditEnv(
        loaded, num_batches=2, batch_size=3, action_type="shift", evaluation="both", probe_texts=[]
    )
    agent = MEMIT(env, MEMIT_CONFIG, cache_dir=tmp_path_factory.mktemp("stats"), progress=False)
    yield env, agent
    env.close()


def test_memit_edits_are_generated(memit_env):
    env, agent = memit_env
    metrics = run_episode(env, agent, seed=0)["metrics"]
    assert metrics["eff"] == 1.0  # teacher-forced: every edit made
    assert metrics["eff_em"] >= 0.5  # and the model now says most of them (0 before: see above)


def _all_tokens_correct(env, records, prompts_of) -> torch.Tensor:
    """Per prompt: every teacher-forced argmax is the new answer's token."""
    pairs = [(p, r.target_new) for r in records for p in prompts_of(r)]
    batch = encode_batch(env.editable.tokenizer, *zip(*pairs, strict=True))
    target = env.editable.target_logits(batch)
    return target.per_row_mean((target.logits.argmax(-1) == target.labels).float()) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("agent", ["noedit", "gradient-small", "gradient-large", "memit"])
def test_exact_match_never_exceeds_all_tokens_correct(agent, seed, memit_env):
    """Greedy decoding that reproduces the answer makes every teacher-forced argmax right: per prompt,
    and so for the shares."""
    if agent == "memit":
        env, editor = memit_env
        act = editor.act
    else:
        env = tiny_env(action_type="shift", evaluation="both", probe_texts=[])
        lr = {"noedit": 0.0, "gradient-small": 0.3, "gradient-large": 3.0}[agent]

        def act(obs, env=env, lr=lr):
            return gradient_action(env, obs, lr)

    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        obs, _, done, _, info = env.step(act(obs))
    records = [r for batch in env.episode for r in batch]
    evaluator = GenerationEvaluator(env.editable, records)  # its locality reference is unused here
    for requests, prompts_of in (
        (evaluator.edit, lambda r: [r.prompt]),
        (evaluator.para, lambda r: list(r.paraphrase_prompts)),
    ):
        texts = generate_texts(env.editable, requests)
        said = torch.tensor([begins_with(t, q.answer) for t, q in zip(texts, requests, strict=True)])
        correct = _all_tokens_correct(env, records, prompts_of)
        assert not (said & ~correct).any()
        assert said.float().mean() <= correct.float().mean()
    assert info["metrics"]["eff_em"] <= info["metrics"]["eff_acc"] + 1e-6
    env.close()


def test_generation_stops_within_its_budget_and_batches_agree():
    env = tiny_env(action_type="shift", evaluation="teacher_forced", probe_texts=[])
    obs, _ = env.reset(seed=2)
    env.step(gradient_action(env, obs, 1.0))  # partly edited: generations of every kind
    records = [r for batch in env.episode for r in batch]
    evaluator = GenerationEvaluator(env.editable, records)
    requests = (evaluator.edit + evaluator.para + evaluator.loc)[:40]
    prompts = [q.prompt_ids for q in requests]
    budgets = [1 + i % 5 for i in range(len(requests))]
    free = greedy_generate(env.editable, prompts, budgets, stop_at_clause=False)
    assert [len(t) for t in free] == budgets  # nothing stops a row early but its budget (or EOS)
    stopped = greedy_generate(env.editable, prompts, budgets)
    assert all(len(t) <= b for t, b in zip(stopped, budgets, strict=True))
    alone = [greedy_generate(env.editable, [p], [b])[0] for p, b in zip(prompts, budgets, strict=True)]
    assert alone == stopped  # left padding and the cache change nothing
    env.editable.tokens_per_pass = 64  # many small passes: the same again
    try:
        assert greedy_generate(env.editable, prompts, budgets) == stopped
    finally:
        env.editable.tokens_per_pass = 4096
    env.close()


def test_evaluation_setting_resolves_and_reaches_the_env(tmp_path):
    assert resolve_evaluation("auto", "tinyworld-tiny") == "teacher_forced"
    assert resolve_evaluation("auto", "smollm2") == "both"
    assert resolve_evaluation("generation", "smollm2") == "generation"
    with pytest.raises(ValueError, match="evaluation must be"):
        resolve_evaluation("greedy", "smollm2")
    assert tiny_env().evaluation == "teacher_forced"
    args = build_parser().parse_args(["benchmark", "--model", TINY, "--evaluation", "generation"])
    config = resolve_config(args, None)
    assert config.evaluation == "generation"
    env = Benchmark(config, tmp_path / "a", progress=False).make_env(agent_spec("noedit"), 1, 2)
    assert env.evaluation == "generation"
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": TINY, "agents": ["noedit"], "evaluation": "both"}))
    config = BenchmarkConfig.from_file(path)
    env = Benchmark(config, tmp_path / "b", progress=False).make_env(agent_spec("noedit"), 1, 2)
    assert env.evaluation == "both"
    path.write_text(json.dumps({"model": TINY, "agents": ["noedit"], "evaluation": "greedy"}))
    with pytest.raises(ValueError, match="evaluation must be"):
        BenchmarkConfig.from_file(path).validate()


@pytest.fixture(scope="module")
def both_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("both")
    args = ["--model", TINY, "--schedule", "2x3", "--metrics-every", "1", "-q", "--evaluation", "both"]
    assert main(["benchmark", *args, "--agents", "noedit,finetune", "--out", str(out)]) == 0
    return out


def test_results_record_the_protocol_and_the_report_keeps_the_suites_apart(both_results):
    results = pd.read_csv(both_results / "results.csv")
    assert set(results["evaluation"]) == {"both"}
    assert {"eff", "eff_acc", "eff_em", "gen_em", "spe_em", "spe_em_agree"} <= set(results.columns)
    line = protocol_line(results)
    assert "teacher-forced" in line and "by greedy generation" in line and "\n" not in line
    summary = (both_results / "summary.md").read_text()
    assert summary.splitlines()[2] == line
    assert "## Generation (exact match)" in summary
    first, second = (line for line in summary.splitlines() if line.startswith("| agent"))
    assert "eff_acc" in first and "_em" not in first  # teacher-forced columns only
    assert "eff_em" in second and "spe_em_agree" in second and "_acc" not in second
    assert (both_results / "retention-2x3.png").exists()
    assert (both_results / "generation-retention-2x3.png").exists()
    generation_only = results.assign(evaluation="generation").drop(columns=["eff", "gen", "spe"])
    line = protocol_line(generation_only)
    assert "by greedy generation" in line and "teacher-forced" not in line
    text = write_markdown(generation_only, both_results / "generation-only.md", "g")
    assert "eff_em" in text.split("## Generation (exact match)")[1]


def test_easyedit_report_uses_its_names(both_results):
    assert main(["report", str(both_results), "--format", "easyedit"]) == 0
    payload = json.loads((both_results / "easyedit.json").read_text())
    records = payload["records"]
    assert len(records) == 2 * 2  # two agents x one seed, one record per protocol
    protocols = {r["protocol"] for r in records}
    assert protocols == {"decoder_only_teacher_forcing", "greedy_generation_exact_match"}
    results = pd.read_csv(both_results / "results.csv")
    final = results[results["final"]].set_index("agent")
    for record in records:
        post, pre = record["post"], record["pre"]
        assert {"rewrite_acc", "rephrase_acc", "locality", "metric_meta"} <= set(post)
        assert set(post["metric_meta"]) == {"rewrite", "rephrase", "locality"}
        assert post["metric_meta"]["rewrite"]["protocol"] == record["protocol"]
        teacher = record["protocol"] == "decoder_only_teacher_forcing"
        column, locality = ("eff_acc", "spe_agree") if teacher else ("eff_em", "spe_em_agree")
        assert post["rewrite_acc"] == pytest.approx(final.loc[record["agent"], column])
        assert post["locality"]["neighborhood_acc"] == pytest.approx(final.loc[record["agent"], locality])
        assert pre["rewrite_acc"] == pytest.approx(final.loc["noedit", column])  # the unedited model
