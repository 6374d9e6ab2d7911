"""The dataset files rledit-env knows by name.

Two kinds: small real samples that ship inside the package (``rledit_env/data/records/``, licences in
``rledit_env/data/LICENSES.md``), and the full public benchmark files of the paper configurations,
which ``rledit data download NAME`` fetches into ``<cache_root()>/datasets/`` (``rledit_env.download``).

Checksums: no sha256 of the full files was published by their authors, and none could be computed where
this catalogue was written (no internet), so ``sha256`` is None for them. The first download then
records the digest it got beside the file (``<file>.sha256``) and every later ``rledit data download``
verifies the file against it; pin a digest here once it is known and downloads verify against that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rledit_env.cache import cache_root

PACKAGED_DIR = Path(__file__).parent / "data" / "records"


@dataclass(frozen=True)
class DataFile:
    """One named dataset file.

    ``file`` is relative to PACKAGED_DIR when ``packaged``, else to the downloads folder. A download
    without ``url`` has no direct public link: ``manual`` says where to get it by hand.
    """

    name: str
    file: str
    description: str
    licence: str
    packaged: bool = False
    url: str | None = None
    sha256: str | None = None
    manual: str | None = None

    def path(self, cache_dir: str | os.PathLike | None = None) -> Path:
        return PACKAGED_DIR / self.file if self.packaged else downloads_dir(cache_dir) / self.file


def downloads_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "datasets"


_ROME = "https://rome.baulab.info/data/dsets"
_MALMEN_DRIVE = "https://drive.google.com/drive/folders/1gu5tdk7MyL7tGWhITINN0YIi_qeTJAAe"
_CF = "CounterFact (Meng et al. 2022), MIT"
_ZSRE = "ZsRE (Levy et al. 2017) as prepared for MEND (Mitchell et al. 2022); licence not verified here"
_FEVER = "FEVER (Thorne et al. 2018), CC BY-SA 3.0, as prepared for MEND/MALMEN"

KNOWN_DATASETS: dict[str, DataFile] = {
    f.name: f
    for f in [
        DataFile(
            "counterfact-train",
            "counterfact/counterfact-train.json.gz",
            "10,000 CounterFact edits, flat format (training split of Jometeorie/KnowledgeSpread)",
            _CF + "; split: Jometeorie/KnowledgeSpread, Apache-2.0",
            packaged=True,
        ),
        DataFile(
            "counterfact-edit-1k",
            "counterfact/counterfact-edit-1k.json",
            "1,000 CounterFact edits, flat format, no case in common with counterfact-train",
            _CF + "; split: Jometeorie/KnowledgeSpread, Apache-2.0",
            packaged=True,
        ),
        DataFile(
            "counterfact-edit",
            "counterfact/counterfact-edit.json.gz",
            "10,000 CounterFact edits, flat format, the whole edit split (contains counterfact-edit-1k), "
            "no case in common with counterfact-train",
            _CF + "; split: Jometeorie/KnowledgeSpread, Apache-2.0",
            packaged=True,
        ),
        DataFile(
            "counterfact-rome-sample",
            "counterfact/counterfact-rome-format-sample.json",
            "7 CounterFact records in ROME's nested format (the RLEdit code base's preview file)",
            _CF,
            packaged=True,
        ),
        DataFile(
            "zsre-1k",
            "zsre/zsre_mend_train-1k.json",
            "1,000 ZsRE edits from MEND's training file",
            _ZSRE,
            packaged=True,
        ),
        DataFile(
            "fever-sample",
            "fever/fever_eval_sample.json",
            "48 FEVER fact-check edits from the MALMEN/RLEdit evaluation file",
            _FEVER,
            packaged=True,
        ),
        DataFile(
            "counterfact-full",
            "counterfact/counterfact.json",
            "all of CounterFact in ROME's nested format, as ROME/MEMIT/AlphaEdit download it",
            _CF,
            url=f"{_ROME}/counterfact.json",
        ),
        DataFile(
            "zsre-train",
            "zsre/zsre_mend_train.json",
            "ZsRE training edits, MEND format, as ROME/MEMIT host them",
            _ZSRE,
            url=f"{_ROME}/zsre_mend_train.json",
        ),
        DataFile(
            "zsre-eval",
            "zsre/zsre_mend_eval.json",
            "ZsRE evaluation edits, MEND format, as ROME/MEMIT host them",
            _ZSRE,
            url=f"{_ROME}/zsre_mend_eval.json",
        ),
        DataFile(
            "fever-train",
            "fever/fever_train.json",
            "FEVER training edits, MALMEN format",
            _FEVER,
            manual=f"MALMEN shares fever/fever_train.json only in a Google Drive folder ({_MALMEN_DRIVE})",
        ),
        DataFile(
            "fever-eval",
            "fever/fever_eval.json",
            "FEVER evaluation edits, MALMEN format",
            _FEVER,
            manual=f"MALMEN shares fever/fever_eval.json only in a Google Drive folder ({_MALMEN_DRIVE})",
        ),
    ]
}

# Short names kept from before the catalogue existed.
ALIASES = {"counterfact": "counterfact-train", "zsre": "zsre-1k", "fever": "fever-sample"}


def data_file(name: str) -> DataFile | None:
    """The catalogue entry of a known name or alias; None for any other string."""
    return KNOWN_DATASETS.get(ALIASES.get(name, name))


def known_names() -> list[str]:
    return sorted([*KNOWN_DATASETS, *ALIASES])


def locate(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The file of a known name; a download that is not there yet says how to get it."""
    entry = data_file(name)
    if entry is None:
        raise KeyError(name)
    path = entry.path(cache_dir)
    if path.is_file():
        return path
    if entry.packaged:  # only a broken installation gets here
        raise FileNotFoundError(
            f"dataset {name!r}: the packaged file {path} is missing; reinstall rledit-env"
        )
    how = f"`rledit data download {entry.name}`"
    if entry.url is None:
        how = f"{entry.manual}: put it at {path}, or {how} --url <a mirror>"
    raise FileNotFoundError(
        f"dataset {name!r} is not downloaded yet ({path} does not exist); get it with {how}"
    )
