"""The results table (``results.csv``): reading, appending, and which runs in it are done.

A run is an (agent, model, dataset, schedule, seed) cell measured under one evaluation protocol (the
``evaluation`` column: "teacher_forced", "generation" or "both"; rows from before that column were
teacher-forced). A run asked for under a protocol is done when the table holds it under that protocol or
under "both"; re-running it under a wider protocol appends its rows, and readers keep only the run's
latest rows, so that a folder resumed with ``--evaluation both`` reports each run once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rledit_env.atomic import atomic_path

RUN_KEYS = ["agent", "model", "dataset", "schedule", "seed"]
EARLIER_PROTOCOL = "teacher_forced"  # what rows without an ``evaluation`` column were measured with


def protocols(results: pd.DataFrame) -> pd.Series:
    """Each row's evaluation protocol."""
    if "evaluation" not in results:
        return pd.Series(EARLIER_PROTOCOL, index=results.index)
    return results["evaluation"].fillna(EARLIER_PROTOCOL).astype(str)


def covers(recorded: str, wanted: str) -> bool:
    """Whether a run recorded under ``recorded`` answers a request for ``wanted``."""
    return recorded in (wanted, "both")


def done_runs(results: pd.DataFrame, evaluation: str) -> set[tuple[str, ...]]:
    """The run keys (as strings) whose rows in ``results`` cover ``evaluation``."""
    if results.empty:
        return set()
    keep = protocols(results).map(lambda p: covers(p, evaluation))
    return set(map(tuple, results.loc[keep, RUN_KEYS].astype(str).values))


def latest_runs(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with each run's rows under its latest recorded protocol only (a run re-measured under
    another protocol appears once)."""
    if results.empty:
        return results
    key = results[RUN_KEYS].astype(str).agg("|".join, axis=1)
    protocol = protocols(results)
    latest = protocol.groupby(key).transform("last")
    return results[protocol == latest].reset_index(drop=True)


def load_results(path: str | Path) -> pd.DataFrame:
    """Every row of the table at ``path`` (empty if there is none yet)."""
    path = Path(path)
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def read_results(path: str | Path) -> pd.DataFrame:
    """The table at ``path`` as reports read it: each run once (``latest_runs``)."""
    return latest_runs(load_results(path))


def append_results(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Add ``rows`` to the results table at ``path``: read it, append, write a temporary file, rename
    (a plain append killed midway would leave a torn last line that breaks every later read)."""
    frame = pd.DataFrame(rows)
    done = load_results(path)
    table = frame if done.empty else pd.concat([done, frame], ignore_index=True)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
