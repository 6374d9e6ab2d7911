"""The benchmark harness: lifelong editing runs of several agents, seeds and schedules, as one table.

Each (agent, schedule, seed) run trains the agent if it needs training (on the training split, never
on the evaluation edits), runs one lifelong episode on the evaluation split, and adds one row per
evaluation point (every ``metrics_every`` steps and the end) to a tidy table. Rows are appended to
``results.csv`` as each run finishes, so an interrupted benchmark resumes where it stopped. Every file
is replaced atomically (``rledit_env.atomic``): a kill at any moment leaves the old file or the new one,
never a torn one. One process at a time may run in a results folder (``experiments.lock``).
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from agents.base import Callback, EpisodeProgress
from experiments.lock import results_lock
from experiments.registry import AgentSpec, agent_settings, agent_spec, build_agent, train_or_load
from experiments.report import training_log_name
from experiments.results_table import append_results, done_runs, latest_runs, load_results
from experiments.run_progress import RunProgress, progress_path, read_progress, settings_key, write_progress
from experiments.tracking import Tracking, run_group
from rledit_env.atomic import atomic_path
from rledit_env.editable import EditableModel
from rledit_env.envs import LifelongEditEnv
from rledit_env.envs.lifelong_edit import resolve_evaluation
from rledit_env.general_probe import GeneralProbeConfig, probe_general
from rledit_env.models import LoadedModel, load_model

Cell = tuple[str, str, int]  # (agent, schedule, seed): one run of a benchmark (its model and dataset fixed)


@dataclass
class CellOutcome:
    """What running one cell gave: its result rows, or the traceback of its failure."""

    cell: Cell
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def of(cls, cell: Cell, run: Callable[[], list[dict[str, Any]]]) -> CellOutcome:
        try:
            return cls(cell, rows=run())
        except Exception:  # one broken cell must not stop the grid; its traceback is reported
            return cls(cell, error=traceback.format_exc())


# Runs cells somewhere (another process, a cluster) and yields their outcomes as they finish.
CellExecutor = Callable[["Benchmark", list[Cell]], Iterable[CellOutcome]]


class CellsFailed(RuntimeError):
    """Some cells of a benchmark failed (their tracebacks were reported); the others' rows are saved."""

    def __init__(self, cells: list[Cell]):
        super().__init__(
            f"{len(cells)} cell(s) failed: {', '.join(f'{a} {s} seed {k}' for a, s, k in cells)}; "
            "the other cells' rows are saved, and running the same command again retries only these"
        )
        self.cells = cells


# The general-ability probe a real model gets unless a configuration says otherwise: the smollm2-*
# configurations' size, which on a CPU costs SmolLM2 minutes, not the tens of minutes of the probe's defaults.
AUTO_PROBE = {"max_examples": 20, "shots": 2}


@dataclass
class BenchmarkConfig:
    """One benchmark: a model, its edits, the T x n schedules, the agents and the seeds.

    ``dataset`` None uses the model's own records (TinyWorld's train/eval splits); otherwise it is a
    path or known name (``rledit_env.datasets.KNOWN_DATASETS``) for the evaluation edits, and
    ``train_dataset`` the training edits (if None, ``dataset`` is split in two, disjointly, with
    ``eval_fraction`` of its records for evaluation).
    """

    name: str = "benchmark"
    model: str = "tinyworld"
    dataset: str | None = None
    train_dataset: str | None = None
    eval_fraction: float = 0.5
    schedules: list[str] = field(default_factory=lambda: ["20x10"])
    agents: list[str] = field(default_factory=lambda: ["rledit", "noedit"])
    seeds: list[int] = field(default_factory=lambda: [0])
    train_episodes: dict[str, int] = field(default_factory=dict)  # per agent; absent: the agent's default
    agent_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-agent config overrides
    env: dict[str, Any] = field(default_factory=dict)  # LifelongEditEnv overrides (reward settings, ...)
    metrics_every: int = 5
    # the metrics' protocol: "teacher_forced", "generation" or "both"; "auto": teacher-forced on TinyWorld,
    # both on real models (rledit_env.envs.lifelong_edit.resolve_evaluation)
    evaluation: str = "auto"
    # rledit_env.general_probe.GeneralProbeConfig settings ({} for its defaults); None: no probe; "auto":
    # AUTO_PROBE on a real model, none on TinyWorld (a made-up world's model has never read English tasks)
    general_probe: dict[str, Any] | str | None = "auto"
    edit_modules: str | list[str] | None = None
    device: str | None = None
    device_map: str | dict[str, Any] | None = None  # "auto": accelerate spreads a big model over devices
    dtype: str | None = None
    # an unfinished run saves its episode's progress this often (seconds) to <out>/progress/, and a rerun
    # goes on from the last save (experiments.run_progress); None: never
    progress_every_s: float | None = 300.0

    def probe_settings(self) -> dict[str, Any] | None:
        """The general-ability probe's settings for this model (None: no probe); resolves "auto"."""
        if self.general_probe == "auto":
            return None if self.model.startswith("tinyworld") else dict(AUTO_PROBE)
        return self.general_probe

    @classmethod
    def from_file(cls, path: str | Path) -> BenchmarkConfig:
        """A configuration file (JSON). ``"extends": "<name or path>"`` starts from another configuration
        (a name is a file next to this one): its settings, with this file's on top, dictionaries (such
        as ``agent_configs``) merged key by key, so shared agent settings are written once."""
        data = read_config_file(Path(path))
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)} - {"description"})
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}")
        data.pop("description", None)
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            if not _has_type(value, hints[name]):
                raise ValueError(f"{path}: setting {name!r} must be {_type_name(hints[name])}, got {value!r}")
        return cls(**data)

    def validate(self) -> None:
        for schedule in self.schedules:
            parse_schedule(schedule)
        for name in self.agents:
            agent_settings(name, agent_spec(name), self.agent_configs.get(name, {}))
        if not self.seeds:
            raise ValueError("seeds is empty")
        if self.progress_every_s is not None and not self.progress_every_s >= 0:
            raise ValueError(f"progress_every_s must be None or >= 0, got {self.progress_every_s}")
        resolve_evaluation(self.evaluation, self.model)
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if isinstance(self.general_probe, str) and self.general_probe != "auto":
            raise ValueError(f"general_probe must be a dict, None or 'auto', got {self.general_probe!r}")
        probe = self.probe_settings()
        if probe is not None:
            GeneralProbeConfig(**probe)
        from rledit_env.datasets import resolve_dataset

        for dataset in (self.dataset, self.train_dataset):
            if dataset is not None:
                resolve_dataset(dataset)  # a missing download fails here, before a model loads


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A configuration file's settings, with the configuration it ``extends`` merged underneath."""
    if path.resolve() in seen:
        raise ValueError(f"{path}: configurations extend each other in a cycle")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got a {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = Path(parent) if Path(parent).suffix == ".json" else path.parent / f"{parent}.json"
    if not parent_path.exists():
        raise ValueError(f"{path}: extends {parent!r}, but there is no {parent_path}")
    return _merge(read_config_file(parent_path, (*seen, path.resolve())), data)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = (
            _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return merged


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint of BenchmarkConfig (str, int, list[...], dict[str, ...], |)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(v, args[1]) for v in value.values())
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def parse_schedule(text: str) -> tuple[int, int]:
    """'20x10' -> (T=20 batches, n=10 edits per batch)."""
    try:
        t, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"schedule {text!r} is not of the form TxN, e.g. 20x10") from None
    if t < 1 or n < 1:
        raise ValueError(f"schedule {text!r}: T and n must be positive")
    return t, n


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


class Benchmark:
    """Runs a BenchmarkConfig into ``out_dir`` (results.csv, and checkpoints of trained agents)."""

    def __init__(
        self,
        config: BenchmarkConfig,
        out_dir: str | Path,
        *,
        progress: bool = True,
        verbose: bool = False,
        checkpoints: dict[str, str | Path] | None = None,
        tracking: Tracking | None = None,
    ):
        config.validate()
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress, self.verbose = progress, verbose
        self.checkpoints = {k: Path(v) for k, v in (checkpoints or {}).items()}  # agent -> trained checkpoint
        self.tracking = tracking or Tracking()
        self.tracking.check()
        self._loaded: LoadedModel | None = None
        self._probe_before: dict[str, float] | None = None
        self._unedited: dict[tuple[int, int, int], float] = {}

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def dataset_name(self) -> str:
        return self.config.dataset or f"{self.config.model}-own"

    # ------------------------------------------------------------------------------ model and data
    def loaded_model(self) -> LoadedModel:
        """The model, loaded once for all runs, with train/eval splits of the edits."""
        if self._loaded is None:
            cfg = self.config
            loaded = load_model(
                cfg.model,
                cfg.edit_modules,
                device=cfg.device,
                dtype=_dtype(cfg.dtype),
                device_map=cfg.device_map,
            )
            if cfg.dataset is not None:
                loaded.splits = self._dataset_splits()
            # a host copy: on a GPU a second copy of an 8B model's weights would cost 15 GiB of its memory
            state = loaded.editable.model.state_dict()
            self._pristine = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
            self._loaded = loaded
        return self._loaded

    def _dataset_splits(self) -> dict[str, list]:
        from rledit_env.datasets import load_dataset, split_records

        cfg = self.config
        evals = load_dataset(cfg.dataset)
        if cfg.train_dataset is not None:
            return {"train": load_dataset(cfg.train_dataset), "eval": evals}
        train, evals = split_records(evals, eval_fraction=cfg.eval_fraction, seed=0)
        return {"train": train, "eval": evals}

    def make_env(self, spec: AgentSpec, num_batches: int, batch_size: int) -> LifelongEditEnv:
        loaded = self.loaded_model()
        editable = loaded.editable
        if spec.edit_modules is not None:
            modules = spec.edit_modules(editable.model.config)
            editable = EditableModel(
                editable.model, editable.tokenizer, modules, eval_batch_size=editable.eval_batch_size
            )
        settings = {
            "metrics_every": self.config.metrics_every,
            "evaluation": self.config.evaluation,
            "score_reward": spec.needs_reward,  # scoring the reward is most of a step's cost
            **self.config.env,
            **spec.env_kwargs,
        }
        return LifelongEditEnv(
            LoadedModel(editable, loaded.splits, loaded.probe_texts, loaded.stats_texts, loaded.name),
            num_batches=num_batches,
            batch_size=batch_size,
            **settings,
        )

    def _check_pristine(self) -> None:
        """Every run must start from the original model: a leaked edit would corrupt the next run."""
        state = self._loaded.editable.model.state_dict()
        for key, value in self._pristine.items():
            if not torch.equal(state[key].cpu(), value):
                raise RuntimeError(f"the model's weights changed between runs ({key}); this is a bug")

    # ------------------------------------------------------------------------------ runs
    def pending(self) -> list[Cell]:
        """The (agent, schedule, seed) cells not yet in results.csv, in the configuration's order."""
        cfg = self.config
        # a run measured under a narrower protocol than this configuration's is run again
        finished = done_runs(load_results(self.results_path), resolve_evaluation(cfg.evaluation, cfg.model))
        runs = [(a, s, seed) for seed in cfg.seeds for s in cfg.schedules for a in cfg.agents]
        todo = [r for r in runs if (r[0], cfg.model, self.dataset_name, r[1], str(r[2])) not in finished]
        if len(todo) < len(runs) and self.verbose:
            print(f"resuming: {len(runs) - len(todo)} of {len(runs)} runs already in {self.results_path}")
        return todo

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Append one cell's rows to results.csv (only the driver writes it: resume reads it back)."""
        append_results(self.results_path, rows)
        first = rows[0]
        progress_path(self.out_dir, run_name(first["agent"], first["schedule"], first["seed"])).unlink(
            missing_ok=True
        )
        if self.verbose:
            last = rows[-1]
            scores = " ".join(f"{m} {last.get(m, float('nan')):.3f}" for m in ("eff", "gen", "spe"))
            tqdm.write(
                f"{last['agent']} {last['schedule']} seed {last['seed']}: {scores} | "
                f"{1000 * last['time_per_edit_s']:.1f} ms/edit"
            )

    def run(self, executor: CellExecutor | None = None) -> pd.DataFrame:
        """Run the pending cells, here one after another or through ``executor`` (e.g. the Ray backend),
        appending each cell's rows as it finishes. Cells that fail are reported with their tracebacks
        while the others go on; ``CellsFailed`` is raised at the end if any did. Refuses a results
        folder that another live process is running in (``experiments.lock``)."""
        with results_lock(self.out_dir):
            return self._run(executor)

    def _run(self, executor: CellExecutor | None) -> pd.DataFrame:
        todo = self.pending()
        outcomes = executor(self, todo) if executor is not None else self._run_here(todo)
        failures: list[CellOutcome] = []
        with tqdm(total=len(todo), desc="benchmark", unit="cell", disable=not self.progress) as bar:
            for outcome in outcomes:
                if outcome.error is None:
                    self.record(outcome.rows)
                else:
                    failures.append(outcome)
                    tqdm.write(f"cell {outcome.cell} failed:\n{outcome.error}")
                bar.update()
        if failures:
            raise CellsFailed([f.cell for f in failures])
        return self._in_agent_order(latest_runs(load_results(self.results_path)))

    def _in_agent_order(self, results: pd.DataFrame) -> pd.DataFrame:
        """The rows by the configuration's agent order (cells on Ray finish in any order); agents of
        earlier runs in the same folder, not in this configuration, last."""
        if results.empty:
            return results
        rank = {name: i for i, name in enumerate(self.config.agents)}
        key = results["agent"].map(lambda name: rank.get(name, len(rank)))
        return results.iloc[key.argsort(kind="stable")].reset_index(drop=True)

    def _run_here(self, cells: list[Cell]) -> Iterator[CellOutcome]:
        if cells:
            self.loaded_model()  # a model or dataset that fails to load fails the whole run, not a cell
        for cell in cells:
            yield CellOutcome.of(cell, lambda cell=cell: self.run_one(*cell))

    def run_one(self, agent_name: str, schedule: str, seed: int) -> list[dict[str, Any]]:
        from agents import run_episode

        cfg = self.config
        spec = agent_spec(agent_name)
        num_batches, batch_size = parse_schedule(schedule)
        run = run_name(agent_name, schedule, seed)
        settings = {**dataclasses.asdict(cfg), "agent": agent_name, "schedule": schedule, "seed": seed}
        key, path = settings_key(cfg, agent_name, schedule, seed), progress_path(self.out_dir, run)
        saved = read_progress(path, key) if cfg.progress_every_s is not None else None
        earlier = saved.wall_time_s if saved is not None else 0.0  # the earlier pieces' wall time
        pieces = saved.pieces + 1 if saved is not None else 1
        start = time.perf_counter()
        with self.tracking.run(run, run_group(cfg.model, self.dataset_name), settings) as curves:
            env = self.make_env(spec, num_batches, batch_size)
            try:
                general = self._general_probe(env.editable, before=True)
                agent, train_time = self._agent(agent_name, spec, env, schedule, seed, curves)
                if saved is not None:
                    train_time = saved.train_time_s  # trained in the first piece; loaded since
                stats_time = float(getattr(agent, "stats_time_s", 0.0))

                def save(episode: EpisodeProgress) -> None:
                    wall = earlier + time.perf_counter() - start
                    write_progress(path, key, RunProgress(episode, wall, train_time, pieces))

                saving = cfg.progress_every_s is not None and says_episode_state(agent)
                if saved is not None and self.verbose:
                    tqdm.write(f"{run}: going on from batch {saved.episode.env['step']} ({path})")
                desc = f"{agent_name} {schedule} seed {seed}: editing"
                bar = tqdm(total=num_batches, desc=desc, unit="batch", leave=False, disable=not self.progress)
                with bar:
                    bar.update(saved.episode.env["step"] if saved is not None else 0)
                    result = run_episode(
                        env,
                        agent,
                        seed=seed,
                        on_step=lambda _: bar.update(),
                        resume=saved.episode if saved is not None else None,
                        save_progress=save if saving else None,
                        save_every_s=cfg.progress_every_s or 0.0,
                    )
                general.update(self._general_probe(env.editable, before=False))
            finally:
                env.close()  # restores the edit modules
            self._check_pristine()
            base = {
                "agent": agent_name,
                "model": cfg.model,
                "dataset": self.dataset_name,
                "schedule": schedule,
                "seed": seed,
                "num_batches": num_batches,
                "batch_size": batch_size,
                "time_per_edit_s": result["time_per_edit_s"],
                "edit_time_s": result["edit_time_s"],
                "train_time_s": train_time,
                "stats_time_s": stats_time,
                "stats_cached": getattr(agent, "stats_from_cache", None),
                "evaluation": env.evaluation,  # the protocol: teacher_forced, generation or both
                "spe_reference": env.spe_reference,
                "stats_corpus": getattr(agent, "stats_source", None),
                "stats_texts": getattr(agent, "stats_num_texts", None),
                "peak_memory_mib": peak_memory_mib(),
                # settings left at "auto" and where their values came from (model table, calibration)
                "auto_settings": json.dumps(
                    {k: [getattr(agent.config, k), src] for k, src in agent.settings_sources.items()}
                ),
                # the whole run: training or loading, statistics, the episode, metrics and probes; a
                # resumed run adds up its pieces (each piece loads, probes and builds its agent again)
                "wall_time_s": earlier + time.perf_counter() - start,
                "pieces": pieces,
            }
            curve = result["curve"] or [{"step": num_batches, **result["metrics"]}]
            rows = [{**base, **point, "final": point["step"] == num_batches} for point in curve]
            for row in rows:
                if row["final"]:
                    row.update(general)  # the probe runs once, after the whole sequence
                    if "noedit" not in cfg.agents:  # the reference of the "did not edit" check
                        row["eff_unedited"] = self._unedited_eff(num_batches, batch_size, seed)
            if curves is not None:
                curves.log_curve(rows)
        return rows

    def _unedited_eff(self, num_batches: int, batch_size: int, seed: int) -> float:
        """The unedited model's final Eff on the edits of (schedule, seed): a no-edit sequence, run
        once per benchmark, so that a run that did not edit is flagged without a no-edit row."""
        from agents import NoEdit, run_episode

        key = (num_batches, batch_size, seed)
        if key not in self._unedited:
            env = self.make_env(agent_spec("noedit"), num_batches, batch_size)
            env.unwrapped.metrics_every = 0
            if env.unwrapped.evaluation == "both":  # the flag reads teacher-forced Eff: skip generating
                env.unwrapped.evaluation = "teacher_forced"
            try:
                metrics = run_episode(env, NoEdit(env), seed=seed)["metrics"]
                self._unedited[key] = float(metrics.get("eff", metrics.get("eff_em")))
            finally:
                env.close()
        return self._unedited[key]

    def _general_probe(self, editable: EditableModel, *, before: bool) -> dict[str, Any]:
        """The general-ability probe's columns: ``<task>_before`` (the unedited model, scored once per
        benchmark) or ``<task>`` after the sequence with its wall time ``probe_time_s``; {} when off."""
        settings = self.config.probe_settings()
        if settings is None:
            return {}
        config = GeneralProbeConfig(**settings)
        if before:
            if self._probe_before is None:
                self._probe_before = probe_general(editable, config)
            return {f"{k}_before": v for k, v in self._probe_before.items()}
        start = time.perf_counter()
        scores = probe_general(editable, config)
        return {**scores, "probe_time_s": time.perf_counter() - start}

    def _agent(
        self,
        name: str,
        spec: AgentSpec,
        env: LifelongEditEnv,
        schedule: str,
        seed: int,
        callback: Callback | None = None,
    ):
        """Build the agent; train it (or reuse its checkpoint) when it needs training."""
        agent = build_agent(name, env, self.config.agent_configs.get(name), seed, progress=self.progress)
        if not (spec.trainable and spec.train):
            return agent, 0.0
        if name in self.checkpoints:  # a checkpoint the user gave: used as it is
            return type(agent).load(self.checkpoints[name], env), 0.0
        sources = agent.settings_sources  # a loaded checkpoint's config holds the values, not their origin
        ckpt = self.out_dir / "checkpoints" / f"{run_name(name, schedule, seed)}.safetensors"
        if not ckpt.exists() and ckpt.with_suffix(".pt").exists():
            # a results folder from before safetensors: load refuses it and says how to convert
            ckpt = ckpt.with_suffix(".pt")
        trained = ckpt.exists()
        agent, train_time = train_or_load(
            agent,
            ckpt,
            episodes=self.config.train_episodes.get(name),
            progress=self.progress,
            callback=callback,
        )
        agent.settings_sources = sources
        if not trained:
            # the learning curve, and RLEdit's validations (the untrained network's included)
            for kind in ("training", "validation"):
                log = getattr(agent, f"{kind}_log", None)
                if log:
                    with atomic_path(self.out_dir / training_log_name(name, schedule, seed, kind)) as tmp:
                        pd.DataFrame(log).to_csv(tmp, index=False)
        return agent, train_time


def run_name(agent: str, schedule: str, seed: int) -> str:
    """One run's name: its checkpoint, saved progress and tracking run are called so."""
    return f"{agent}-{schedule}-seed{seed}"


def says_episode_state(agent) -> bool:
    """Whether the agent can say what it carries along an episode (else its runs cannot resume)."""
    try:
        agent.episode_state()
    except NotImplementedError:
        return False
    return True


def peak_memory_mib() -> float:
    """Peak memory of this process so far: GPU memory when on CUDA, else the resident set."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmark(
    config: BenchmarkConfig, out_dir: str | Path, *, progress: bool = True, verbose: bool = False
) -> pd.DataFrame:
    return Benchmark(config, out_dir, progress=progress, verbose=verbose).run()


def final_rows(results: pd.DataFrame, agents: Sequence[str] | None = None) -> pd.DataFrame:
    final = results[results["final"].astype(bool)]
    return final if agents is None else final[final["agent"].isin(agents)]
