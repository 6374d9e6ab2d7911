"""Which runs of a results table are done, under which evaluation protocol, and how reports read it."""

from __future__ import annotations

import pandas as pd
from test_cli import _bench

from experiments.cli import main
from experiments.results_table import covers, done_runs, latest_runs, read_results


def _rows(protocol, agent="noedit", value=0.0):
    row = {"agent": agent, "model": "m", "dataset": "d", "schedule": "2x3", "seed": 0, "eff": value}
    return [{**row, "step": s, "evaluation": protocol} for s in (1, 2)]


def test_a_run_is_done_under_its_protocol_or_a_wider_one():
    assert covers("both", "teacher_forced") and covers("both", "generation")
    assert covers("generation", "generation") and not covers("teacher_forced", "both")
    table = pd.DataFrame(_rows("teacher_forced") + _rows("both", agent="memit"))
    assert done_runs(table, "teacher_forced") == {
        ("noedit", "m", "d", "2x3", "0"),
        ("memit", "m", "d", "2x3", "0"),
    }
    assert done_runs(table, "both") == {("memit", "m", "d", "2x3", "0")}
    earlier = pd.DataFrame(_rows("teacher_forced")).drop(columns="evaluation")  # before the column existed
    assert done_runs(earlier, "teacher_forced") and not done_runs(earlier, "generation")


def test_reports_keep_each_runs_latest_protocol_only(tmp_path):
    table = pd.DataFrame(
        _rows("teacher_forced", value=0.1) + _rows("both", value=0.2) + _rows("both", "memit")
    )
    latest = latest_runs(table)
    assert len(latest) == 4 and set(latest["evaluation"]) == {"both"}
    assert latest.loc[latest["agent"] == "noedit", "eff"].tolist() == [0.2, 0.2]
    table.to_csv(tmp_path / "results.csv", index=False)
    pd.testing.assert_frame_equal(read_results(tmp_path / "results.csv"), latest)


def test_resuming_with_a_wider_protocol_runs_again_and_reports_once(tmp_path):
    first = _bench(tmp_path, "noedit", "--evaluation", "teacher_forced")
    assert set(first["evaluation"]) == {"teacher_forced"}
    again = _bench(tmp_path, "noedit", "--evaluation", "both")  # re-run: the table holds both runs' rows
    assert len(again) == 2 * len(first) and "eff_em" in again
    resumed = _bench(tmp_path, "noedit", "--evaluation", "generation")  # covered by "both": nothing runs
    assert len(resumed) == len(again)
    shown = read_results(tmp_path / "results.csv")
    assert len(shown) == len(first) and set(shown["evaluation"]) == {"both"}
    # the teacher-forced metrics do not depend on the protocol: the same edits, the same model
    pd.testing.assert_frame_equal(shown[["eff", "eff_acc", "ppl"]], first[["eff", "eff_acc", "ppl"]])
    assert main(["report", str(tmp_path)]) == 0
    assert "eff_em" in (tmp_path / "summary.md").read_text()
