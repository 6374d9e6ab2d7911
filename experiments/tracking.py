"""Training and evaluation curves as TensorBoard event files (and W&B runs when asked for).

A ``CurveLogger`` is an ``agents.base.Callback``: RLEdit, MALMEN and MEND hand it one dict per training
episode (loss terms, grad norm, learned lr), logged as ``train/<name>`` against the episode; SB3 agents
(PPO, SAC) also get SB3's own logger pointed at the run's folder (``tensorboard_log``). After the
lifelong episode, ``log_curve`` writes Eff/Gen/Spe (and every other metric) along the sequence as
``eval/<name>`` against the number of edits made.

One run (an agent, schedule and seed) writes to ``<dir>/<group>/<run>``, the group naming the model
and dataset, so that TensorBoard draws the agents of a benchmark on the same axes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agents.base import Callback, EditAgent

# results.csv columns that describe a run rather than measure it, left out of the eval curve
_NOT_CURVES = {"seed", "step", "edits", "num_batches", "batch_size", "final", "peak_memory_mib"}


class _Sink(Protocol):
    def scalars(self, values: Mapping[str, float], step_name: str, step: int) -> None: ...

    def close(self) -> None: ...


class _TensorBoardSink:
    def __init__(self, log_dir: Path):
        self.writer = require_tensorboard()(log_dir=str(log_dir))

    def scalars(self, values: Mapping[str, float], step_name: str, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class _WandbSink:
    """A W&B run; offline (``wandb sync`` uploads it later) unless ``WANDB_MODE`` says otherwise."""

    def __init__(self, project: str, name: str, group: str, config: dict[str, Any], log_dir: Path):
        wandb = require_wandb()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=name,
            group=group,
            config=config,
            dir=str(log_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )
        # training is logged per episode, evaluation per edit count: each its own x axis
        for prefix, step_name in (("train", "train/episode"), ("eval", "eval/edits")):
            self.run.define_metric(step_name)
            self.run.define_metric(f"{prefix}/*", step_metric=step_name)

    def scalars(self, values: Mapping[str, float], step_name: str, step: int) -> None:
        self.run.log({**values, step_name: step})

    def close(self) -> None:
        self.run.finish()


def require_tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'rledit-env[tensorboard]'"
        ) from None
    return SummaryWriter


def require_wandb():
    try:
        import wandb
    except ImportError:
        raise ValueError(
            "--wandb needs the wandb package, which rledit-env does not install: pip install wandb "
            "(or leave --wandb out; --tensorboard needs nothing more)"
        ) from None
    return wandb


class CurveLogger(Callback):
    """One run's curves, to TensorBoard (``tensorboard_dir``) and/or W&B (``wandb_project``).

    Pass it as ``agent.learn(callback=...)``; call ``log_curve(rows)`` with the run's result rows and
    ``close()`` at the end.
    """

    def __init__(
        self,
        run: str,
        *,
        group: str = "",
        tensorboard_dir: str | Path | None = None,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.run_dir = Path(tensorboard_dir) / group / run if tensorboard_dir is not None else None
        self.sinks: list[_Sink] = []
        if self.run_dir is not None:
            self.sinks.append(_TensorBoardSink(self.run_dir))
        if wandb_project is not None:
            wandb_dir = self.run_dir.parent if self.run_dir is not None else Path("wandb-runs")
            self.sinks.append(_WandbSink(wandb_project, run, group, config or {}, wandb_dir))

    def _log(self, values: Mapping[str, Any], prefix: str, step_name: str, step: int) -> None:
        finite = {
            f"{prefix}/{k}": float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        for sink in self.sinks:
            sink.scalars(finite, step_name, step)

    def on_training_start(self, agent: EditAgent) -> None:
        from agents.sb3 import SB3Agent

        if isinstance(agent, SB3Agent) and self.run_dir is not None:
            # SB3 configures its logger at the start of model.learn, from this attribute
            agent.model.tensorboard_log = str(self.run_dir / "sb3")

    def on_episode_end(self, agent: EditAgent, episode: int, logs: dict[str, float]) -> bool:
        self._log({k: v for k, v in logs.items() if k != "episode"}, "train", "train/episode", episode)
        return True

    def log_curve(self, rows: list[dict[str, Any]]) -> None:
        """The evaluation points of a run (its results.csv rows) against the number of edits made."""
        for row in rows:
            metrics = {k: v for k, v in row.items() if k not in _NOT_CURVES and not k.endswith("_s")}
            self._log(metrics, "eval", "eval/edits", int(row["edits"]))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


@dataclass(frozen=True)
class Tracking:
    """Where a benchmark's curves go besides results.csv (each None: nowhere)."""

    tensorboard: str | None = None  # a folder of event files
    wandb: str | None = None  # a W&B project

    def check(self) -> None:
        """Fail before any work if what is asked for is not installed."""
        if self.tensorboard is not None:
            require_tensorboard()
        if self.wandb is not None:
            require_wandb()

    @contextmanager
    def run(self, run: str, group: str, config: dict[str, Any]) -> Iterator[CurveLogger | None]:
        if self.tensorboard is None and self.wandb is None:
            yield None
            return
        logger = CurveLogger(
            run, group=group, tensorboard_dir=self.tensorboard, wandb_project=self.wandb, config=config
        )
        try:
            yield logger
        finally:
            logger.close()


def run_group(model: str, dataset: str) -> str:
    """A folder name for a model and dataset (hub ids and paths hold slashes)."""
    return f"{model}-{dataset}".replace(os.sep, "_").replace("/", "_")
