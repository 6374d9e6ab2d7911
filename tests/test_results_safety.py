"""Results survive a kill at any moment, and one results folder takes one benchmark process at a time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from experiments.cli import main
from experiments.harness import Benchmark, BenchmarkConfig
from experiments.lock import LOCK_NAME, ResultsFolderBusy, results_lock
from rledit_env.atomic import atomic_path, write_text_atomic

METRICS = ["agent", "seed", "step", "eff", "gen", "spe", "eff_acc", "gen_acc", "spe_acc", "ppl"]


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def test_a_write_killed_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.md"
    write_text_atomic(path, "old\n")
    with pytest.raises(Killed), atomic_path(path) as tmp:
        tmp.write_text("new, but half of it")
        raise Killed
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_a_benchmark_killed_while_writing_results_resumes_to_the_uninterrupted_table(tmp_path, monkeypatch):
    config = BenchmarkConfig(model="tinyworld-tiny", schedules=["2x3"], agents=["noedit"], seeds=[0, 1, 2])
    uninterrupted = Benchmark(config, tmp_path / "whole", progress=False).run()

    real_to_csv, calls = pd.DataFrame.to_csv, []

    def dies_on_the_second_write(frame, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second run's rows: half the file is written, then the process dies
            text = frame.to_string()
            Path(path).write_text(text[: len(text) // 2])
            raise Killed
        return real_to_csv(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_on_the_second_write)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        Benchmark(config, out, progress=False).run()
    monkeypatch.undo()
    survived = pd.read_csv(out / "results.csv")  # the first run's rows, whole
    assert set(survived["seed"]) == {0}
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "results.csv"]  # no torn or temporary file

    resumed = Benchmark(config, out, progress=False).run()
    pd.testing.assert_frame_equal(resumed[METRICS], uninterrupted[METRICS])


# every registered agent whose runs can go on mid-episode, trained ones left out (their training is
# what a resumed run loads from checkpoints/, as any rerun does)
RESUMABLE = ["noedit", "ultraedit", "stableedit", "rledit-untrained", "finetune", "memit", "alphaedit"]
TIMINGS = {"time_per_edit_s", "edit_time_s", "train_time_s", "stats_time_s", "stats_cached", "probe_time_s"}
TIMINGS |= {"peak_memory_mib", "wall_time_s", "pieces"}


@pytest.mark.parametrize("agent", RESUMABLE)
def test_a_run_killed_mid_episode_goes_on_from_its_progress_to_the_uninterrupted_rows(
    tmp_path, monkeypatch, agent
):
    config = BenchmarkConfig(
        model="tinyworld-tiny", schedules=["6x2"], agents=[agent], metrics_every=2, progress_every_s=0.0
    )
    whole = Benchmark(config, tmp_path / "whole", progress=False).run()
    assert not list((tmp_path / "whole" / "progress").iterdir())  # removed once the rows are in

    import agents

    real = agents.run_episode

    def killed_after_three_batches(env, agent, *, on_step, **kwargs):
        done = []

        def step(info):
            on_step(info)
            done.append(info["step"])
            if len(done) == 3:  # the progress of step 3 is saved before on_step runs
                raise Killed

        return real(env, agent, on_step=step, **kwargs)

    monkeypatch.setattr(agents, "run_episode", killed_after_three_batches)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        Benchmark(config, out, progress=False).run()
    monkeypatch.undo()
    assert [p.name for p in (out / "progress").iterdir()] == [f"{agent}-6x2-seed0.safetensors"]

    # the benchmark's other agents may change between pieces; this run's settings may not
    config.agents = [agent, "gradient"]
    resumed = Benchmark(config, out, progress=False).run()
    resumed = resumed[resumed["agent"] == agent].reset_index(drop=True)
    compared = [c for c in whole.columns if c not in TIMINGS]
    # every metric, bit for bit (dtypes aside: the other agent's empty cells make some columns float)
    pd.testing.assert_frame_equal(resumed[compared], whole[compared], check_dtype=False, check_exact=True)
    assert list(resumed["pieces"]) == [2, 2, 2] and list(whole["pieces"]) == [1, 1, 1]
    assert not list((out / "progress").iterdir())


def test_a_progress_unreadable_or_of_other_settings_is_not_used(tmp_path, monkeypatch):
    config = BenchmarkConfig(
        model="tinyworld-tiny", schedules=["4x2"], agents=["ultraedit"], progress_every_s=0.0
    )
    out = tmp_path / "run"
    folder = out / "progress"
    folder.mkdir(parents=True)
    (folder / "ultraedit-4x2-seed0.safetensors").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="starts over"):
        rows = Benchmark(config, out, progress=False).run()
    assert list(rows["pieces"]) == [1] and not list(folder.iterdir())

    import agents

    real = agents.run_episode

    def killed_after_two_batches(env, agent, *, on_step, **kwargs):
        def step(info):
            on_step(info)
            if info["step"] == 2:
                raise Killed

        return real(env, agent, on_step=step, **kwargs)

    monkeypatch.setattr(agents, "run_episode", killed_after_two_batches)
    with pytest.raises(Killed):
        Benchmark(config, tmp_path / "again", progress=False).run()
    monkeypatch.undo()
    config.agent_configs = {"ultraedit": {"lr": 1e-3}}  # another step size: the saved progress is not its
    with pytest.warns(UserWarning, match="other settings"):
        rows = Benchmark(config, tmp_path / "again", progress=False).run()
    assert list(rows["pieces"]) == [1]


def _hold_lock_in_another_process(folder: Path) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from experiments.lock import results_lock\n"
        f"with results_lock({str(folder)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_on_the_same_results_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "results"
    holder = _hold_lock_in_another_process(out)
    try:
        argv = ["benchmark", "--model", "tinyworld-tiny", "--schedule", "2x3", "--agents", "noedit", "-q"]
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another benchmark process (pid {holder.pid})" in err
        assert len(err.splitlines()) == 1
        with pytest.raises(ResultsFolderBusy):
            Benchmark(BenchmarkConfig(model="tinyworld-tiny", agents=["noedit"]), out).run()
        assert not (out / "results.csv").exists()
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its stdout pipe (else a ResourceWarning at collection)
    # killed with SIGKILL: its pid is still in the lock file, but the process is gone, so the lock is stale
    assert (out / LOCK_NAME).read_text().strip() == str(holder.pid)
    with results_lock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        with results_lock(out):  # re-entrant in the process that holds it
            pass
    assert main([*argv, "--out", str(out)]) == 0
    assert (out / "results.csv").exists()
