# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lifelong knowledge editing as reinforcement learning
#
# A language model stores facts in its weights. *Knowledge editing* changes one fact ("the mother tongue
# of X is Renish" instead of "... Roturish") by changing a few weights, without retraining. *Lifelong*
# editing does it again and again, batch after batch, on the same model, which must keep every earlier
# edit and everything else it knew. RLEdit (Li et al., ICML 2025) treats this as a reinforcement-learning
# problem: the state is the model, the action is a weight update, the reward is how well the edits hold.
#
# This tutorial runs on a laptop CPU in about ten minutes with TinyWorld, a synthetic world and a small
# model pretrained on it (built into `~/.cache/rledit_env` at first use, about two minutes). It covers
#
# 1. what an edit is and how it is scored (Eff, Gen, Spe);
# 2. the MDP: observation, the two action interfaces, the reward, termination;
# 3. a hand-written policy, and why naive sequential editing forgets;
# 4. hypernetwork editors: MALMEN (trained on a frozen model) against RLEdit (trained on a changing one);
# 5. plugging in a new algorithm: stable-baselines3, and your own agent in the benchmark harness;
# 6. exercises.
#
# It is `examples/tutorial.py`, a [jupytext](https://jupytext.readthedocs.io) script: run it as it is
# (`python examples/tutorial.py`), or make a notebook of it with
# `jupytext --to ipynb examples/tutorial.py` and open `examples/tutorial.ipynb` in Jupyter.

# %% tags=["parameters"]
import os
from pathlib import Path

MODEL = os.environ.get("TUTORIAL_MODEL", "tinyworld")  # the test suite runs it on "tinyworld-tiny"
OUT = Path(os.environ.get("TUTORIAL_OUT", "tutorial-results"))  # where the figures and results go
SMALL = MODEL.endswith("-tiny")  # smaller budgets for the test suite's tiny model
T, N = (5, 4) if SMALL else (10, 10)  # the evaluation schedule: T batches of N edits
STEP_SIZES = (30.0, 100.0) if SMALL else (100.0, 1000.0)  # the hand-written policy's (section 3)
RLEDIT_SEQUENCES = 4 if SMALL else 12  # RLEdit's training: whole T-batch sequences
MALMEN_STEPS = 20 if SMALL else 40  # MALMEN's training: one batch each
PPO_STEPS = 50 if SMALL else 100  # environment steps of PPO (on 5-batch training episodes)
CEM_EPISODES = 8 if SMALL else 16  # training episodes of the custom agent
SEED = 0

# %%
import time

import gymnasium as gym
import numpy as np
import pandas as pd
from IPython.display import Image, display

import rledit_env  # noqa: F401  (registers the environments)
from agents import MALMEN, MALMENConfig, RLEdit, RLEditConfig, run_episode
from experiments.report import plot_retention, plot_training, training_log_name
from rledit_env.envs import LifelongEditEnv
from rledit_env.metrics import EpisodeEvaluator

OUT.mkdir(parents=True, exist_ok=True)
pd.set_option("display.precision", 3)
started = time.perf_counter()


def show(path: Path) -> None:
    display(Image(filename=str(path)))


# %% [markdown]
# ## 1. What an edit is, and how it is scored
#
# An edit request is an `EditRecord`: a prompt, the answer to install (`target_new`), the answer the
# model gives now (`target_true`), paraphrases of the prompt and a few *neighbourhood* prompts about
# other subjects, whose answers must not change. The environment loads the model and its records
# (TinyWorld has a "train" split for training editors and an "eval" split of held-out facts).

# %%
env = LifelongEditEnv(MODEL, num_batches=T, batch_size=N, metrics_every=1, render_mode="ansi")
print(f"{MODEL}: edit modules {env.module_names}")
print(f"{len(env.splits['train'])} training and {len(env.splits['eval'])} evaluation edit requests\n")
record = env.records[0]
print(f"prompt      : {record.prompt!r}")
print(f"true answer : {record.target_true!r}  ->  new answer: {record.target_new!r}")
print("paraphrases :", *record.paraphrase_prompts, sep="\n  ")
print(
    "neighbours  :",
    *[f"{p} -> {a}" for p, a in zip(record.locality_prompts, record.locality_answers, strict=True)],
    sep="\n  ",
)

# %% [markdown]
# After an edit the model is scored on every edit made so far (CounterFact's suite, which TinyWorld
# follows):
#
# - **Eff** (efficacy): share of edit prompts where the new answer is likelier than the true one;
# - **Gen** (generalisation): the same on the paraphrases;
# - **Spe** (specificity): share of neighbourhood prompts whose own answer stays likelier than the new one.
#
# `*_acc` variants count answer tokens the model predicts, and `ppl` is the perplexity on the model's
# own text (does it still speak TinyWorld?). Before any edit, Eff and Gen are 0 (the model prefers the
# true answers) and Spe is below 1 only where a neighbour's own answer *is* the new answer (a tie):

# %%
unedited = EpisodeEvaluator(env.editable, env.records[:20]).evaluate()
print({k: round(v, 3) for k, v in unedited.items() if k in ("edits", "eff", "gen", "spe")})

# %% [markdown]
# ## 2. The MDP
#
# | | |
# |---|---|
# | state | the model's weights theta_{t-1} and the batch K_t of N edit requests |
# | observation | per edit module (an MLP projection): keys U and value gradients D at the answer tokens |
# | action | a weight update dW for every edit module |
# | transition | theta_t = theta_{t-1} + dW; the next batch arrives |
# | reward | minus the loss of this batch and the last k-1 ones on theta_t, with a locality term |
# | end | after T batches |
#
# `reset` starts from the original weights and draws T x N edits (seeded).

# %%
obs, info = env.reset(seed=SEED)
for key, value in obs.items():
    shapes = {m: v.shape for m, v in value.items()} if isinstance(value, dict) else value.shape
    print(f"{key:12s} {shapes}")
print("mask       ", obs["mask"])
print("edit_index ", obs["edit_index"])
print(env.render())

# %% [markdown]
# The observation has room for `max_tokens` answer tokens; `mask` marks the real ones and `edit_index`
# tells which edit each belongs to. For a linear module y = W x (stored here as (d_in, d_out)), the
# gradient of the edit loss with respect to W is `U.T @ D`: the observation is exactly what a gradient
# step needs, and what MEND, MALMEN and RLEdit's hypernetworks read.
#
# There are two action interfaces (`action_type`):
#
# - `"shift"`: the update dW itself, (d_in, d_out) per module;
# - `"values"` (the default, MALMEN's and RLEdit's): a value difference V per answer token, (N, d_out);
#   the environment finds the smallest update that makes U dW close to V, the ridge solve
#   dW = argmin ||U dW - V||^2 + lambda ||dW||^2 = (U^T U + lambda I)^{-1} U^T V.
#
# Below, V = -20 D (move every output against its gradient) and the ridge solve done by hand agree
# with the environment's:

# %%
action = {"values": {m: -20.0 * obs["value_grads"][m] for m in env.module_names}}
updates = env.updates_from_action(action)  # what step() would apply (validated, not applied)
m = env.module_names[0]
U, V = obs["keys"][m][obs["mask"] == 1], action["values"][m][obs["mask"] == 1]
by_hand = np.linalg.solve(U.T @ U + env.ridge_lambda * np.eye(U.shape[1]), U.T @ V)
print(
    f"{m}: dW {tuple(updates[m].shape)}, ridge solve by hand matches:",
    np.allclose(by_hand, updates[m], atol=1e-4),
)

# %% [markdown]
# `step` applies the update and returns the reward, with its terms in `info["losses"]`:
#
#     r_t = -[ sum_{j<k} decay^j (L_gen(theta_t; K_{t-j}) + loc_coef L_loc(theta_t; K_{t-j}))
#              + reg_coef ||dW_t||^2 ]
#
# - `gen`: cross-entropy of the new answers on this batch's prompts and paraphrases;
# - `loc`: KL divergence of the neighbourhood prompts' predictions from before to after the update;
# - `backtrack`: the same two terms on the previous k-1 batches, decayed (*memory backtracking*: an
#   update that undoes an earlier edit is penalised);
# - `reg`: the update's squared norm (weighted by `reg_coef`, 1e-4, in the total); `total` = -reward.

# %%
obs, reward, terminated, truncated, info = env.step(action)
print(
    f"reward {reward:.3f}, terminated {terminated}, losses",
    {k: round(v, 4) for k, v in info["losses"].items()},
)
print(env.render())

# %% [markdown]
# ## 3. A hand-written policy, and why naive editing forgets
#
# The simplest policy: move every output against its value gradient by a fixed step size (a plain
# gradient step through the ridge solve). A full episode is the usual Gymnasium loop; `render()` shows
# each step's batch and the running Eff/Spe (every step here, as `metrics_every=1`).


# %%
def gradient_step(obs: dict, step_size: float) -> dict:
    return {"values": {m: -step_size * obs["value_grads"][m] for m in env.module_names}}


def play(step_size: float, verbose: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """One episode of the gradient-step policy: each step's reward and loss terms, and the metrics curve."""
    obs, _ = env.reset(seed=SEED)
    rows, done = [], False
    while not done:
        obs, reward, done, _, info = env.step(gradient_step(obs, step_size))
        rows.append({"step": info["step"], "reward": reward, **info["losses"]})
        if verbose and info["step"] <= 2:
            print(env.render(), "\n")
    return pd.DataFrame(rows).set_index("step"), info["curve"]


gentle, gentle_curve = play(STEP_SIZES[0], verbose=True)
bold, bold_curve = play(STEP_SIZES[1])
print(f"step size {STEP_SIZES[1]}: reward and its terms along the episode")
print(bold)

# %% [markdown]
# `backtrack` grows as the window of earlier batches fills (up to k-1 of them, decayed): the reward
# charges every step again for the earlier edits' loss and locality, so an update that undoes earlier
# edits or disturbs the model costs. The retention plot shows Eff, Gen and Spe over *all* edits made so
# far, after every batch:

# %%
curves = {f"gradient step {s:g}": c for s, c in zip(STEP_SIZES, (gentle_curve, bold_curve), strict=True)}
show(plot_retention(curves, OUT / "gradient-retention.png", f"A plain gradient step, {T} x {N} edits"))
print(pd.DataFrame({k: {p: c[-1][p] for p in ("eff", "gen", "spe", "ppl")} for k, c in curves.items()}).T)

# %% [markdown]
# A small step barely installs the edits. A large one installs them, but each update is computed for
# its own batch only, and the updates pile up: what the model forgets is first what it knew *around* the
# edits (Spe, the neighbours' facts, falls) and its language (the perplexity on its own text climbs),
# while the edits themselves mostly hold here (Eff over all edits stays up). No fixed step size both
# installs and keeps. This is what a learned editor must solve: *which* update, for these
# keys and gradients, installs the batch and keeps the rest.
#
# ## 4. Hypernetworks: MALMEN on a frozen model, RLEdit on a changing one
#
# A hypernetwork maps each token's (key, value gradient) to a better value difference, learned from
# many edits (MEND, MALMEN); MALMEN then turns the values into dW with the ridge solve above. Both
# policies below are the same network, trained differently:
#
# - **MALMEN** trains one batch at a time on the *unedited* model: each training step edits theta_0,
#   scores the edit and undoes it. It never sees a model that earlier edits have changed, so in lifelong
#   use its updates are computed for a state it was not trained on.
# - **RLEdit** trains on whole edit sequences: step t acts on theta_{t-1}, which keeps all earlier
#   edits, and its training signal is the reward above (memory backtracking and locality included),
#   differentiated through the ridge solve (`differentiable=True`, `info["loss"]`). It learns on the
#   states its own policy visits: reinforcement learning, with an analytic policy gradient.
#
# Both train on the "train" split only; then each edits the same held-out sequence. (The step sizes are
# TinyWorld's, `docs/tinyworld-settings.md`; the paper's are for 8B models.)

# %%
hyper = {"init_lr": 3e-3, "meta_lr": 1e-4, "seed": SEED}
editors = {
    "untrained": RLEdit(env, RLEditConfig(**hyper)),
    "malmen": MALMEN(env, MALMENConfig(**hyper)),
    "rledit": RLEdit(env, RLEditConfig(**hyper)),
}
budgets = {"untrained": 0, "malmen": MALMEN_STEPS, "rledit": RLEDIT_SEQUENCES}
results = {}
for name, agent in editors.items():
    start = time.perf_counter()
    agent.learn(budgets[name], progress_bar=False)
    trained = time.perf_counter() - start
    if name == "rledit":  # for section 5; saved before editing, which updates the network's normaliser
        agent.save(OUT / "rledit.safetensors")
    results[name] = run_episode(env, agent, seed=SEED)
    unit = "sequences" if name == "rledit" else "steps"
    print(f"{name:9s} trained {budgets[name]:3d} {unit} in {trained:5.1f} s")
    if agent.training_log:
        pd.DataFrame(agent.training_log).to_csv(OUT / training_log_name(name, f"{T}x{N}", SEED), index=False)

# %%
show(
    plot_retention(
        {k: r["curve"] for k, r in results.items()},
        OUT / "hypernetwork-retention.png",
        f"Hypernetwork editors, {T} x {N} held-out edits",
    )
)
print(
    pd.DataFrame(
        {k: {p: r["metrics"][p] for p in ("eff", "gen", "spe", "ppl")} for k, r in results.items()}
    ).T
)

# %% [markdown]
# Read the final rows together with the perplexity (3.95 unedited). MALMEN's training only ever saw
# the unedited model: it installs the most edits, while Spe falls and the perplexity climbs as its
# updates pile up (on `tinyworld`: Eff 0.88, Spe 0.34, perplexity 177). RLEdit's training saw the edited
# model and paid for the damage in its reward: it installs fewer edits than MALMEN and keeps far more
# (0.69, 0.57, 13). The untrained network edits less and keeps more (0.51, 0.80, 4.6). RLEdit's
# training loss (right) falls, noisily, over its 12 sequences: a minute of training, not the paper's
# hours; the README's 20 x 10 benchmark trains longer and compares every agent.

# %%
show(plot_training(OUT))

# %% [markdown]
# ## 5. Plugging in a new algorithm
#
# ### stable-baselines3 on the compact interface
#
# The core observation and action are dicts of large arrays. `rledit_env/LifelongEditCompact-v0` wraps
# them into a small `Box` observation (random projections and norms of the keys and gradients, the edit
# loss, t/T) and a `Box` action in [-1, 1]^(N+1): a log step size per edit and the ridge lambda. It is
# the hand-written policy of section 3 with a step size per edit, which an RL algorithm chooses.

# %%
from stable_baselines3 import PPO

from agents.sb3 import EditMetricsCallback, SB3Agent

compact = gym.make(
    "rledit_env/LifelongEditCompact-v0",
    model=MODEL,
    split="train",
    num_batches=5,  # shorter training episodes than the evaluation's T (the benchmark does the same)
    batch_size=N,  # the compact action has one step size per edit: N must be the evaluation's
    probe_texts=[],
)
print("observation", compact.observation_space, "\naction     ", compact.action_space)
start = time.perf_counter()
ppo = PPO("MlpPolicy", compact, n_steps=50, batch_size=25, seed=SEED, verbose=0)
ppo.learn(PPO_STEPS, callback=EditMetricsCallback())
print(f"PPO: {PPO_STEPS} environment steps in {time.perf_counter() - start:.0f} s")
ppo_result = run_episode(env, SB3Agent(env, ppo), seed=SEED)  # the same held-out sequence as above
print({k: round(ppo_result["metrics"][k], 3) for k in ("eff", "gen", "spe", "ppl")})

# %% [markdown]
# A hundred steps teach PPO little (the README's benchmark gives it 400 five-batch episodes); the point
# is that any Box-action library plugs in unchanged, and `SB3Agent` brings the trained model back
# to the core environment, where every agent is compared.
#
# ### Your own agent, against RLEdit, through the harness
#
# An agent is a subclass of `agents.EditAgent` with `act(observation)`, and `learn`, `state_dict` and
# `load_state_dict` if it trains. `examples/cem_agent.py` is a complete one in under 100 lines: the
# cross-entropy method over a schedule of step sizes, acting through the compact interface. Its policy:

# %%
import inspect

from cem_agent import CEMStepSizes  # examples/cem_agent.py, next to this file

print(inspect.getsource(CEMStepSizes._compact_action))

# %% [markdown]
# The benchmark harness takes any agent as `module:Class` next to the registered ones: it trains each
# trainable agent on the training split, runs all of them on the same held-out sequence from the
# original model, and writes the table and plots. RLEdit comes from the checkpoint of section 4.
# From the repository root, `python -m experiments benchmark --agents rledit,examples.cem_agent:CEMStepSizes`
# does the same with a configuration's settings.

# %%
from experiments.harness import Benchmark, BenchmarkConfig
from experiments.report import plot_results, summary_table

config = BenchmarkConfig(
    name="tutorial",
    model=MODEL,
    schedules=[f"{T}x{N}"],
    seeds=[SEED],
    metrics_every=1,
    agents=["rledit", "cem_agent:CEMStepSizes", "noedit"],
    train_episodes={"cem_agent:CEMStepSizes": CEM_EPISODES},
)
bench = Benchmark(
    config, OUT / "benchmark", progress=False, checkpoints={"rledit": OUT / "rledit.safetensors"}
)
table = bench.run()
print(summary_table(table)[["agent", "eff", "gen", "spe", "ppl", "ms_per_edit"]].to_string(index=False))
show(plot_results(table, OUT / "benchmark")[0])

# %% [markdown]
# CEM picks the step sizes with the best return on training sequences; on `tinyworld` it edits hard:
# Eff 0.91, but Spe 0.22 and perplexity 381, where RLEdit keeps 0.57 and 13. The reward scores the
# locality of a few neighbours per edit and never sees perplexity: a search over it finds what it does
# not price.

# %% [markdown]
# ## 6. Exercises
#
# Each changes one thing and reruns a section. The expected outcomes were measured with this
# tutorial's settings on `tinyworld` (10 x 10 held-out edits, seed 0, the budgets above); other seeds
# and budgets move the numbers. Final Eff / Spe / perplexity (unedited: 0 / 0.99 / 3.95):
#
# 1. **Backtracking depth.** Train RLEdit with `RLEditConfig(**hyper, reward={"backtrack_depth": 1})`:
#    its training reward then scores the current batch only (like MALMEN's one-step loss, but on the
#    edited model).
#    *Expected:* more edits installed and a little less kept: 0.76 / 0.51 / 23, against 0.69 / 0.57 /
#    13 with k = 10.
# 2. **No locality term.** Train RLEdit with `reward={"loc_coef": 0.0}`: nothing in the reward asks it
#    to leave the neighbours' answers alone. *Expected:* it pushes edits in at any cost: 0.91 / 0.29 /
#    825.
# 3. **Another layer.** Make the environment with `edit_modules=["model.layers.1.mlp.gate_proj",
#    "model.layers.1.mlp.up_proj"]` (or layer 3; the default edits layer 2 of 4, `env.module_names`) and
#    rerun section 3. *Expected:* the earlier layer 1 installs more at step size 100 and wrecks the
#    model at 1000; layer 3 installs less and keeps more at 100. Step size 100: layer 1 0.45 / 0.70 /
#    8.5, layer 2 0.35 / 0.87 / 5.9, layer 3 0.26 / 0.92 / 4.4; step size 1000: layer 1 0.82 / 0.32 /
#    4461, layer 2 0.84 / 0.38 / 139, layer 3 0.85 / 0.33 / 106.
#
# Where to go next: `python -m experiments list` shows the agents and configurations;
# `experiments/configs/tinyworld-lifelong.json` is every agent on TinyWorld (about 30 minutes on a
# CPU), `smollm2-*.json` a real pretrained model on a CPU, `paper-*.json` the paper's 7-9B settings
# (GPU). `rledit_env.envs.LifelongEditEnv`'s docstring is the environment's full specification, and
# `examples/README.md` the guide to writing agents.

# %%
env.close()  # gives the model back as it was
print(f"tutorial finished in {time.perf_counter() - started:.0f} s")
