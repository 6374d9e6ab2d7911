"""The benchmark grid on a real local Ray (two worker CPUs on 127.0.0.1): the same rows as a local run,
checkpoints reused, and a failing cell reported while the others are saved."""

from __future__ import annotations

import pandas as pd
import pytest
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from experiments.harness import Benchmark, BenchmarkConfig, CellsFailed

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'rledit-env[ray]'")

from experiments.ray_backend import RayExecutor  # noqa: E402

TIMING = ["time_per_edit_s", "edit_time_s", "train_time_s", "stats_time_s", "peak_memory_mib", "wall_time_s"]
SMALL_NET = {"rank": 16, "num_blocks": 1, "train_num_batches": 2}


def _config(**settings) -> BenchmarkConfig:
    return BenchmarkConfig(
        model="tinyworld-tiny",
        schedules=["2x3"],
        metrics_every=1,
        agent_configs={"rledit": SMALL_NET},
        **settings,
    )


def _comparable(results: pd.DataFrame) -> pd.DataFrame:
    return results.drop(columns=TIMING).sort_values(["agent", "seed", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_cells_give_the_local_rows_and_resume(tmp_path, local_ray, monkeypatch):
    config = _config(agents=["rledit", "noedit", "finetune"], seeds=[0, 1], train_episodes={"rledit": 2})
    local = Benchmark(config, tmp_path / "local", progress=False).run()
    monkeypatch.chdir(tmp_path)  # the workers started elsewhere: a relative --out is the driver's
    on_ray = Benchmark(config, "ray", progress=False).run(RayExecutor(cpus_per_run=1))
    assert len(on_ray) == len(local) == 3 * 2 * 2  # agents x seeds x evaluation points
    pd.testing.assert_frame_equal(_comparable(on_ray), _comparable(local))
    assert list(on_ray["agent"].unique()) == config.agents  # in the configuration's order, as finished or not
    for seed in (0, 1):  # trained in the workers, into the shared results folder
        assert (tmp_path / "ray" / "checkpoints" / f"rledit-2x3-seed{seed}.safetensors").exists()
    assert Benchmark(config, tmp_path / "ray", progress=False).pending() == []  # nothing left to run
    # the results gone but the checkpoints kept: the workers load RLEdit instead of training it again
    (tmp_path / "ray" / "results.csv").unlink()
    again = Benchmark(_config(agents=["rledit"], seeds=[0, 1]), tmp_path / "ray", progress=False)
    reloaded = again.run(RayExecutor())
    assert (reloaded["train_time_s"] == 0).all()
    trained = _comparable(local[local["agent"] == "rledit"])
    # without a no-edit row in its configuration a run records the unedited model's Eff itself
    assert reloaded["eff_unedited"].notna().sum() == 2  # one final row per seed
    pd.testing.assert_frame_equal(_comparable(reloaded.drop(columns="eff_unedited")), trained)


@pytest.mark.slow
def test_a_failing_cell_is_reported_and_the_others_are_saved(tmp_path, local_ray, capsys):
    config = _config(agents=["rledit", "noedit"], seeds=[0])
    bench = Benchmark(config, tmp_path, progress=False, checkpoints={"rledit": tmp_path / "missing.pt"})
    with pytest.raises(CellsFailed, match="rledit 2x3 seed 0"):
        bench.run(RayExecutor())
    out = capsys.readouterr().out
    assert "Traceback" in out and "missing.pt" in out
    saved = pd.read_csv(tmp_path / "results.csv")
    assert set(saved["agent"]) == {"noedit"}
    assert bench.pending() == [("rledit", "2x3", 0)]  # the failed cell runs again next time
