"""The benchmark grid on Ray: each (agent, schedule, seed) cell of a benchmark is a Ray task.

``Benchmark.run(RayExecutor(...))`` submits the pending cells with their declared resources
(``cpus_per_run``, ``gpus_per_run``); each task builds the benchmark in its worker (the model loads once
per worker process and is reused by the cells it runs next) and returns the cell's rows, or its
traceback. The driver appends the rows to results.csv as cells finish, so results are written in one
place and an interrupted grid resumes like a local one.

Workers write trained checkpoints (``<out>/checkpoints``), training logs and TensorBoard files
themselves, and read relative paths from the driver's working folder: on a cluster, run from a folder
every node mounts at the same path, with ``--out`` (and ``--tensorboard``) on it, and the same
rledit-env importable on every node.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.harness import Benchmark, BenchmarkConfig, Cell, CellOutcome
from experiments.tracking import Tracking

_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


def require_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--backend ray needs Ray, an optional extra: pip install 'rledit-env[ray]' (or pip install ray)"
        ) from None
    return ray


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to rebuild the driver's benchmark, and the folder relative paths start from."""

    config: BenchmarkConfig
    out_dir: str
    checkpoints: dict[str, str]
    tracking: Tracking
    cpus: float
    cwd: str


def job_of(bench: Benchmark, cpus: float) -> CellJob:
    checkpoints = {name: str(path) for name, path in bench.checkpoints.items()}
    return CellJob(bench.config, str(bench.out_dir), checkpoints, bench.tracking, cpus, os.getcwd())


_worker_bench: dict[str, Any] = {}  # in a worker process: the benchmark it last ran, its model loaded


def run_cell(job: CellJob, cell: Cell) -> CellOutcome:
    """The body of a Ray task: one cell, in a worker."""
    import torch

    torch.set_num_threads(max(1, int(job.cpus)))  # the task's CPUs, not the node's
    if not Path(job.cwd).is_dir():
        raise FileNotFoundError(
            f"the driver's folder {job.cwd} is not on this node: run rledit from a folder every node mounts"
        )
    os.chdir(job.cwd)  # the configuration's paths (model, edits, --out) are relative to the driver's
    key = repr(job)
    if _worker_bench.get("key") != key:
        _worker_bench.clear()  # another benchmark: free the previous model first
        bench = Benchmark(
            job.config, job.out_dir, progress=False, checkpoints=job.checkpoints, tracking=job.tracking
        )
        _worker_bench.update(key=key, bench=bench)
    return CellOutcome.of(cell, lambda: _worker_bench["bench"].run_one(*cell))


@dataclass(frozen=True)
class RayExecutor:
    """Runs a benchmark's cells as Ray tasks of ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs each.

    ``address``: a running cluster ("auto", "ray://host:10001", ...); None starts a Ray on this machine
    (on 127.0.0.1, all its CPUs and GPUs), or uses the one this process already started with ray.init.
    """

    address: str | None = None
    cpus_per_run: float = 1
    gpus_per_run: float = 0

    def __call__(self, bench: Benchmark, cells: list[Cell]) -> Iterator[CellOutcome]:
        ray = require_ray()
        if not cells:
            return
        started = not ray.is_initialized()
        if started:
            if self.address is None:
                ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
            else:
                ray.init(address=self.address)
        try:
            yield from self._run(ray, bench, cells)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, bench: Benchmark, cells: list[Cell]) -> Iterator[CellOutcome]:
        # workers import this copy of the code first, and use as many threads as they have CPUs
        env_vars = {
            "PYTHONPATH": os.pathsep.join(filter(None, [_PROJECT_ROOT, os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": str(max(1, int(self.cpus_per_run))),
        }
        task = ray.remote(run_cell).options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=0,  # a failed cell is reported; running the command again retries it
            runtime_env={"env_vars": env_vars},
        )
        job = ray.put(job_of(bench, self.cpus_per_run))
        cell_of = {task.remote(job, cell): cell for cell in cells}
        waiting = list(cell_of)
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                for ref in done:
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died (out of memory, a lost node)
                        yield CellOutcome(cell_of[ref], error=f"{type(exc).__name__}: {exc}")
        finally:  # interrupted: a cluster outlives the driver, so stop what it would still run
            for ref in waiting:
                ray.cancel(ref)
