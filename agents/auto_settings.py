"""Settings left at "auto": filled in from the model's tuned settings, or calibrated on its train split.

A config field listed in its dataclass's ``AUTO_SETTINGS`` is scale-dependent (a step size, a statistics
weight) and defaults to ``AUTO``. When an agent is bound to an environment, ``resolve_settings`` gives
each such field still at ``AUTO`` a value (``rledit_env.tuned_settings`` says in which order): the
model's row of ``TUNED_SETTINGS``; else, for a model with no row (any hub id or local directory), the
field with a search grid is *calibrated* and the others take their published value.

Calibration runs the agent, untrained, with each value of the grid on a short sequence of the model's
*train* split (5 x 10 edits, seed 0) and keeps the value with the best score (harmonic mean of Eff,
Gen and Spe) among those whose perplexity stays within ``PPL_BOUND`` x the unedited model's on the same
edits; where none does, the lowest-perplexity value (the rule of ``experiments/sweep.py`` and
docs/tinyworld-settings.md). The choice is cached per model (name and weight fingerprint), edit modules,
agent, setting, grid and training records, under ``$RLEDIT_CACHE/calibration``, so the second run reuses
it; ``rledit tune`` runs it on demand and prints the sweep table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rledit_env.atomic import write_text_atomic
from rledit_env.cache import cache_root
from rledit_env.log import get_logger
from rledit_env.tuned_settings import AUTO, known_model, tuned_settings

log = get_logger(__name__)

PPL_BOUND = 1.5  # a calibrated value may raise the unedited model's perplexity at most this much
CALIBRATION_SCHEDULE = (5, 10)  # T x n of the calibration sequence on the train split
SCORED = ("eff", "gen", "spe")


@dataclass(frozen=True)
class AutoSetting:
    """A scale-dependent setting: its ``published`` value (7-9B models), used on a model with no tuned
    settings unless ``grid`` (candidates searched on that model's train split) is given."""

    published: Any
    grid: tuple[Any, ...] = ()


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def check_positive(config, *names: str) -> None:
    """Each of ``names`` is ``AUTO`` or a finite number > 0; else a ValueError that names it."""
    for name in names:
        value = getattr(config, name)
        if is_auto(value):
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ValueError(f"{name} must be a finite number > 0 or {AUTO!r}, got {value!r}")


def auto_fields(config) -> list[str]:
    """The fields of ``config`` (a config dataclass instance) still at ``AUTO``."""
    return [name for name in getattr(config, "AUTO_SETTINGS", {}) if is_auto(getattr(config, name))]


def model_name(env) -> str:
    """The name the environment's model goes by: its registered name, hub id or directory."""
    return env.unwrapped.model_name


# ---------------------------------------------------------------------------------------- resolving
@dataclass
class Resolved:
    """A config with no ``AUTO`` left, and where each filled-in value came from."""

    config: Any
    sources: dict[str, str]


def resolve_settings(
    agent_cls: type, config, env, names: Sequence[str] = (), *, progress: bool = True
) -> Resolved:
    """``config`` with every ``AUTO`` field filled in for ``env``'s model (see the module docstring);
    ``names`` are the agent's registry names, most specific first (the class's ``name`` is added)."""
    pending = auto_fields(config)
    if not pending:
        return Resolved(config, {})
    spec = type(config).AUTO_SETTINGS
    model = known_model(model_name(env))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if model is not None:
        tuned = tuned_settings(model, (*names, agent_cls.name))
        # a step size holds for the modules it was tuned on; other modules get theirs calibrated
        own_modules = _tuned_modules(agent_cls, model, env)
        for name in pending:
            if name in tuned and (own_modules or not spec[name].grid):
                values[name], sources[name] = tuned[name], f"tuned for {model}"
    left = [name for name in pending if name not in values]
    for name in left:
        if not spec[name].grid:
            values[name], sources[name] = spec[name].published, "published (not calibrated)"
    for name in left:
        if spec[name].grid:  # given the other values, so the search runs the agent as it will be used
            base = dataclasses.replace(config, **values)
            result = calibrate(agent_cls, base, env, name, names=names, progress=progress)
            values[name] = result.value
            sources[name] = f"calibrated on {result.model}'s train split" + (
                " (cached)" if result.cached else ""
            )
    return Resolved(dataclasses.replace(config, **values), sources)


def _tuned_modules(agent_cls: type, model: str, env) -> bool:
    """Whether ``env`` edits the modules the table's values for ``agent_cls`` on ``model`` were tuned on."""
    from rledit_env.presets import editor_modules

    editable = env.unwrapped.editable
    return list(editable.shapes) == editor_modules(agent_cls.name, model, editable.model.config)


# ---------------------------------------------------------------------------------------- calibrating
@dataclass
class Calibration:
    """What calibrating one setting found: the value chosen, the sweep table and the unedited metrics."""

    agent: str
    setting: str
    value: Any
    table: list[dict[str, Any]]  # one row per candidate value: its final metrics and score
    unedited: dict[str, float]
    model: str
    cached: bool
    path: Path

    def markdown(self) -> str:
        import pandas as pd

        frame = pd.DataFrame(self.table).round(3)
        frame[self.setting] = [str(row[self.setting]) for row in self.table]  # the values as given
        frame["chosen"] = ["*" if row[self.setting] == self.value else "" for row in self.table]
        return frame.to_markdown(index=False, disable_numparse=True)


def selection_score(metrics: dict[str, float]) -> float:
    """CounterFact's score: the harmonic mean of Eff, Gen and Spe."""
    return len(SCORED) / sum(1 / max(float(metrics[m]), 1e-9) for m in SCORED)


def choose(rows: Sequence[dict[str, Any]], setting: str, unedited_ppl: float, bound: float = PPL_BOUND):
    """The value of ``setting`` the rule picks among ``rows`` (each with ``score`` and ``ppl``): the best
    score among rows with ppl <= bound x ``unedited_ppl``, else the lowest-perplexity row's."""
    within = [r for r in rows if math.isfinite(r["ppl"]) and r["ppl"] <= bound * unedited_ppl]
    if within:
        return max(within, key=lambda r: r["score"])[setting]
    return min(rows, key=lambda r: r["ppl"] if math.isfinite(r["ppl"]) else math.inf)[setting]


def calibrate(
    agent_cls: type,
    config,
    env,
    setting: str,
    *,
    names: Sequence[str] = (),
    grid: Sequence[Any] | None = None,
    refresh: bool = False,
    progress: bool = True,
) -> Calibration:
    """Choose ``setting`` of ``agent_cls`` (other settings as in ``config``) on ``env``'s model's train
    split by the rule above; cached unless ``refresh``."""
    from rledit_env.envs import LifelongEditEnv
    from rledit_env.models import LoadedModel

    core = env.unwrapped
    grid = tuple(grid if grid is not None else type(config).AUTO_SETTINGS[setting].grid)
    train = core.splits.get("train")
    label = names[0] if names else agent_cls.name
    if not train:
        raise ValueError(
            f"{label}: {setting}='auto' on {model_name(env)!r}, a model with no tuned settings, is "
            "calibrated on the model's train split, and this environment has none: give training edits "
            "(a benchmark's train_dataset or --train-dataset; or LifelongEditEnv(LoadedModel(editable, "
            "splits={'train': records}), dataset=...)), or pin the value "
            f"({type(config).__name__}({setting}=...))"
        )
    batch = min(CALIBRATION_SCHEDULE[1], len(train))
    batches = max(1, min(CALIBRATION_SCHEDULE[0], len(train) // batch))
    fixed = {k: v for k, v in dataclasses.asdict(config).items() if k not in (setting, "seed")}
    path = _cache_path(core, agent_cls, label, setting, grid, train, (batches, batch), fixed)
    if path.exists() and not refresh:
        saved = json.loads(path.read_text())
        return Calibration(**{**saved, "cached": True, "path": path})

    core.editable.restore(core.initial_weights)

    def trial_env(action_type: str) -> LifelongEditEnv:
        loaded = LoadedModel(core.editable, core.splits, core.probe_texts, core.stats_texts, core.model_name)
        return LifelongEditEnv(
            loaded,
            split="train",
            num_batches=batches,
            batch_size=batch,
            action_type=action_type,
            score_reward=True,  # fine-tuning's "gen" objective reads the reward's terms
            evaluation="teacher_forced",  # the selection score reads the teacher-forced suite
            probe_texts=core.probe_texts,
            stats_texts=core.stats_texts,
        )

    from agents.noedit import NoEdit

    unedited = _final_metrics(trial_env(NoEdit.action_type), NoEdit)
    trial = trial_env(agent_cls.action_type)
    rows = []
    for value in tqdm(grid, desc=f"calibrating {label} {setting} on the train split", disable=not progress):
        candidate = dataclasses.replace(config, **{setting: value, "seed": 0})
        metrics = _final_metrics(trial, lambda env, candidate=candidate: agent_cls(env, candidate))
        rows.append({setting: value, "score": selection_score(metrics), **metrics})
    value = choose(rows, setting, unedited["ppl"])
    result = Calibration(label, setting, value, rows, unedited, model_name(env), False, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("cached", "path")}
    write_text_atomic(path, json.dumps(saved, indent=2))
    chosen = next(r for r in rows if r[setting] == value)
    log.info(
        "%s: %s=%s calibrated on %s's train split (%dx%d edits; score %.3f, ppl %.2f against %.2f "
        "unedited, bound %.1fx); cached in %s",
        label, setting, value, model_name(env), batches, batch, chosen["score"], chosen["ppl"],
        unedited["ppl"], PPL_BOUND, path,
    )  # fmt: skip
    return result


def _final_metrics(env, make_agent) -> dict[str, float]:
    """Eff/Gen/Spe, their token-accuracy variants and perplexity after one sequence (seed 0) of the
    agent ``make_agent(env)`` on ``env``, which is closed afterwards (the model's weights restored)."""
    from agents.base import run_episode

    try:
        metrics = run_episode(env, make_agent(env), seed=0)["metrics"]
    finally:
        env.close()
    return {k: float(metrics[k]) for k in (*SCORED, "eff_acc", "ppl")}


def _cache_path(core, agent_cls, label, setting, grid, train, schedule, fixed) -> Path:
    from agents.key_stats import corpus_hash, model_fingerprint

    snapshot = core.editable.snapshot()
    core.editable.restore(core.initial_weights)  # the fingerprint of the unedited model
    try:
        fingerprint = model_fingerprint(core.editable.model)
    finally:
        core.editable.restore(snapshot)
    key = {
        "model": model_name(core),
        "fingerprint": fingerprint,
        "modules": {m: list(s) for m, s in core.editable.shapes.items()},
        "agent": f"{agent_cls.__module__}.{agent_cls.__qualname__}",
        "label": label,
        "setting": setting,
        "grid": list(grid),
        "records": corpus_hash([f"{r.prompt}\t{r.target_new}" for r in train]),
        "schedule": list(schedule),
        "settings": fixed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    name = Path(key["model"]).name or "model"
    return cache_root() / "calibration" / f"{name}-{label}-{setting}-{digest}.json"
