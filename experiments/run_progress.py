"""An unfinished run's saved progress, ``<out>/progress/<run>.safetensors``: its episode between two
steps (``agents.base.EpisodeProgress``) and the harness's counts, so that a rerun of the benchmark goes
on from the last save instead of starting the run over (a 2,000-edit run can take longer than a
machine stays up). The file is a safetensors checkpoint (``agents.checkpoint``: loading it runs no
code), written atomically, and removed once the run's rows are in results.csv.

A progress saved under other settings (the configuration's settings for this agent, schedule and seed)
is not used: the run starts over and the file is replaced at its first save.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from agents.base import EpisodeProgress
from agents.checkpoint import CheckpointError, read_checkpoint, write_checkpoint


@dataclasses.dataclass
class RunProgress:
    """What a run had done when it last saved."""

    episode: EpisodeProgress
    wall_time_s: float  # the run's wall time up to that save, over every earlier piece
    train_time_s: float  # training ran in the first piece; later ones load its checkpoint
    pieces: int  # processes the run has taken so far, the one that saved included


def progress_path(out_dir: Path, run: str) -> Path:
    return out_dir / "progress" / f"{run}.safetensors"


# the benchmark's settings that do not change what one of its runs computes
_OTHER_RUNS = ("name", "agents", "seeds", "schedules", "agent_configs", "train_episodes", "progress_every_s")


def settings_key(config: Any, agent: str, schedule: str, seed: int) -> str:
    """What a run computes with, as one string: a progress is used only by a run with the same (the
    benchmark's other agents, seeds and schedules may change between pieces)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _OTHER_RUNS}
    settings.update(
        agent=agent,
        agent_config=config.agent_configs.get(agent),
        train_episodes=config.train_episodes.get(agent),
        schedule=schedule,
        seed=seed,
    )
    return json.dumps(settings, sort_keys=True, default=str)


def write_progress(path: Path, key: str, progress: RunProgress) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # shallow: dataclasses.asdict would deep-copy every weight, which write_checkpoint copies anyway
    payload = {**_fields(progress), "episode": _fields(progress.episode)}
    write_checkpoint(path, {"settings": key, **payload})


def _fields(instance: Any) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def read_progress(path: Path, key: str) -> RunProgress | None:
    """The progress saved at ``path`` for a run with settings ``key``; None if there is none, or if it
    is unreadable or of other settings (with a warning: the run starts over)."""
    if not path.exists():
        return None
    try:
        payload = read_checkpoint(path)
        if payload.get("settings") != key:
            raise CheckpointError("saved under other settings")
        episode = EpisodeProgress(**payload["episode"])
        if not isinstance(episode.rng, torch.Tensor):
            raise CheckpointError("no generator state")
        return RunProgress(
            episode, float(payload["wall_time_s"]), float(payload["train_time_s"]), int(payload["pieces"])
        )
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"{path}: not used, the run starts over ({exc})", stacklevel=2)
        return None
