"""A third process type, added through the public registries only (``register_task``, ``register_reward``):
the proof that a process type is one plug-in.

``countdown``: each row holds a counter (its condition, 4..12 plus a noise-seeded offset of 0..3); at
each step the policy chooses a stride of 1, 2 or 3; the episode ends when the counter reaches 0. The
"full compute" reference is counting down by 1. The reward ``toy_cost`` pays for fewer steps, and
``toy_overshoot`` penalises going below zero (a stride larger than what is left).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

import hasten
from hasten.rewards import register_reward
from hasten.tasks import Task, TaskSetup

STRIDES = [1, 2, 3]
MAX_STEPS = 16
OBSERVATION = ["remaining", "steps", "budget"]


@dataclass
class CountdownInputs:
    steps: torch.Tensor  # (B,) steps taken
    full_steps: torch.Tensor  # (B,) steps of counting down by one
    overshoot: torch.Tensor  # (B,) how far below zero the last stride went
    budget: torch.Tensor


@register_reward("toy_cost")
class ToyCost:
    def __call__(self, inputs: CountdownInputs) -> torch.Tensor:
        return 1.0 - inputs.steps / inputs.full_steps


@register_reward("toy_overshoot")
class ToyOvershoot:
    def __call__(self, inputs: CountdownInputs) -> torch.Tensor:
        return -inputs.overshoot


class Counters:
    """The references: the full countdown of each (condition, seed), as in the other tasks' stores."""

    def __init__(self):
        self.table: dict[tuple[int, int], int] = {}

    @staticmethod
    def start(condition, seed) -> int:
        return int(condition) + int(seed) % 4

    def get(self, conditions, seeds) -> np.ndarray:
        for c, s in zip(conditions, seeds):
            self.table.setdefault((int(c), int(s)), self.start(c, s))
        return np.array([self.table[(int(c), int(s))] for c, s in zip(conditions, seeds)], dtype=np.float32)

    def known(self, conditions, seeds) -> dict:
        return {(int(c), int(s)): self.table[(int(c), int(s))] for c, s in zip(conditions, seeds)
                if (int(c), int(s)) in self.table}

    def remember(self, known: dict) -> None:
        self.table.update(known)

    def add(self, conditions, seeds, references) -> None:
        for c, s, r in zip(conditions, seeds, np.asarray(references).reshape(-1)):
            self.table.setdefault((int(c), int(s)), int(r))

    @property
    def shards(self) -> list:
        return []


class CountdownVectorEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}

    def __init__(self, num_envs: int, reward, references: Counters, budget: float = 0.5):
        self.num_envs, self.reward, self.references, self.budget = num_envs, reward, references, budget
        self.single_observation_space = spaces.Box(0.0, np.inf, (len(OBSERVATION),), np.float32)
        self.single_action_space = spaces.MultiDiscrete([len(STRIDES)])
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        self.conditions = np.asarray(options["conditions"], dtype=np.int64)
        self.seeds = np.asarray(options["seeds"], dtype=np.int64)
        self.budgets = np.broadcast_to(np.asarray(options.get("budget", self.budget), dtype=np.float64),
                                       (self.num_envs,)).copy()
        self.full = self.references.get(self.conditions, self.seeds)
        self.remaining = self.full.astype(np.int64).copy()
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.overshoot = np.zeros(self.num_envs)
        self.decisions = np.full((self.num_envs, MAX_STEPS, 1), -1, dtype=np.int64)
        return self._obs(), {}

    def _obs(self):
        return np.stack([self.remaining, self.steps, self.budgets], axis=1).astype(np.float32)

    # the rollout pools' questions
    max_decisions = MAX_STEPS

    def all_done(self) -> bool:
        return bool((self.remaining <= 0).all())

    def deciding(self) -> np.ndarray:
        return self.remaining > 0

    def decision_index(self) -> np.ndarray:
        return np.minimum(self.steps, MAX_STEPS - 1)

    def step(self, actions):
        actions = np.asarray(actions).reshape(self.num_envs, -1)[:, 0]
        rows = np.flatnonzero(self.deciding())
        self.decisions[rows, self.decision_index()[rows], 0] = actions[rows]
        stride = np.asarray(STRIDES)[actions]
        self.remaining[rows] -= stride[rows]
        self.steps[rows] += 1
        finished = np.zeros(self.num_envs, dtype=bool)
        finished[rows] = self.remaining[rows] <= 0
        self.overshoot[finished] = -self.remaining[finished]
        rewards, info = np.zeros(self.num_envs), {"reward_terms": {}}
        if finished.any():
            idx = np.flatnonzero(finished)
            total, terms = self.reward(CountdownInputs(
                steps=torch.from_numpy(self.steps[idx].astype(np.float64)),
                full_steps=torch.from_numpy(self.full[idx].astype(np.float64)),
                overshoot=torch.from_numpy(self.overshoot[idx]), budget=torch.from_numpy(self.budgets[idx])))
            rewards[idx] = total.numpy()
            for name, value in terms.items():
                column = np.full(self.num_envs, np.nan)
                column[idx] = value.numpy()
                info["reward_terms"][name] = column
        done = self.remaining <= 0
        return self._obs(), rewards, done, np.zeros(self.num_envs, dtype=bool), info

    def episode_batch(self) -> dict:
        fraction = self.steps / self.full
        return dict(flops_fraction=fraction, cost_fraction=fraction, conditions=self.conditions.copy(),
                    seeds=self.seeds.copy(), budgets=self.budgets.copy(),
                    images=np.zeros((self.num_envs, 0), dtype=np.float32), references=self.full[:, None],
                    decisions=self.decisions.copy(), extra={"steps": self.steps.copy()})


class CountdownModel:
    """The "frozen model" of the toy task: nothing to compute, only its conditions."""

    conditions = list(range(4, 13))


@hasten.register_task
class CountdownTask(Task):
    name = "countdown"
    default_model = "toy:countdown"
    default_rewards = {"toy_cost": {"weight": 1.0}, "toy_overshoot": {"weight": 2.0}}
    report_panels = (("charts/reward", "reward"), ("charts/steps", "steps"), ("charts/reward", "reward"))
    report_knobs = ("stride",)

    def claims(self, model: str) -> bool:
        return model.startswith("toy:countdown")

    def load_model(self, name_or_path: str, options=None, device=None):
        return CountdownModel()

    def setup(self, config, model, reward, run_dir: str) -> TaskSetup:
        policy_config = dataclasses.replace(config.policy, knobs={"stride": STRIDES}, observation=list(OBSERVATION),
                                            generator=config.generator, budget=config.budget)
        rng = np.random.default_rng(config.seed)
        pairs = np.stack([np.asarray(model.conditions)[np.arange(config.train_pairs) % len(model.conditions)],
                          rng.integers(0, 1_000, size=config.train_pairs)], axis=1)
        return TaskSetup(policy=hasten.Policy(policy_config), references=Counters(),
                         env_options={"budget": config.budget}, pairs=pairs, num_steps=MAX_STEPS)

    def references(self, model, env_options: dict, cache_dir=None):
        return Counters()

    def make_env(self, num_envs, model, reward, references, env_options, group_size=1):
        return CountdownVectorEnv(num_envs, reward, references, **env_options)

    def metrics(self, batch) -> dict:
        return {"charts/steps": float(batch.extra["steps"].mean())}

    def owns_policy(self, config) -> bool:
        return list(config.knobs) == ["stride"]

    def policy_class(self, config, where: str = "policy"):
        return hasten.Policy
