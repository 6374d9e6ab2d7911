"""The ansi render: the step, its reward, the batch being edited and the latest Eff/Spe."""

from __future__ import annotations

from helpers import gradient_action, tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)


def test_ansi_render_shows_the_batch_its_reward_and_the_latest_eff_spe():
    env = tiny_env(
        num_batches=2, batch_size=4, action_type="shift", metrics_every=2, probe_texts=[], render_mode="ansi"
    )
    assert env.render() == "LifelongEditEnv: not reset"
    obs, _ = env.reset(seed=0)
    first = env.current_records
    text = env.render()
    assert text.startswith("step 0/2 | 0 edits made\nto edit: batch 1\n")
    for r in first[:3]:
        assert f"{r.prompt} -> {r.target_new} (was: {r.target_true})" in text
    assert first[3].prompt not in text and "... and 1 more" in text
    assert "Eff" not in text  # nothing evaluated yet

    obs, reward, *_ = env.step(gradient_action(env, obs, lr=50.0))
    text = env.render()
    assert text.startswith(f"step 1/2 | 4 edits made | reward {reward:.3f} (gen ")
    assert "edited: batch 1" in text and f"{first[0].prompt} -> {first[0].target_new}" in text
    assert "Eff" not in text  # metrics_every=2: the first evaluation is after step 2

    second = env.current_records
    obs, reward, terminated, _, info = env.step(gradient_action(env, obs, lr=50.0))
    text = env.render()
    assert terminated and "edited: batch 2" in text and f"{second[0].prompt} -> " in text
    metrics = info["metrics"]
    assert text.endswith(
        f"Eff {metrics['eff']:.3f} Spe {metrics['spe']:.3f} over the first 8 edits (evaluated after step 2)"
    )


def test_no_render_mode_renders_nothing():
    env = tiny_env(num_batches=1, batch_size=2, probe_texts=[])
    env.reset(seed=0)
    assert env.render() is None
