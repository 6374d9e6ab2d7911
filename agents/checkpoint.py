"""Agent checkpoints that load without running code: one safetensors file per checkpoint.

Pickle-based files (``torch.save``) can run arbitrary code when loaded, and trained editors are what
users share, so a checkpoint holds only

- tensors, in safetensors' format, under dotted keys of where they sit in the agent's state
  (``state.net.A.weight``, ``state.optimizer.state.0.exp_avg``); bytes (SB3's zip) as uint8 tensors;
- one JSON document in the safetensors header's ``__metadata__`` (key ``rledit_env``): the format
  version, the agent class, its config, the environment signature, and the state with each tensor
  replaced by a reference ``{"__tensor__": key}`` (``__bytes__`` / ``__ndarray__`` likewise). Dicts
  whose keys are not all plain strings (an optimizer's integer parameter ids) are stored as
  ``{"__items__": [[key, value], ...]}``, tuples as ``{"__tuple__": [...]}``.

Files of the old pickle format (format 1) are refused with a pointer to ``convert_checkpoint``
(``rledit convert-checkpoint OLD NEW``), which reads them with ``torch.load(weights_only=True)``: that
unpickler builds only tensors and plain containers and refuses anything else, so nothing runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from rledit_env.atomic import write_bytes_atomic

CHECKPOINT_FORMAT = 2
_METADATA_KEY = "rledit_env"
_PICKLE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save's zip, a raw pickle (protocol 2+)


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, of another agent, or made for another model or edit modules."""


def write_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (agent, config, env, state) as a safetensors checkpoint, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    document = {"format": CHECKPOINT_FORMAT, **_pack(dict(payload), "", tensors)}
    try:
        header = json.dumps(document)
    except TypeError as exc:
        raise TypeError(f"an agent's state must hold tensors, bytes and JSON values only ({exc})") from None
    write_bytes_atomic(path, safetensors.torch.save(tensors, metadata={_METADATA_KEY: header}))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a checkpoint written by ``write_checkpoint``; nothing in the file is executed."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    try:
        tensors = safetensors.torch.load(data)
        header_len = int.from_bytes(data[:8], "little")
        document = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"][_METADATA_KEY])
    except Exception as exc:  # safetensors' own error type, JSON errors, missing keys in a foreign file
        # the pickle signatures are checked only now: a safetensors file starts with its header's length,
        # whose low byte can be 0x80 as well
        if data.startswith(_PICKLE_STARTS):
            target = Path(path).with_suffix(".safetensors")
            raise CheckpointError(
                f"{path}: an old pickle-format checkpoint; loading it could run code, so it is refused. "
                f"Convert it once (it is read with torch's weights-only unpickler): "
                f"rledit convert-checkpoint {path} {target}"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an rledit-env agent checkpoint of format {CHECKPOINT_FORMAT}")
    try:
        return _unpack(document, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: a damaged checkpoint ({exc})") from exc


def convert_checkpoint(old: str | os.PathLike, new: str | os.PathLike) -> dict[str, Any]:
    """Rewrite an old pickle-format checkpoint (format 1) as a safetensors one; returns its payload.

    The old file is read with ``torch.load(weights_only=True)``, which refuses anything but tensors
    and plain Python containers, so a crafted file is refused rather than run.
    """
    try:
        payload = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for disallowed objects, others for damaged files
        raise CheckpointError(
            f"{old}: not convertible: it is not a torch.save file of tensors and plain data "
            f"({_first_reason(str(exc))})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != 1 or "agent" not in payload:
        raise CheckpointError(f"{old}: not an old-format (format 1) rledit-env agent checkpoint")
    payload = {k: v for k, v in payload.items() if k != "format"}
    write_checkpoint(new, payload)
    return payload


def _first_reason(message: str) -> str:
    """torch.load's several-paragraph error as one sentence: the unpickler's reason when it gives one."""
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ["unknown error"]
    line = next((x for x in lines if x.startswith("WeightsUnpickler error:")), lines[0])
    return line.removeprefix("WeightsUnpickler error: ").split(". ")[0]


def _pack(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors (under dotted ``key``s) moved to ``tensors``."""
    child = (lambda k: f"{key}.{k}") if key else str
    if isinstance(value, torch.Tensor):
        tensors[key] = (
            value.detach().to("cpu").contiguous().clone()
        )  # own storage: safetensors refuses shared
        return {"__tensor__": key}
    if isinstance(value, (bytes, bytearray)):
        tensors[key] = torch.from_numpy(np.frombuffer(bytes(value), dtype=np.uint8).copy())
        return {"__bytes__": key}
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _pack(v, child(k), tensors) for k, v in value.items()}
        return {"__items__": [[k, _pack(v, child(k), tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_pack(v, child(i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_pack(v, child(i), tensors) for i, v in enumerate(value)]
    return value


def _unpack(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), *_ = value.items()
        if tag == "__tensor__":
            return tensors[inner]
        if tag == "__bytes__":
            return tensors[inner].numpy().tobytes()
        if tag == "__ndarray__":
            return tensors[inner].numpy()
        if tag == "__tuple__":
            return tuple(_unpack(v, tensors) for v in inner)
        if tag == "__items__":
            return {k: _unpack(v, tensors) for k, v in inner}
    return {k: _unpack(v, tensors) for k, v in value.items()}
