"""rledit: the command line of rledit-env (also ``python -m experiments``).

rledit demo                                   RLEdit and its baselines on TinyWorld, in minutes
rledit benchmark --config experiments/configs/smollm2-counterfact.json
rledit benchmark --model tinyworld --schedule 20x10 --agents rledit,mend,noedit --seeds 0,1
rledit benchmark --config tinyworld-lifelong --backend ray --cpus-per-run 2 --tensorboard runs
rledit train --agent rledit --train-episodes 40 --checkpoint rledit.safetensors
rledit evaluate --agent rledit --checkpoint rledit.safetensors --schedule 20x10
rledit report results/smollm2-counterfact     tables and plots again from a results folder (a partial one too)
rledit report docs/smollm2/zsre --docs-page site-page.md   its documentation page (the docs build does it)
rledit report results/smollm2-counterfact --format easyedit   easyedit.json, under EasyEdit's names
rledit tune --model ./my-model --dataset edits.json --agent ultraedit   calibrate a step size (train split)
rledit list                                   agents, models and ready configurations
rledit data list                              the named datasets: packaged samples and downloadable files
rledit data download zsre-train zsre-eval     full public files into the cache (resumable, sha256-checked)
rledit convert-checkpoint old.pt new.safetensors   an old pickle checkpoint to the safe format
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from experiments import data_command
from experiments.lock import ResultsFolderBusy, results_lock

CONFIG_DIR = Path(__file__).parent / "configs"
_PROBE_SETTINGS = {"auto": "auto", "on": {}, "off": None}  # --general-probe -> BenchmarkConfig.general_probe


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line on stderr and exit code 2 (argparse's default prints the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must be integers separated by commas, got {text!r}"
        ) from None


def _device_map(text: str) -> str | dict:
    if not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--device-map is not valid JSON: {exc}") from None


def _add_common(p: argparse.ArgumentParser, *, agents: bool = True) -> None:
    p.add_argument("--config", help="a JSON benchmark configuration (see experiments/configs/)")
    p.add_argument("--model", help="tinyworld, tinyworld-tiny, smollm2, a hub id or a local model directory")
    p.add_argument("--dataset", help="evaluation edits: a path or a known name (default: the model's own)")
    p.add_argument("--train-dataset", help="training edits (default: the model's own, or half of --dataset)")
    p.add_argument("--schedule", action="append", help="T x n, e.g. 20x10 (repeatable)")
    if agents:
        p.add_argument("--agents", type=_csv, help="comma-separated agent names (see `rledit list`)")
    p.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--train-episodes", type=int, help="training episodes for every trainable agent")
    p.add_argument("--metrics-every", type=int, help="evaluation points along the sequence, every k steps")
    p.add_argument(
        "--general-probe",
        choices=sorted(_PROBE_SETTINGS),
        help="the general-ability probe before and after each sequence (auto, the default: on for real "
        "models, off on TinyWorld)",
    )
    p.add_argument(
        "--evaluation",
        choices=["auto", "teacher_forced", "generation", "both"],
        help="the metrics' protocol: teacher-forced (gold answer tokens fed in), by greedy generation "
        "(exact match), or both in separate columns (auto, the default: teacher-forced on TinyWorld, both "
        "on real models)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--device-map",
        type=_device_map,
        help="spread a big model over the devices with accelerate: auto, balanced, sequential, or a JSON "
        "object of module -> device",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", help="results folder (default: results/<config name>)")
    p.add_argument("--tensorboard", metavar="DIR", help="write training and evaluation curves to DIR")
    p.add_argument("--wandb", metavar="PROJECT", help="also log them to a W&B project (needs wandb)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per run with its final metrics")


def package_version() -> str:
    """The installed rledit-env's version (its package metadata), else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("rledit-env")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from rledit_env import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rledit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rledit {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="RLEdit against its baselines on TinyWorld (a few minutes on a CPU)")
    _add_common(demo)
    bench = sub.add_parser(
        "benchmark", help="a lifelong-editing benchmark: model, dataset, schedules, agents, seeds"
    )
    _add_common(bench)
    scale = bench.add_argument_group("scaling out (pip install 'rledit-env[ray]')")
    scale.add_argument("--backend", choices=["local", "ray"], default="local", help="where the cells run")
    scale.add_argument("--address", help="a Ray cluster to join (default: start one on this machine)")
    scale.add_argument("--cpus-per-run", type=float, default=1, help="CPUs each cell needs (Ray)")
    scale.add_argument("--gpus-per-run", type=float, default=0, help="GPUs each cell needs (Ray)")
    train = sub.add_parser("train", help="train one agent and save it as a checkpoint")
    _add_common(train, agents=False)
    train.add_argument("--agent", required=True)
    train.add_argument("--checkpoint", required=True, help="where to save the trained agent (.safetensors)")
    evaluate = sub.add_parser("evaluate", help="evaluate a trained checkpoint on a lifelong schedule")
    _add_common(evaluate, agents=False)
    evaluate.add_argument("--agent", required=True)
    evaluate.add_argument("--checkpoint", required=True)
    tune = sub.add_parser(
        "tune",
        help="choose an agent's step size on the model's train split (what 'auto' does on a model with no "
        "tuned settings) and print the sweep",
    )
    _add_common(tune, agents=False)
    tune.add_argument("--agent", required=True)
    tune.add_argument("--setting", help="the setting to calibrate (default: the agent's calibrated one)")
    tune.add_argument("--values", type=_csv, help="comma-separated candidates (default: its grid)")
    tune.add_argument("--refresh", action="store_true", help="recompute a cached calibration")
    report = sub.add_parser(
        "report",
        help="summary.md and plots from a results folder's results.csv (e.g. of an interrupted run)",
    )
    report.add_argument("results", help="a results folder (what --out names)")
    report.add_argument("--out", help="where to write them (default: the results folder)")
    report.add_argument("--title", help="the summary's title (default: the folder's name)")
    report.add_argument(
        "--format",
        choices=["markdown", "easyedit"],
        default="markdown",
        help="markdown: summary.md and plots; easyedit: easyedit.json, the final metrics under EasyEdit's "
        "names (rewrite_acc, rephrase_acc, locality, ...), one record per agent, schedule and seed, tagged "
        "with their protocol (docs/protocols.md)",
    )
    report.add_argument(
        "--docs-page",
        metavar="PAGE",
        help="instead, write the folder's documentation page (markdown) to PAGE, from its summary.md, "
        "results.csv, plots and notes.md as they are",
    )
    sub.add_parser("list", help="the agents, models and ready configurations")
    data_command.add_parser(sub)
    convert = sub.add_parser(
        "convert-checkpoint",
        help="rewrite an old pickle-format checkpoint (.pt) as a safetensors one",
        description="Checkpoints used to be torch.save pickles, which can run code when loaded; they are "
        "now refused. This reads OLD with torch.load(weights_only=True), torch's restricted unpickler that "
        "builds only tensors and plain containers and refuses any other object (so a crafted file is "
        "refused, not run), and writes NEW in the safetensors format. Still, convert only files you trust: "
        "a converted checkpoint is a trained editor that will change your model's weights.",
    )
    convert.add_argument("old", help="the old checkpoint")
    convert.add_argument("new", help="where to write the converted one (.safetensors)")
    return parser


def config_path(name: str) -> Path:
    """A configuration's file: ``name`` itself if it is a file, else a shipped configuration's name."""
    if Path(name).exists():
        return Path(name)
    named = CONFIG_DIR / f"{name}.json"
    if not named.exists():
        raise UsageError(f"no configuration {name!r} (files in {CONFIG_DIR}: {_config_names()})")
    return named


def resolve_config(args: argparse.Namespace, default_config: str | None):
    """A BenchmarkConfig from --config (or the default file) with command-line overrides on top."""
    from experiments.harness import BenchmarkConfig

    source = args.config or (str(CONFIG_DIR / default_config) if default_config else None)
    config = BenchmarkConfig.from_file(config_path(source)) if source else BenchmarkConfig()
    overrides = {
        "model": args.model,
        "dataset": args.dataset,
        "train_dataset": args.train_dataset,
        "schedules": args.schedule,
        "agents": getattr(args, "agents", None),
        "seeds": args.seeds,
        "metrics_every": args.metrics_every,
        "evaluation": args.evaluation,
        "device": args.device,
        "device_map": args.device_map,
        "dtype": args.dtype,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if getattr(args, "general_probe", None) is not None:  # "off" is None, so not among the overrides
        config.general_probe = _PROBE_SETTINGS[args.general_probe]
    if args.train_episodes is not None:
        from experiments.registry import agent_spec

        config.train_episodes = {
            a: args.train_episodes for a in config.agents if not agent_spec(a).fixed_training
        }
    if args.model is not None and args.dataset is None and args.config is None and default_config is None:
        config.name = f"{args.model}"
    return config


def _config_names() -> list[str]:
    """Benchmark configurations (models.json, the model table, is not one)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json") if "agents" in json.loads(p.read_text()))


def _check_model(name: str) -> None:
    from rledit_env.models import MODEL_LOADERS

    if name in MODEL_LOADERS or Path(name).is_dir() or "/" in name:
        return
    raise UsageError(
        f"unknown model {name!r}: use one of {sorted(MODEL_LOADERS)}, a local model directory, "
        "or a hub id such as meta-llama/Meta-Llama-3-8B (needs the internet)"
    )


def _tracking(args):
    from experiments.tracking import Tracking

    return Tracking(tensorboard=args.tensorboard, wandb=args.wandb)


def _executor(args):
    """None (cells run here, one after another) or the Ray backend."""
    if getattr(args, "backend", "local") == "local":
        return None
    from experiments.ray_backend import RayExecutor, require_ray

    require_ray()
    return RayExecutor(address=args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)


def _run_benchmark(config, args, checkpoints=None) -> int:
    from experiments.harness import Benchmark, CellsFailed
    from experiments.report import write_metadata

    _check_model(config.model)
    out = Path(args.out or Path("results") / config.name)
    bench = Benchmark(
        config,
        out,
        progress=not args.quiet,
        verbose=args.verbose,
        checkpoints=checkpoints,
        tracking=_tracking(args),
    )
    with results_lock(out):  # the run and the files made from its results, by one process
        try:
            results = bench.run(_executor(args))
        except CellsFailed as exc:
            print(f"rledit: {exc}", file=sys.stderr)
            return 1
        write_metadata(dataclasses.asdict(config), out, results)
        _summarise(results, out, f"{config.name}: {config.model}", out)
    return 0


def _report(args) -> int:
    from experiments.results_table import read_results

    results_dir = Path(args.results)
    csv = results_dir / "results.csv"
    if not csv.is_file():
        raise UsageError(f"no {csv}: name a folder a benchmark wrote its results into")
    if args.docs_page:
        from experiments.report import docs_page
        from rledit_env.atomic import write_text_atomic

        page = Path(args.docs_page)
        try:
            text = docs_page(results_dir, page.parent)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        page.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(page, text)
        print(f"wrote {page}")
        return 0
    out = Path(args.out) if args.out else results_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.format == "easyedit":
        from experiments.report import write_easyedit

        path = write_easyedit(read_results(csv), out / "easyedit.json")
        print(f"wrote {path}")
        return 0
    _summarise(read_results(csv), out, args.title or results_dir.name, results_dir)
    return 0


def _summarise(results, out: Path, title: str, results_dir: Path) -> None:
    """Write summary.md and the plots of ``results`` into ``out`` (the learning curves from the training
    logs in ``results_dir``), and print the table and what was written."""
    from experiments.report import (
        did_not_edit,
        generation_table,
        plot_results,
        summary_table,
        write_markdown,
    )

    write_markdown(results, out / "summary.md", title)
    plots = plot_results(results, out, logs_dir=results_dir)
    print(summary_table(results).to_markdown(index=False))
    generation = generation_table(results)
    if generation is not None:
        print("\ngeneration (exact match):\n" + generation.to_markdown(index=False))
    for warning in did_not_edit(results):
        print(f"WARNING: {warning}", file=sys.stderr)
    print(
        f"\nresults: {results_dir / 'results.csv'}, {out / 'summary.md'}, "
        f"plots: {', '.join(p.name for p in plots)}"
    )


def _train(config, args) -> int:
    from experiments.harness import Benchmark, parse_schedule, run_name
    from experiments.registry import agent_spec, build_agent, train_or_load
    from experiments.tracking import run_group

    _check_model(config.model)
    spec = agent_spec(args.agent)
    if not spec.trainable:
        raise UsageError(f"agent {args.agent!r} needs no training")
    bench = Benchmark(config, args.out or "results/train", progress=not args.quiet)
    num_batches, batch_size = parse_schedule(config.schedules[0])
    env = bench.make_env(spec, num_batches, batch_size)
    run = run_name(args.agent, config.schedules[0], config.seeds[0])
    settings = {**dataclasses.asdict(config), "agent": args.agent}
    try:
        agent = build_agent(
            args.agent, env, config.agent_configs.get(args.agent), config.seeds[0], progress=not args.quiet
        )
        with _tracking(args).run(run, run_group(config.model, bench.dataset_name), settings) as curves:
            agent, _ = train_or_load(
                agent,
                args.checkpoint,
                episodes=config.train_episodes.get(args.agent, args.train_episodes),
                reuse=False,
                progress=not args.quiet,
                callback=curves,
            )
    finally:
        env.close()
    log = getattr(agent, "training_log", [])
    if log:
        first, last = log[0].get("loss", float("nan")), log[-1].get("loss", float("nan"))
        print(f"training: first episode loss {first:.4f}, last {last:.4f}")
    print(f"saved {args.agent} to {args.checkpoint}")
    return 0


def _tune(config, args) -> int:
    import dataclasses as dc

    from agents.auto_settings import calibrate, resolve_settings
    from experiments.harness import Benchmark
    from experiments.registry import agent_settings, agent_spec

    _check_model(config.model)
    spec = agent_spec(args.agent)
    cls = spec.load()
    grids = {k: s.grid for k, s in getattr(cls.Config, "AUTO_SETTINGS", {}).items() if s.grid}
    setting = args.setting or next(iter(grids), None)
    if setting is None or (setting not in grids and not args.values):
        raise UsageError(
            f"{args.agent}: nothing to calibrate here; pass --setting and --values"
            if setting is None
            else f"{args.agent}: {setting!r} has no grid; pass --values (calibrated: {sorted(grids)})"
        )
    values = [_json_value(v) for v in args.values] if args.values else list(grids[setting])
    config_obj = cls.Config(**agent_settings(args.agent, spec, config.agent_configs.get(args.agent, {})))
    bench = Benchmark(config, args.out or "results/tune", progress=not args.quiet)
    env = bench.make_env(spec, 1, 1)
    try:  # the other "auto" settings as a run would have them, this one pinned while they are filled in
        pinned = dc.replace(config_obj, **{setting: values[0]})
        others = resolve_settings(cls, pinned, env, (args.agent,), progress=not args.quiet).config
        result = calibrate(
            cls, others, env, setting, names=(args.agent,), grid=values, refresh=args.refresh,
            progress=not args.quiet,
        )  # fmt: skip
    finally:
        env.close()
    unedited = ", ".join(f"{k} {v:.3f}" for k, v in result.unedited.items())
    print(f"{args.agent} {setting} on {result.model}'s train split (unedited: {unedited})\n")
    print(result.markdown())
    print(
        f"\nchosen: {setting} = {result.value} ({'cached' if result.cached else 'computed'}: {result.path})"
    )
    return 0


def _json_value(text: str):
    """A JSON value (numbers, true/false, quoted strings), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _list() -> int:
    from experiments.registry import AGENTS
    from rledit_env.models import MODEL_LOADERS
    from rledit_env.tuned_settings import TUNED_SETTINGS

    print("agents:")
    for name, spec in AGENTS.items():
        print(f"  {name:18s} {spec.description}")
    print("models: " + ", ".join(sorted(MODEL_LOADERS)) + ", or a hub id / local directory")
    print(
        "tuned agent settings (rledit_env.tuned_settings): " + ", ".join(TUNED_SETTINGS)
        + "; any other model: step sizes calibrated on its train split at first use (rledit tune)"
    )  # fmt: skip
    print("configurations (experiments/configs/):")
    names = _config_names()
    width = max(map(len, names), default=0)
    for name in names:
        description = json.loads((CONFIG_DIR / f"{name}.json").read_text()).get("description", "")
        print(f"  {name:{width}s} {description}")
    return 0


def _convert(args) -> int:
    from agents.checkpoint import convert_checkpoint

    payload = convert_checkpoint(args.old, args.new)
    print(f"converted {args.old} ({payload['agent']}) to {args.new}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        import transformers

        transformers.utils.logging.disable_progress_bar()  # its weight-loading bar too
        os.environ["TQDM_DISABLE"] = "1"  # and bars that bypass it (the GGUF conversion's)
    try:
        if args.command == "list":
            return _list()
        if args.command == "data":
            return data_command.run(args)
        if args.command == "convert-checkpoint":
            return _convert(args)
        if args.command == "report":
            return _report(args)
        if args.command == "demo":
            return _run_benchmark(resolve_config(args, "demo-tinyworld.json"), args)
        if args.command == "benchmark":
            return _run_benchmark(resolve_config(args, None), args)
        if args.command == "evaluate":  # a bad checkpoint is bad input, found before any model loads
            from agents.checkpoint import read_checkpoint
            from experiments.registry import agent_spec

            if not Path(args.checkpoint).is_file():
                raise UsageError(f"no checkpoint file {args.checkpoint}")
            saved = read_checkpoint(args.checkpoint)["agent"]
            expected = agent_spec(args.agent).load().__name__
            if saved != expected:
                raise UsageError(
                    f"{args.checkpoint} is a {saved} checkpoint, not {expected} (--agent {args.agent})"
                )
        config = resolve_config(args, None)
        config.agents = [args.agent]
        if args.command == "tune":
            return _tune(config, args)
        if args.command == "train":
            return _train(config, args)
        return _run_benchmark(config, args, checkpoints={args.agent: args.checkpoint})
    except (ValueError, OSError, ResultsFolderBusy) as exc:  # bad input, unreadable files, a busy folder
        print(f"rledit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nrledit: interrupted; run the same command again to resume from the saved results",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
