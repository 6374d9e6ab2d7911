"""Results as a person reads them: a markdown summary, retention curves and editing-time plots."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from experiments.results_table import read_results
from rledit_env.atomic import write_text_atomic
from rledit_env.general_probe import COLUMNS as PROBE_COLUMNS
from rledit_env.generation import GENERATION_METRICS

METRICS = ["eff", "gen", "spe", "eff_acc", "gen_acc", "spe_acc", "spe_agree", "ppl"]
TEACHER_FORCED = ["eff", "gen", "spe", "eff_acc", "gen_acc", "spe_acc", "spe_agree"]
# mean seconds over seeds: editing per edit, the agent's training, the whole run (retention evaluations too)
TIMES = ["time_per_edit_s", "train_time_s", "wall_time_s"]
PROBE_NOTE = (
    " glue_*/mmlu: few-shot label-word accuracy of the general-ability probe after the sequence "
    "(rledit_env.general_probe); results.csv also holds the unedited model's as *_before."
)


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (agent, model, dataset, schedule): final metrics as mean (and std over seeds)."""
    final = results[results["final"].astype(bool)]
    keys = ["agent", "model", "dataset", "schedule"]
    metrics = [m for m in METRICS + PROBE_COLUMNS if m in final.columns]
    times = [t for t in TIMES if t in final.columns]
    grouped = final.groupby(keys, sort=False)[metrics + times]
    mean, std, seeds = grouped.mean(), grouped.std(), grouped.size()
    table = pd.DataFrame(index=mean.index)
    for m in metrics:
        table[m] = [_cell(a, b, seeds.loc[i]) for i, a, b in zip(mean.index, mean[m], std[m], strict=True)]
    table["ms_per_edit"] = (1000 * mean["time_per_edit_s"]).round(2)
    if "rledit" in mean.index.get_level_values("agent"):
        rledit = mean.xs("rledit", level="agent")["time_per_edit_s"]
        ratios = []
        for idx, t in zip(mean.index, mean["time_per_edit_s"], strict=True):
            ref = rledit.get(idx[1:])
            ratios.append(round(t / ref, 2) if ref else float("nan"))
        table["time_vs_rledit"] = ratios
    for column, name in (("train_time_s", "train_s"), ("wall_time_s", "wall_s")):
        if column in times:  # absent from results written before they were recorded
            table[name] = mean[column].round(0)
    table["seeds"] = seeds.values
    return table.reset_index()


def has_metrics(results: pd.DataFrame, metrics: Sequence[str]) -> bool:
    """Whether any of ``metrics`` has a value in ``results``."""
    return any(m in results.columns and results[m].notna().any() for m in metrics)


def generation_table(results: pd.DataFrame) -> pd.DataFrame | None:
    """The generation suite's final metrics (eff_em, gen_em, spe_em, spe_em_agree), one row per (agent,
    model, dataset, schedule), mean (and std over seeds); None when no row has them."""
    final = results[results["final"].astype(bool)]
    metrics = [m for m in GENERATION_METRICS if m in final.columns]
    if not has_metrics(final, metrics):
        return None
    final = final.dropna(subset=metrics, how="all")
    grouped = final.groupby(["agent", "model", "dataset", "schedule"], sort=False)[metrics]
    mean, std, seeds = grouped.mean(), grouped.std(), grouped.size()
    table = pd.DataFrame(index=mean.index)
    for m in metrics:
        table[m] = [_cell(a, b, seeds.loc[i]) for i, a, b in zip(mean.index, mean[m], std[m], strict=True)]
    table["seeds"] = seeds.values
    return table.reset_index()


NO_EDIT_MARGIN = 0.05  # an editor whose final Eff is this close to the unedited model's did not edit
NON_EDITORS = ("noedit",)


def did_not_edit(results: pd.DataFrame) -> list[str]:
    """One warning per (agent, schedule) whose final Eff, mean over seeds, is within ``NO_EDIT_MARGIN``
    of the unedited model's on the same edits (the no-edit rows of the same schedule and seeds, else
    each row's ``eff_unedited``): a step size too small for the model must never pass for a result."""
    final = results[results["final"].astype(bool)]
    column = "eff" if has_metrics(final, ["eff"]) else "eff_em"  # a generation-only run has no "eff"
    if final.empty or column not in final.columns:
        return []
    noedit = final[final["agent"].isin(NON_EDITORS)].groupby(["schedule", "seed"])[column].mean()
    warnings = []
    for (agent, schedule), part in final.groupby(["agent", "schedule"], sort=False):
        if agent in NON_EDITORS or part[column].isna().all():
            continue
        reference = [noedit.get((schedule, seed)) for seed in part["seed"]]
        if any(r is None for r in reference):
            if "eff_unedited" not in part.columns or part["eff_unedited"].isna().any():
                continue  # no reference recorded (results from before this check)
            reference = list(part["eff_unedited"])
        eff, unedited = float(part[column].mean()), float(sum(reference) / len(reference))
        if eff - unedited < NO_EDIT_MARGIN:
            warnings.append(
                f"{agent} {schedule} did not edit: final {column} {eff:.3f} against {unedited:.3f} unedited "
                "on the same edits (step size too small for this model? see rledit_env.tuned_settings)"
            )
    return warnings


def _cell(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.3f}" if n < 2 or pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def protocol_line(results: pd.DataFrame) -> str:
    """The evaluation protocol of ``results`` in one line: when and how metrics are computed, what Spe
    compares with, and the closed-form editors' statistics corpus and its size (from the rows)."""

    def recorded(column: str) -> list:
        return list(results[column].dropna().unique()) if column in results.columns else []

    spe = "; ".join(map(str, recorded("spe_reference"))) or "not recorded"
    corpora = results.dropna(subset=["stats_corpus"]) if "stats_corpus" in results.columns else results[:0]
    stats = "; ".join(
        f"{corpus} ({int(count)} texts)"
        for corpus, count in corpora.groupby("stats_corpus", sort=False)["stats_texts"].max().items()
    )
    evaluations = recorded("evaluation") or ["teacher_forced"]  # results from before the setting
    how = "; ".join(EVALUATION_PROTOCOL.get(str(e), str(e)) for e in evaluations)
    spe_line = (
        f"Spe reference: {spe} (spe_agree: agreement with the unedited model); "
        if any(e != "generation" for e in evaluations)
        else ""
    )
    return (
        "Protocol: final evaluation over all edits of the sequence after its last batch (curves: over the "
        f"edits so far); {how}; {spe_line}MEMIT/AlphaEdit key statistics: {stats or 'none in this run'}."
    )


_TEACHER_FORCED = "teacher-forced (gold answer tokens, no generation)"
_GENERATION = (
    "by greedy generation (exact match: the normalised generation begins with the answer; budget the "
    "gold answer's tokens + 3, stopping at EOS or the first clause; spe_em against the locality "
    "answer, spe_em_agree against the unedited model's generation)"
)
EVALUATION_PROTOCOL = {  # the results' "evaluation" column -> how the protocol line says it
    "teacher_forced": _TEACHER_FORCED,
    "generation": _GENERATION,
    "both": f"both {_TEACHER_FORCED} and {_GENERATION}, in separate tables",
}


def write_markdown(results: pd.DataFrame, path: Path, title: str) -> str:
    table = summary_table(results)
    text = (
        f"# {title}\n\n" + protocol_line(results) + "\n\n"
        "Final metrics over all edits of the sequence (mean ± std over seeds). eff/gen/spe are the "
        "headline suite of the dataset family (CounterFact: P(new) > P(true); ZsRE/FEVER: token "
        "accuracy); *_acc the token-accuracy suite. ms_per_edit is editing time (the agent's act, the "
        "update and the tracing of keys and gradients), not scoring; train_s the agent's training "
        "(not in ms_per_edit); wall_s the whole run of that agent, retention evaluations included."
        + (PROBE_NOTE if any(c in table.columns for c in PROBE_COLUMNS) else "")
        + "\n\n"
        + table.to_markdown(index=False)
        + "\n"
        + _generation_section(results)
        + "".join(f"\n**Warning:** {w}\n" for w in did_not_edit(results))
    )
    write_text_atomic(path, text)
    return text


def _generation_section(results: pd.DataFrame) -> str:
    """The generation suite's table under its own heading ("" when the results have none)."""
    table = generation_table(results)
    if table is None:
        return ""
    return (
        "\n## Generation (exact match)\n\n"
        "The same final evaluation by greedy generation (`rledit_env.generation`): eff_em/gen_em the share "
        "of edit/paraphrase prompts whose generation begins with the new answer, spe_em of locality "
        "prompts whose generation begins with their ground-truth answer, spe_em_agree of locality "
        "prompts whose generation is the unedited model's. Not comparable with the teacher-forced "
        "columns above.\n\n" + table.to_markdown(index=False) + "\n"
    )


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_results(results: pd.DataFrame, out_dir: Path, logs_dir: Path | None = None) -> list[Path]:
    """Retention curves (eff/gen/spe against the number of edits), time per edit per agent, and the
    trained agents' learning curves (from the training logs in ``logs_dir``, default ``out_dir``)."""
    plt = _pyplot()
    written = []
    for schedule, part in results.groupby("schedule", sort=False):
        if has_metrics(part, TEACHER_FORCED) or not has_metrics(part, GENERATION_METRICS):
            title = f"Lifelong editing, schedule {schedule}"
            written.append(_plot_retention(part, title, out_dir / f"retention-{schedule}.png"))
        if has_metrics(part, GENERATION_METRICS):  # the other suite, in a figure of its own
            title = f"Lifelong editing, schedule {schedule}, by generation (exact match)"
            path = out_dir / f"generation-retention-{schedule}.png"
            written.append(_plot_retention(part, title, path, GENERATION_METRICS[:3]))
    final = results[results["final"].astype(bool)]
    times = final.groupby("agent", sort=False)["time_per_edit_s"].mean() * 1000
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(times.index, times.values, color="tab:blue")
    ax.set_ylabel("ms per edit")
    ax.set_yscale("log")
    ax.set_title("Editing time per edit")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path = out_dir / "time-per-edit.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    curves = plot_training(logs_dir or out_dir, out_dir)
    return written + ([curves] if curves else [])


def plot_retention(curves: Mapping[str, Sequence[Mapping[str, float]]], path: Path, title: str) -> Path:
    """Retention curves of single episodes, one per label: ``{label: info["curve"]}`` (an episode's
    metrics every ``metrics_every`` steps, as ``run_episode(...)["curve"]`` also returns it)."""
    rows = [{"agent": label, "seed": 0, **point} for label, curve in curves.items() for point in curve]
    return _plot_retention(pd.DataFrame(rows), title, Path(path))


def _plot_retention(
    results: pd.DataFrame, title: str, path: Path, metrics: Sequence[str] = ("eff", "gen", "spe")
) -> Path:
    """Eff/Gen/Spe (or ``metrics``) against the number of edits, one line per agent (mean and spread
    over seeds)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for ax, metric in zip(axes, metrics, strict=True):
        if metric not in results.columns or results[metric].isna().all():
            continue
        for agent, rows in results.groupby("agent", sort=False):
            curve = rows.groupby("edits")[metric].agg(["mean", "std"]).reset_index()
            ax.plot(curve["edits"], curve["mean"], marker="o", ms=3, label=agent)
            if len(rows["seed"].unique()) > 1:
                ax.fill_between(
                    curve["edits"], curve["mean"] - curve["std"], curve["mean"] + curve["std"], alpha=0.15
                )
        ax.set_title(metric)
        ax.set_xlabel("edits made")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score over all edits so far")
    axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


TRAINING_LOG = re.compile(r"training-(?P<agent>.+)-(?P<schedule>\d+x\d+)-seed(?P<seed>-?\d+)\.csv")


def training_log_name(agent: str, schedule: str, seed: int, kind: str = "training") -> str:
    """The file an agent's training log (``kind="training"``; ``TRAINING_LOG`` reads it) or validation log
    (``"validation"``) is saved to in a results folder."""
    return f"{kind}-{agent}-{schedule}-seed{seed}.csv"


def plot_training(logs_dir: Path, out_dir: Path | None = None, window: int = 5) -> Path | None:
    """Learning curves of the trained agents (the harness's ``training-<agent>-<schedule>-seed<k>.csv``
    in ``logs_dir``), as ``training-curves.png`` in ``out_dir`` (default ``logs_dir``): training loss per
    episode and its running mean over ``window`` episodes, one panel per agent (their losses differ in
    kind: RLEdit's sums a backtracking window, MALMEN's is one step's). None if no agent left a log."""
    out_dir = out_dir or logs_dir
    logs: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for path in sorted(logs_dir.glob("training-*.csv")):
        match = TRAINING_LOG.fullmatch(path.name)
        if match is None:
            continue
        log = pd.read_csv(path)
        if {"episode", "loss"} <= set(log.columns):
            logs.setdefault(match["agent"], []).append((f"{match['schedule']} seed {match['seed']}", log))
    if not logs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(logs), figsize=(4.5 * len(logs), 3.5), squeeze=False)
    for ax, (agent, runs) in zip(axes[0], logs.items(), strict=True):
        for label, log in runs:
            (line,) = ax.plot(log["episode"], log["loss"], alpha=0.25)
            smooth = log["loss"].rolling(window, min_periods=1).mean()
            ax.plot(log["episode"], smooth, color=line.get_color(), label=label)
        ax.set_title(f"{agent}: training loss")
        ax.set_xlabel("training episode")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "training-curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """Configuration, package versions, device and git commit: what a results folder must record."""
    packages = {}
    for name in ("rledit-env", "torch", "transformers", "gymnasium", "stable-baselines3", "numpy", "pandas"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})"
    )
    return {
        "config": config,
        "packages": packages,
        "python": platform.python_version(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
    }


def write_metadata(config: dict[str, Any], out_dir: Path, results: pd.DataFrame | None = None) -> None:
    """run.json: ``run_metadata(config)`` and, from ``results``, each agent's settings that were left at
    "auto" with the value each got and where from (the model's table, a calibration)."""
    metadata = run_metadata(config)
    if results is not None and "auto_settings" in results.columns:
        final = results[results["final"].astype(bool)].dropna(subset=["auto_settings"])
        filled = {a: json.loads(p["auto_settings"].iloc[-1]) for a, p in final.groupby("agent", sort=False)}
        metadata["agent_settings"] = {agent: settings for agent, settings in filled.items() if settings}
    write_text_atomic(out_dir / "run.json", json.dumps(metadata, indent=2, default=str))


# --- documentation pages --------------------------------------------------------------------------------

NOTES = "notes.md"  # a results folder's hand-written reading: how it ran, what it shows (dated)
_PLOTS = (
    ("retention-*.png", "Eff, Gen and Spe over all edits so far, along the sequence"),
    ("generation-retention-*.png", "the same by greedy generation (exact match)"),
    ("training-curves.png", "training loss of the trained agents"),
    ("time-per-edit.png", "editing time per edit"),
)
_LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?\))")


def docs_page(results_dir: Path, page_dir: Path) -> str:
    """The documentation page of a results folder, made only from what the folder holds, so that it is
    never edited by hand: its ``summary.md`` (title, protocol, the table ``rledit report`` wrote), token
    accuracy and perplexity along the sequence (from ``results.csv``), its plots, the files beside them,
    and ``notes.md`` if the folder has one (the run's commands, dates and reading, kept with the results).
    Links point from ``page_dir``, where the page will live, into ``results_dir``."""
    results_dir, page_dir = Path(results_dir), Path(page_dir)
    summary_path = results_dir / "summary.md"
    if not summary_path.is_file():
        raise FileNotFoundError(f"no {summary_path}: run `rledit report {results_dir}` first")
    summary = summary_path.read_text().strip().splitlines()
    title = summary[0].lstrip("# ").strip()
    where = _relative(results_dir, page_dir)
    parts = [
        f"# {title}",
        f"*Generated from `{results_dir.as_posix()}/` (its `summary.md`, `results.csv` and plots) by "
        f"`rledit report {results_dir.as_posix()} --docs-page PAGE`: change the results or `{NOTES}`, "
        "not this page.*",
        "\n".join(summary[1:]).strip(),
    ]
    results = read_results(results_dir / "results.csv")
    along = along_the_sequence(results)
    if along:
        parts.append(along)
    for pattern, caption in _PLOTS:
        for png in sorted(results_dir.glob(pattern)):
            parts.append(f"![{caption}]({where}{png.name})")
    files = sorted(p.name for p in results_dir.iterdir() if p.suffix == ".csv")
    parts.append("Files: " + ", ".join(f"[`{name}`]({where}{name})" for name in files) + ".")
    notes = results_dir / NOTES
    if notes.is_file():
        parts.append(_relink(notes.read_text().strip(), results_dir, page_dir))
    return "\n\n".join(parts) + "\n"


def along_the_sequence(results: pd.DataFrame) -> str:
    """Token accuracy over all edits so far (``eff_acc``) and perplexity at each evaluation point of the
    first seed, one column per agent, as markdown ("" if the results hold no curve)."""
    if "edits" not in results.columns or results["edits"].nunique() < 2:
        return ""
    seed = results["seed"].min()
    rows = results[results["seed"] == seed]
    tables = []
    for metric, fmt, what in (
        ("eff_acc", "{:.3f}", "Token accuracy over all edits so far (`eff_acc`)"),
        ("eff_em", "{:.3f}", "Exact match by generation over all edits so far (`eff_em`)"),
        ("ppl", "{:,.1f}", "Perplexity"),
    ):
        if metric not in rows.columns or rows[metric].isna().all():
            continue
        wide = rows.pivot_table(index="edits", columns="agent", values=metric, sort=False)
        wide = wide[[a for a in rows["agent"].unique() if a in wide.columns]]
        wide.index = [f"{int(e):,}" for e in wide.index]
        wide = wide.map(lambda v, fmt=fmt: "-" if pd.isna(v) else fmt.format(v))
        tables.append(
            f"{what} along the sequence, seed {seed}:\n\n"
            + wide.rename_axis("edits").to_markdown(disable_numparse=True, stralign="right")
        )
    return "\n\n".join(tables)


def _relative(results_dir: Path, page_dir: Path) -> str:
    path = Path(os.path.relpath(results_dir, page_dir)).as_posix()
    return "" if path == "." else path + "/"


def _relink(text: str, results_dir: Path, page_dir: Path) -> str:
    """``text``'s relative markdown links, written from ``results_dir``, rewritten from ``page_dir``."""

    def move(match: re.Match) -> str:
        target = match[2]
        if "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        moved = os.path.relpath(os.path.normpath(results_dir / target), page_dir)
        return f"{match[1]}{Path(moved).as_posix()}{match[3]}"

    return _LINK.sub(move, text)


# --- EasyEdit's names -----------------------------------------------------------------------------------

# (EasyEdit section, its result key, our column) per protocol; docs/protocols.md explains the mapping.
EASYEDIT_NAMES = {
    "teacher_forced": (("rewrite", "rewrite_acc", "eff_acc"), ("rephrase", "rephrase_acc", "gen_acc")),
    "generation": (("rewrite", "rewrite_acc", "eff_em"), ("rephrase", "rephrase_acc", "gen_em")),
}
EASYEDIT_LOCALITY = {"teacher_forced": "spe_agree", "generation": "spe_em_agree"}  # post against pre
EASYEDIT_META = {  # EasyEdit's metric_meta fields (easyeditor/evaluate/metric_meta.py)
    "teacher_forced": {
        "protocol": "decoder_only_teacher_forcing",
        "scorer": "token_accuracy",
        "comparable_group": "lm.decoder_only_teacher_forcing.token_accuracy",
    },
    "generation": {  # ours: EasyEdit has no greedy prefix exact match; its nearest is exact_match_fallback
        "protocol": "greedy_generation_exact_match",
        "scorer": "prefix_exact_match",
        "comparable_group": "rledit.greedy_generation.prefix_exact_match",
    },
}
_SEMANTIC = {"rewrite": "reliability", "rephrase": "generalization", "locality": "locality"}
# our other columns of each protocol, kept beside EasyEdit's names
_OWN_COLUMNS = {
    "teacher_forced": ["eff", "gen", "spe", "spe_acc", "eff_prob", "gen_prob", "spe_prob"],
    "generation": ["spe_em"],
}


def easyedit_records(results: pd.DataFrame) -> list[dict[str, Any]]:
    """The final metrics of ``results`` under EasyEdit's names: one record per agent, schedule, seed and
    protocol (a run with both suites gives two), each with "pre" (the unedited model on the same edits:
    the no-edit run of the same schedule and seed, when the results have one; else null) and "post"
    dicts shaped as EasyEdit's ``summary_metrics`` output (``rewrite_acc``, ``rephrase_acc``,
    ``locality: {neighborhood_acc}``, and ``metric_meta`` per section tagging its protocol)."""
    final = results[results["final"].astype(bool)]
    noedit = {
        (row["schedule"], row["seed"]): row for _, row in final[final["agent"].isin(NON_EDITORS)].iterrows()
    }
    records = []
    for _, row in final.iterrows():
        for protocol in EASYEDIT_NAMES:
            post = _easyedit_metrics(row, protocol)
            if post is None:
                continue
            reference = noedit.get((row["schedule"], row["seed"]))
            records.append(
                {
                    "agent": row["agent"],
                    "model": row["model"],
                    "dataset": row["dataset"],
                    "schedule": row["schedule"],
                    "seed": int(row["seed"]),
                    "edits": int(row["edits"]) if "edits" in row and pd.notna(row["edits"]) else None,
                    "protocol": EASYEDIT_META[protocol]["protocol"],
                    "evaluation": protocol,
                    "pre": None if reference is None else _easyedit_metrics(reference, protocol),
                    "post": post,
                }
            )
    return records


def _easyedit_metrics(row: pd.Series, protocol: str) -> dict[str, Any] | None:
    """One row's metrics of one protocol under EasyEdit's names, with ours under "rledit"; None if the
    row has none of that protocol."""

    def value(column: str) -> float | None:
        return float(row[column]) if column in row and pd.notna(row[column]) else None

    out: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    ours: dict[str, float] = {}
    locality = EASYEDIT_LOCALITY[protocol]
    for section, key, column in (*EASYEDIT_NAMES[protocol], ("locality", "neighborhood_acc", locality)):
        if value(column) is None:
            continue
        if section == "locality":
            out["locality"] = {key: value(column)}
        else:
            out[key] = value(column)
        meta[section] = {"result_key": key, "semantic": _SEMANTIC[section], **EASYEDIT_META[protocol]}
        ours[column] = value(column)
    if not out:
        return None
    ours.update({c: value(c) for c in _OWN_COLUMNS[protocol] if value(c) is not None})
    return {**out, "metric_meta": meta, "rledit": ours}


def write_easyedit(results: pd.DataFrame, path: Path) -> Path:
    """``easyedit_records(results)`` as JSON at ``path`` (written atomically)."""
    payload = {
        "format": "rledit-env results under EasyEdit's metric names (docs/protocols.md)",
        "records": easyedit_records(results),
    }
    write_text_atomic(path, json.dumps(payload, indent=2))
    return path
