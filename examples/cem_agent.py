"""A custom editor in under 100 lines: the cross-entropy method over step sizes (examples/README.md).

The policy is two numbers, the compact action's step for every edit at the start and at the end of the
episode (the ridge penalty stays at the env's ``ridge_lambda``). CEM samples a population of them, plays
one training episode with each (the same edits for all) and refits a Gaussian to the best.

    python examples/cem_agent.py   # trains on TinyWorld-tiny's training edits, then edits held-out ones
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from agents.base import AgentConfig, Callback, EditAgent, run_episode
from rledit_env.envs import LifelongEditEnv
from rledit_env.wrappers import CompactConfig, CompactEditWrapper


@dataclasses.dataclass
class CEMConfig(CompactConfig, AgentConfig):
    population: int = 8
    elite: int = 3
    init_std: float = 0.5
    min_std: float = 0.1


class CEMStepSizes(EditAgent):
    """Edits through the compact interface with a schedule of step sizes found by CEM."""

    Config = CEMConfig
    action_type = "values"  # the compact interface sits on the "values" interface
    name = "cem"

    def __init__(self, env: gym.Env, config: CEMConfig | None = None):
        super().__init__(env, config)
        self.wrapper = CompactEditWrapper(env, self.config)  # its two mappings, on the benchmark env
        self.mean, self.std = np.zeros(2), np.full(2, self.config.init_std)

    def _compact_action(self, theta: np.ndarray, compact_obs: np.ndarray) -> np.ndarray:
        progress = compact_obs[-1]  # t / T, the last observation feature
        action = np.full(self.wrapper.action_space.shape, theta[0] + (theta[1] - theta[0]) * progress)
        action[-1] = 0.0  # log-lambda at the environment's ridge_lambda
        return action.clip(-1, 1).astype(np.float32)

    def act(self, observation) -> dict:
        theta_action = self._compact_action(self.mean, self.wrapper.observation(observation))
        return self.wrapper.action(theta_action, observation)

    def learn(
        self,
        episodes: int = 32,
        *,
        train_env: gym.Env | None = None,
        callback: Callback | None = None,
        progress_bar: bool = True,
    ) -> CEMStepSizes:
        """``episodes`` training episodes in all (population episodes per CEM iteration), by default on
        the model's training edits (``EditAgent.training_env``)."""
        cfg, callback = self.config, callback or Callback()
        env = CompactEditWrapper(self.training_env(train_env), cfg)
        rng = np.random.default_rng(cfg.seed)
        callback.on_training_start(self)
        for iteration in tqdm(range(episodes // cfg.population), desc=self.name, disable=not progress_bar):
            thetas = self.mean + self.std * rng.standard_normal((cfg.population, 2))
            returns = [
                self._episode_return(env, theta, seed=cfg.seed * 10_000 + iteration) for theta in thetas
            ]
            elite = thetas[np.argsort(returns)[-cfg.elite :]]
            self.mean, self.std = elite.mean(0), np.maximum(elite.std(0), cfg.min_std)
            if callback.on_episode_end(self, iteration, {"return": float(np.mean(returns))}) is False:
                break
        if train_env is None:
            env.close()  # gives the model back as it was
        callback.on_training_end(self)
        return self

    def _episode_return(self, env: CompactEditWrapper, theta: np.ndarray, seed: int) -> float:
        (obs, _), total, done = env.reset(seed=seed), 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(self._compact_action(theta, obs))
            total, done = total + reward, terminated or truncated
        return total

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = np.asarray(state["mean"]), np.asarray(state["std"])


if __name__ == "__main__":
    setup = {"model": "tinyworld-tiny", "num_batches": 5, "batch_size": 4, "action_type": "values"}
    agent = CEMStepSizes(LifelongEditEnv(**setup)).learn(32)  # on the model's training split
    print("CEM found (start step, end step) =", agent.mean.round(2))
    print(run_episode(agent.env, agent, seed=0)["metrics"])
