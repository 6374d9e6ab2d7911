"""``rledit data list | download NAME...``: the named datasets, and downloads of the full public files."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="the named datasets: list them, download the full public files")
    actions = data.add_subparsers(dest="data_command", required=True)
    actions.add_parser("list", help="every known name: packaged or downloadable, present or not, licence")
    get = actions.add_parser("download", help="download (or verify) full benchmark files into the cache")
    get.add_argument("names", nargs="+", metavar="NAME", help="known names, e.g. zsre-train zsre-eval")
    get.add_argument("--url", help="download from this URL instead (a mirror); one NAME only")
    get.add_argument("--cache-dir", help="cache root (default: $RLEDIT_CACHE or ~/.cache/rledit_env)")
    get.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rledit_env.data_files import ALIASES, KNOWN_DATASETS

    if args.data_command == "list":
        for entry in KNOWN_DATASETS.values():
            aliases = [a for a, target in ALIASES.items() if target == entry.name]
            kind = "packaged" if entry.packaged else "download"
            state = "present" if entry.path().is_file() else "missing"
            also = f" (also: {', '.join(aliases)})" if aliases else ""
            print(f"{entry.name:24s} {kind:9s} {state:8s} {entry.description}{also}")
            print(f"{'':24s} licence: {entry.licence}; file: {entry.path()}")
        return 0
    from rledit_env.download import fetch_dataset

    if args.url and len(args.names) > 1:
        raise ValueError("--url names one file: give one NAME with it")
    for name in args.names:
        fetched = fetch_dataset(name, url=args.url, cache_dir=args.cache_dir, progress=not args.quiet)
        print(
            f"{name}: {fetched.path}: {fetched.status}" + (f" ({fetched.sha256})" if fetched.sha256 else "")
        )
    return 0
