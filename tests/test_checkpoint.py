"""Checkpoints load without running code: crafted pickles are refused, old files convert safely."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import Malicious, old_format_checkpoint, tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from agents import MALMEN, CheckpointError, MALMENConfig
from agents.base import env_signature
from agents.checkpoint import convert_checkpoint, read_checkpoint, write_checkpoint

SMALL = MALMENConfig(rank=32, num_blocks=2)


def test_the_malicious_payload_is_live():
    # The refusals below only mean something if unpickling this object does run code.
    marker = Path(__import__("tempfile").mkdtemp()) / "ran"
    pickle.loads(pickle.dumps(Malicious(marker))).close()
    assert marker.exists()


def test_a_malicious_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path):
    env = tiny_env(action_type="values")
    agent = MALMEN(env, SMALL)
    marker = tmp_path / "ran"
    zipped = tmp_path / "evil.pt"
    old_format_checkpoint(zipped, agent, {"net": Malicious(marker)})  # torch.save's zip container
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"format": 1, "state": Malicious(marker)}, protocol=2))  # a bare pickle
    for path in (zipped, raw):
        with pytest.raises(CheckpointError, match=r"old pickle-format checkpoint.*rledit convert-checkpoint"):
            MALMEN.load(path, env)
        with pytest.raises(CheckpointError, match="not convertible"):
            convert_checkpoint(path, tmp_path / "new.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "new.safetensors").exists()


def test_an_old_checkpoint_converts_and_then_acts_identically(tmp_path):
    env = tiny_env(action_type="values", obs_backend="torch")
    agent = MALMEN(env, SMALL).learn(1, progress_bar=False)
    old, new = tmp_path / "old.pt", tmp_path / "new.safetensors"
    old_format_checkpoint(old, agent, agent.state_dict())
    with pytest.raises(CheckpointError, match="old pickle-format"):
        MALMEN.load(old, env)
    convert_checkpoint(old, new)
    loaded = MALMEN.load(new, env)
    assert loaded.episodes_trained == 1 and loaded.training_log == agent.training_log
    obs, _ = env.reset(seed=0)
    a, b = agent.act(obs)["values"], loaded.act(obs)["values"]
    assert all(torch.equal(a[m], b[m]) for m in a)


def test_state_round_trips_with_its_types(tmp_path):
    state = {
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]},
        "zip": b"\x00PK\x03\x04 bytes",
        "log": [{"loss": float("nan"), "episode": 1}],
        "__odd": None,
    }
    path = tmp_path / "x.safetensors"
    write_checkpoint(path, {"agent": "X", "state": state})
    back = read_checkpoint(path)["state"]
    assert back["optimizer"]["state"][0]["step"] == torch.tensor(3.0)  # integer keys stay integers
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)  # tuples stay tuples
    assert back["zip"] == state["zip"] and back["__odd"] is None and back["log"][0]["episode"] == 1
    with open(path, "rb") as f:  # what load parses is JSON: the header holds no pickle
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert json.loads(header["__metadata__"]["rledit_env"])["format"] == 2


def test_a_checkpoint_whose_first_byte_looks_like_a_pickle_still_loads(tmp_path):
    # A safetensors file starts with its header's length (little-endian): its first byte is 0x80, a
    # pickle's first byte, for one header length in 256. Such a file is a checkpoint all the same.
    path = tmp_path / "x.safetensors"
    for pad in range(256):
        write_checkpoint(path, {"agent": "X", "state": {"pad": "x" * pad, "t": torch.ones(2)}})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(read_checkpoint(path)["state"]["t"], torch.ones(2))


def test_sb3_zip_pickles_are_not_unpickled(tmp_path):
    from stable_baselines3 import PPO

    from agents.sb3 import SB3Agent, SB3AgentConfig

    env = tiny_env(num_batches=2, batch_size=2, probe_texts=[])
    agent = SB3Agent(
        env, config=SB3AgentConfig(projection_dim=8, algorithm_kwargs={"n_steps": 8, "batch_size": 8})
    )
    state = agent.state_dict()
    marker = tmp_path / "ran"
    evil = {":type:": "<class 'function'>", ":serialized:": base64.b64encode(pickle.dumps(Malicious(marker)))}
    state["model_zip"] = _replace_in_zip(state["model_zip"], "lr_schedule", evil)
    path = tmp_path / "ppo.safetensors"
    write_checkpoint(
        path,
        {
            "agent": "SB3Agent",
            "config": dataclasses.asdict(agent.config),
            "env": env_signature(env),
            "state": state,
        },
    )
    loaded = SB3Agent.load(path, env)
    assert not marker.exists()
    assert isinstance(loaded.model, PPO)
    for a, b in zip(agent.model.policy.parameters(), loaded.model.policy.parameters(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())
    live = tmp_path / "ran-in-sb3"  # SB3's own loader, left to itself, would have run it
    evil[":serialized:"] = base64.b64encode(pickle.dumps(Malicious(live)))
    PPO.load(io.BytesIO(_replace_in_zip(agent.state_dict()["model_zip"], "lr_schedule", evil)))
    assert live.exists()
    state["algorithm"] = "os:system"  # a file must not choose what gets imported
    write_checkpoint(path, {"agent": "SB3Agent", "config": {}, "env": env_signature(env), "state": state})
    with pytest.raises(CheckpointError, match="not one of stable-baselines3"):
        SB3Agent.load(path, env)


def _replace_in_zip(model_zip: bytes, key: str, value) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(model_zip)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            content = src.read(name)
            if name == "data":
                data = json.loads(content)
                assert ":serialized:" in data[key]
                data[key] = {k: v.decode() if isinstance(v, bytes) else v for k, v in value.items()}
                content = json.dumps(data).encode()
            dst.writestr(name, content)
    return out.getvalue()
