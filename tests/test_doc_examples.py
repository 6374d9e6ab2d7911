"""Every code example of the README and examples/README.md runs, shortened where it must be, and does
what its text claims. A new example fails ``test_every_example_is_run_or_excused`` until it is added
here (run, with its claim checked) or excused (with the test that covers it)."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from single_thread import one_torch_thread  # noqa: F401  (autouse)

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)

# (file, first line of the block) -> why it is not run here
EXCUSED = {
    ("README.md", "bash scripts/setup.sh && python -m experiments demo"): "the main command: newcomer-check",
    ("README.md", "bash scripts/test.sh"): "the test command: CI runs it",
    ("README.md", 'pip install -e ".[docs]" && bash scripts/docs.sh'): "tests/test_docs.py builds the site",
}


def blocks(name: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block of ``name`` (relative to the repository)."""
    return BLOCK.findall((ROOT / name).read_text())


def block(name: str, first_line: str) -> str:
    found = [code for _, code in blocks(name) if code.strip().splitlines()[0].startswith(first_line)]
    assert len(found) == 1, f"{name}: no single block starting with {first_line!r}"
    return found[0]


def shortened(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the example no longer has {old!r}: update its test"
        code = code.replace(old, new)
    return code


def run_python(code: str, namespace: dict | None = None) -> tuple[dict, str]:
    """Execute an example as a script would; its namespace and what it printed."""
    namespace = {} if namespace is None else namespace
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<example>", "exec"), namespace)
    return namespace, out.getvalue()


def printed_metrics(output: str) -> dict:
    return ast.literal_eval(output.strip().splitlines()[-1])


TESTED = {
    ("README.md", "import dataclasses"),
    ("examples/README.md", "import gymnasium as gym"),
    ("examples/README.md", "from agents import run_episode"),
    ("examples/README.md", "python examples/cem_agent.py"),
    ("examples/README.md", "python -m experiments benchmark --config tinyworld-lifelong"),
}


def test_every_example_is_run_or_excused():
    for name in ("README.md", "examples/README.md"):
        for _, code in blocks(name):
            first = code.strip().splitlines()[0]
            key = next((k for k in (*EXCUSED, *TESTED) if k[0] == name and first.startswith(k[1])), None)
            assert key is not None, f"{name}: the example starting {first!r} is neither run here nor excused"


def test_the_readme_agent_edits_tinyworld():
    from agents import NoEdit, run_episode
    from rledit_env.envs import LifelongEditEnv

    namespace, output = run_python(block("README.md", "import dataclasses"))
    metrics = printed_metrics(output)  # its claim: an agent of a dozen lines edits the model
    same_edits = LifelongEditEnv("tinyworld", num_batches=10, batch_size=10, action_type="shift")
    unedited = run_episode(same_edits, NoEdit(same_edits), seed=0)["metrics"]
    assert metrics["eff"] >= unedited["eff"] + 0.3 and metrics["gen"] >= unedited["gen"] + 0.3


def test_the_sb3_guide_trains_logs_evaluates_and_round_trips(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)  # tensorboard_log="runs", the checkpoint file
    train = shortened(
        block("examples/README.md", "import gymnasium as gym"), {"model.learn(1000": "model.learn(200"}
    )
    namespace, _ = run_python(train)
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events and b"edit/eff" in b"".join(p.read_bytes() for p in events)  # what the comment says

    evaluate = shortened(
        block("examples/README.md", "from agents import run_episode"), {"num_batches=20": "num_batches=3"}
    )
    namespace, output = run_python(evaluate, namespace)
    assert {"eff", "gen", "spe"} <= set(printed_metrics(output))
    original, loaded = namespace["model"], namespace["agent"].model
    params = original.policy.state_dict()
    assert all((params[k] == v).all() for k, v in loaded.policy.state_dict().items())  # save/load round-trip


def test_the_cem_example_script_runs():
    result = subprocess.run(
        [sys.executable, "examples/cem_agent.py"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CEM found (start step, end step) =" in result.stdout
    assert "eff" in printed_metrics(result.stdout)


def test_the_benchmark_command_with_your_agent_runs(tmp_path):
    command = block("examples/README.md", "python -m experiments benchmark --config tinyworld-lifelong")
    argv = command.replace("\\\n", " ").split()[3:]  # after "python -m experiments"
    short = [
        "--model",
        "tinyworld-tiny",
        "--schedule",
        "2x4",
        "--train-episodes",
        "2",
        "--metrics-every",
        "0",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "experiments", *argv, *short, "--out", str(tmp_path), "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    agents = set(pd.read_csv(tmp_path / "results.csv")["agent"])
    assert agents == {"rledit", "finetune", "noedit", "ppo", "sac", "examples.cem_agent:CEMStepSizes"}
