"""Loaders that read the public knowledge-editing benchmarks into `EditRecord`s.

Formats (the format is detected from the first record's keys unless ``family`` is given):

* CounterFact, flat EasyEdit style: case_id, prompt, subject, target_new, ground_truth,
  rephrase_prompt, locality_prompt, locality_ground_truth (each text field a string or a list).
* CounterFact, ROME's nested style: requested_rewrite{prompt with "{}", subject, target_new{str},
  target_true{str}}, paraphrase_prompts, neighborhood_prompts (their answer is target_true),
  attribute_prompts and generation_prompts (kept in ``extra``).
* ZsRE, MEND style: subject, src, rephrase, alt (new answer), answers (old answers), loc, loc_ans.
* FEVER, MALMEN/RLEdit style: prompt, equiv_prompt, ans, alt (the label the edit installs),
  unrel_prompt, unrel_ans. Some records have alt == ans; they are kept, since the benchmark counts
  them as edits too (the editor must then leave the prediction as it is).

Files are a JSON list of objects or JSON lines. A file that breaks the format raises
`DatasetFormatError` naming the file, the record and the field. A record whose required text is
empty (two ZsRE records have ``alt == ""``) cannot be an edit: it is skipped with a warning, or
raises with ``strict=True``; a file left with no usable record raises, listing what was skipped.
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rledit_env.data_files import KNOWN_DATASETS as KNOWN_DATASETS  # re-exported: the known names
from rledit_env.data_files import PACKAGED_DIR, data_file, downloads_dir, known_names, locate
from rledit_env.records import FAMILIES, EditRecord


class DatasetFormatError(ValueError):
    """A dataset file that does not follow its format; ``str()`` names the file, record and field."""

    def __init__(self, path: Path, message: str, index: int | None = None, field: str | None = None):
        where = f"{path.name}: " + (f"record {index}: " if index is not None else "")
        what = f"field '{field}' {message}" if field is not None else message
        super().__init__(where + what)
        self.path, self.index, self.field = path, index, field


class _EmptyFieldError(DatasetFormatError):
    """Required text that is present but empty: a data quirk, skipped unless strict."""


def data_dirs() -> list[Path]:
    """Where relative paths are looked up: $RLEDIT_DATA_DIR, the packaged samples, the downloads."""
    dirs = [Path(os.environ["RLEDIT_DATA_DIR"])] if os.environ.get("RLEDIT_DATA_DIR") else []
    return dirs + [PACKAGED_DIR, downloads_dir()]


def resolve_dataset(path_or_name: str | os.PathLike[str]) -> Path:
    """A path to an existing file, a known name (``rledit_env.data_files``), or a path relative to a
    data dir. $RLEDIT_DATA_DIR holding a known name's file (same relative path) takes precedence."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    entry = data_file(str(path_or_name))
    if entry is not None:
        custom = os.environ.get("RLEDIT_DATA_DIR")
        if custom and (Path(custom) / entry.file).is_file():
            return Path(custom) / entry.file
        return locate(entry.name)
    for base in data_dirs():
        if (base / path).is_file():
            return base / path
    raise FileNotFoundError(
        f"dataset {str(path_or_name)!r} is neither a file nor found under "
        f"{', '.join(str(d) for d in data_dirs())}; known names: {', '.join(known_names())}"
    )


def _read_text(path: Path) -> str:
    """A file's text; ``.gz`` files (the larger packaged samples) are decompressed."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return handle.read()
    return path.read_text(encoding="utf-8")


def read_json_records(path: Path) -> list[Any]:
    """The raw records of a JSON-list or JSON-lines file."""
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise DatasetFormatError(path, "is empty")
    if stripped.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetFormatError(
                path, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
            ) from None
    if not stripped.startswith("{"):
        raise DatasetFormatError(
            path, "is neither a JSON list nor JSON lines (first character is not '[' or '{')"
        )
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            # A pretty-printed single object fails line by line; say what it is instead.
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None
            if isinstance(whole, dict):
                raise DatasetFormatError(
                    path, "holds one JSON object; expected a list of records or JSON lines"
                ) from None
            raise DatasetFormatError(
                path, f"invalid JSON lines at line {lineno}, column {err.colno}: {err.msg}"
            ) from None
    return records


class _Fields:
    """Typed access to one raw record, with errors that name the file, record and field."""

    def __init__(self, path: Path, index: int, raw: Any, prefix: str = ""):
        if not isinstance(raw, dict):
            field = prefix.rstrip(".") or None  # None: the record itself
            raise DatasetFormatError(path, f"is not a JSON object (got {type(raw).__name__})", index, field)
        self.path, self.index, self.raw, self.prefix = path, index, raw, prefix

    def _error(self, field: str, message: str, cls: type[DatasetFormatError] = DatasetFormatError):
        return cls(self.path, message, self.index, self.prefix + field)

    def sub(self, field: str) -> _Fields:
        if field not in self.raw:
            raise self._error(field, "is missing")
        return _Fields(self.path, self.index, self.raw[field], f"{self.prefix}{field}.")

    def texts(self, field: str, required: bool = False) -> list[str]:
        """A string or a list of strings, as a list with empty entries dropped."""
        value = self.raw.get(field)
        if value is None:  # JSON null counts as absent
            if required:
                raise self._error(field, "is missing")
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self._error(field, f"is not a string or a list of strings (got {type(value).__name__})")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self._error(f"{field}[{i}]", "is not a string")
        kept = [item for item in items if item.strip()]
        if required and not kept:
            raise self._error(field, "is empty", _EmptyFieldError)
        return kept

    def text(self, field: str) -> str:
        """Required text: a string, or the first non-empty string of a list (e.g. several answers)."""
        return self.texts(field, required=True)[0]

    def optional_text(self, field: str) -> str | None:
        found = self.texts(field)
        return found[0] if found else None

    def answer_text(self, field: str) -> str:
        """A ROME-style answer: {"str": ..., "id": ...} or a plain string."""
        if isinstance(self.raw.get(field), dict):
            return self.sub(field).text("str")
        return self.text(field)


def _locality(
    fields: _Fields, prompt_field: str, answer_field: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Locality prompts with one answer each; a single answer is shared by all prompts."""
    prompts = fields.texts(prompt_field)
    if not prompts:
        return (), ()
    answers = fields.texts(answer_field, required=True)
    if len(answers) == 1:
        answers = answers * len(prompts)
    if len(answers) != len(prompts):
        raise fields._error(
            answer_field, f"has {len(answers)} answers for {len(prompts)} prompts in '{prompt_field}'"
        )
    return tuple(prompts), tuple(answers)


def _counterfact_flat(f: _Fields) -> EditRecord:
    loc_prompts, loc_answers = _locality(f, "locality_prompt", "locality_ground_truth")
    return EditRecord(
        prompt=f.text("prompt"),
        target_new=f.text("target_new"),
        subject=f.text("subject"),
        target_true=f.optional_text("ground_truth"),
        paraphrase_prompts=tuple(f.texts("rephrase_prompt")),
        locality_prompts=loc_prompts,
        locality_answers=loc_answers,
        family="counterfact",
        case_id=f.raw.get("case_id"),
    )


def _counterfact_rome(f: _Fields) -> EditRecord:
    rewrite = f.sub("requested_rewrite")
    template, subject = rewrite.text("prompt"), rewrite.text("subject")
    if "{}" not in template:
        raise rewrite._error("prompt", "has no '{}' for the subject")
    target_true = rewrite.answer_text("target_true")
    neighbours = tuple(f.texts("neighborhood_prompts"))
    return EditRecord(
        prompt=template.replace("{}", subject),  # not str.format: prompts may hold other braces
        target_new=rewrite.answer_text("target_new"),
        subject=subject,
        target_true=target_true,
        paraphrase_prompts=tuple(f.texts("paraphrase_prompts")),
        # Neighbourhood subjects share the old answer, which the edit must not disturb.
        locality_prompts=neighbours,
        locality_answers=(target_true,) * len(neighbours),
        family="counterfact",
        case_id=f.raw.get("case_id"),
        extra={
            "attribute_prompts": f.texts("attribute_prompts"),
            "generation_prompts": f.texts("generation_prompts"),
            "relation_id": rewrite.raw.get("relation_id"),
        },
    )


def _counterfact(f: _Fields) -> EditRecord:
    return _counterfact_rome(f) if "requested_rewrite" in f.raw else _counterfact_flat(f)


def _zsre(f: _Fields) -> EditRecord:
    old_answers = f.texts("answers")
    loc_prompts, loc_answers = _locality(f, "loc", "loc_ans")
    return EditRecord(
        prompt=f.text("src"),  # a question ending in "?"; the answer follows after one space
        target_new=f.text("alt"),
        subject=f.text("subject"),
        target_true=old_answers[0] if old_answers else None,
        paraphrase_prompts=tuple(f.texts("rephrase")),
        # Kept with MEND's "nq question: " prefix, which is how the benchmark asks them.
        locality_prompts=loc_prompts,
        locality_answers=loc_answers,
        family="zsre",
        case_id=f.raw.get("case_id", f.index),
        extra={"answers": old_answers, "pred": f.optional_text("pred")},
    )


def _fever(f: _Fields) -> EditRecord:
    loc_prompts, loc_answers = _locality(f, "unrel_prompt", "unrel_ans")
    return EditRecord(
        prompt=f.text("prompt"),  # a claim; no subject is marked in FEVER
        target_new=f.text("alt"),
        target_true=f.text("ans"),
        paraphrase_prompts=tuple(f.texts("equiv_prompt")),
        locality_prompts=loc_prompts,
        locality_answers=loc_answers,
        family="fever",
        case_id=f.raw.get("case_id", f.index),
    )


_CONVERTERS: dict[str, Callable[[_Fields], EditRecord]] = {
    "counterfact": _counterfact,
    "zsre": _zsre,
    "fever": _fever,
}


def detect_family(path: Path, first: Any) -> str:
    """The family of a file, from the keys of its first record."""
    if not isinstance(first, dict):
        raise DatasetFormatError(path, f"is not a JSON object (got {type(first).__name__})", 0)
    keys = set(first)
    if "requested_rewrite" in keys:
        return "counterfact"
    if {"src", "alt"} <= keys:
        return "zsre"
    if "equiv_prompt" in keys or {"ans", "alt", "unrel_prompt"} <= keys:
        return "fever"
    if {"prompt", "target_new"} <= keys:
        return "counterfact"
    raise DatasetFormatError(
        path, f"has keys {sorted(keys)}, which match no known format (CounterFact, ZsRE, FEVER)", 0
    )


def load_dataset(
    path_or_name: str | os.PathLike[str],
    family: str | None = None,
    limit: int | None = None,
    *,
    strict: bool = False,
) -> list[EditRecord]:
    """Load a benchmark file (or a KNOWN_DATASETS name) into edit records.

    Args:
        path_or_name: a JSON-list or JSON-lines file, or a short name such as "zsre".
        family: "counterfact", "zsre" or "fever"; detected from the first record when None.
        limit: keep at most this many records (the first ones of the file).
        strict: raise on records with empty required text instead of skipping them with a warning.
    """
    path = resolve_dataset(path_or_name)
    raw = read_json_records(path)
    if not isinstance(raw, list):
        raise DatasetFormatError(path, f"holds a JSON {type(raw).__name__}; expected a list of records")
    if not raw:
        raise DatasetFormatError(path, "holds no records")
    if family is None:
        family = detect_family(path, raw[0])
    elif family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    convert = _CONVERTERS[family]
    records: list[EditRecord] = []
    skipped: dict[str, list[int]] = {}  # empty field -> the records dropped for it
    for index, item in enumerate(raw):
        if limit is not None and len(records) >= limit:
            break
        try:
            records.append(convert(_Fields(path, index, item)))
        except _EmptyFieldError as err:
            if strict:
                raise
            skipped.setdefault(err.field, []).append(err.index)
    dropped = _summarise_skipped(skipped)
    if not records and limit != 0:  # a benchmark on zero edits would only fail later, less clearly
        raise DatasetFormatError(path, f"yields no usable record; skipped {dropped}")
    if skipped:
        warnings.warn(f"{path.name}: skipped {dropped}", stacklevel=2)
    return records


def _summarise_skipped(skipped: dict[str, list[int]], shown: int = 10) -> str:
    """'3 record(s) with empty required text: 'alt' empty in records 4, 9; 'src' empty in record 0',
    listing at most ``shown`` records per field (a large file can drop thousands)."""
    parts = []
    for field, indices in skipped.items():
        listed = ", ".join(map(str, indices[:shown])) + (
            f" and {len(indices) - shown} more" if len(indices) > shown else ""
        )
        parts.append(f"'{field}' empty in record{'s' if len(indices) > 1 else ''} {listed}")
    total = sum(len(v) for v in skipped.values())
    return f"{total} record(s) with empty required text: {'; '.join(parts)}"


def load_counterfact(path_or_name: str | os.PathLike[str] = "counterfact", **kwargs: Any) -> list[EditRecord]:
    """CounterFact, flat (EasyEdit) or nested (ROME) format."""
    return load_dataset(path_or_name, family="counterfact", **kwargs)


def load_zsre(path_or_name: str | os.PathLike[str] = "zsre", **kwargs: Any) -> list[EditRecord]:
    """ZsRE in MEND's format."""
    return load_dataset(path_or_name, family="zsre", **kwargs)


def load_fever(path_or_name: str | os.PathLike[str] = "fever", **kwargs: Any) -> list[EditRecord]:
    """FEVER in the MALMEN/RLEdit binary fact-check format."""
    return load_dataset(path_or_name, family="fever", **kwargs)


def split_records(
    records: Sequence[EditRecord], eval_fraction: float, seed: int
) -> tuple[list[EditRecord], list[EditRecord]]:
    """A seeded train/eval split, disjoint by record and by (subject, prompt).

    Records that share a subject and prompt (CounterFact has a few) go to the same side, so that an
    evaluation edit never repeats a training one word for word.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault((record.subject, record.prompt), []).append(i)
    order = np.random.default_rng(seed).permutation(len(groups))
    members = list(groups.values())
    # Both sides non-empty whenever there are two groups to share out.
    target = min(max(1, round(eval_fraction * len(records))), len(records) - 1)
    eval_idx: set[int] = set()
    for g in order:
        if len(eval_idx) >= target:
            break
        eval_idx.update(members[g])
    train = [r for i, r in enumerate(records) if i not in eval_idx]
    evals = [r for i, r in enumerate(records) if i in eval_idx]
    return train, evals
