"""A model spread over devices by accelerate edits like the same model on one device.

A CPU-only machine has one torch device, so the layers are split over "cpu" entries of an explicit
device map: accelerate still dispatches the model block by block (with ``force_hooks``, the hooks that
move activations between devices), and the edit path (tracing, fp32 masters of bf16 weights, updates,
scoring) runs through them.
"""

from __future__ import annotations

import pytest
import torch
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from rledit_env.editable import EditableModel
from rledit_env.envs import LifelongEditEnv

accelerate = pytest.importorskip("accelerate")

LAYERS = 4
EDITED = [f"model.layers.{i}.mlp.down_proj" for i in (1, 3)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random-weight Llama of TinyWorld's tiny vocabulary, saved in bf16 with its tokenizer."""
    from helpers import save_random_llama

    return save_random_llama(tmp_path_factory.mktemp("tiny-llama"), LAYERS, torch.bfloat16)


def _records():
    from helpers import _loaded

    return _loaded("tinyworld-tiny").splits["eval"][:6]


def _split_map() -> dict[str, str]:
    """Every block its own entry, as accelerate's "auto" map would give over several devices."""
    blocks = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"]
    return {name: "cpu" for name in blocks + [f"model.layers.{i}" for i in range(LAYERS)]}


def _edit(env: LifelongEditEnv) -> tuple[dict[str, torch.Tensor], dict[str, float], list[float]]:
    """Two steps of a plain gradient edit; the edit modules' weights, the final metrics, the rewards."""
    obs, _ = env.reset(seed=0)
    rewards, done, info = [], False, {}
    while not done:
        action = {m: -20.0 * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}
        obs, reward, done, _, info = env.step(action)
        rewards.append(reward)
    weights = {n: m.weight.detach().float().clone() for n, m in env.editable.modules.items()}
    assert all(not torch.equal(weights[n], env.initial_weights[n].float()) for n in weights)  # it edited
    return weights, info["metrics"], rewards


def _env(model, records, **settings) -> LifelongEditEnv:
    return LifelongEditEnv(
        model,
        records,
        num_batches=2,
        batch_size=3,
        action_type="shift",
        edit_modules=EDITED,
        probe_texts=[],
        **settings,
    )


def test_the_envs_device_map_reaches_the_loader_and_edits_like_one_device(model_dir, monkeypatch):
    import transformers

    maps = []
    load = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        maps.append(kwargs.get("device_map"))
        return load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    split = _env(str(model_dir), _records(), device_map=_split_map())
    assert maps == [_split_map()]
    got, expected = _edit(split), _edit(_env(str(model_dir), _records()))
    _assert_same_edit(got, expected)


def test_a_model_dispatched_block_by_block_edits_like_one_device(model_dir):
    from accelerate import dispatch_model

    one = EditableModel.from_pretrained(str(model_dir), EDITED)
    hooked = EditableModel.from_pretrained(str(model_dir), EDITED)
    dispatch_model(hooked.model, _split_map(), force_hooks=True)
    assert hooked.model.hf_device_map == _split_map()
    assert hasattr(hooked.model.model.layers[1], "_hf_hook")  # accelerate moves activations block by block
    for name, module in hooked.modules.items():  # bf16 weights: updates accumulate in fp32 masters
        master = hooked._master[name]
        assert module.weight.dtype == torch.bfloat16 and master.dtype == torch.float32
        assert master.device == module.weight.device
    got, expected = _edit(_env(hooked, _records())), _edit(_env(one, _records()))
    _assert_same_edit(got, expected)


def _assert_same_edit(got, expected) -> None:
    weights, metrics, rewards = got
    assert metrics == expected[1] and rewards == expected[2]
    for name in EDITED:
        assert torch.equal(weights[name], expected[0][name])


def test_the_command_line_takes_a_device_map_name_or_json():
    from experiments.cli import build_parser, resolve_config

    def device_map(text):
        return resolve_config(build_parser().parse_args(["benchmark", "--device-map", text]), None).device_map

    assert device_map("auto") == "auto"
    assert device_map('{"model.layers.0": 0, "lm_head": "cpu"}') == {"model.layers.0": 0, "lm_head": "cpu"}
    with pytest.raises(SystemExit):
        device_map("{not json")
