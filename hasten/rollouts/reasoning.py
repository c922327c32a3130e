"""The in-process rollout pool of ``hasten/Reasoning-v0``: one batched reasoning env in the controller."""

from __future__ import annotations

import numpy as np
import torch

from hasten.envs.reasoning import ReasoningVectorEnv, chain_table
from hasten.rollouts.batch import TrajectoryBatch
from hasten.rollouts.inprocess import decision_uniforms


class ReasoningPool:
    """Runs episodes of a :class:`ReasoningVectorEnv` with a chain-of-thought head, in this process
    (same ``collect`` as :class:`~hasten.rollouts.InProcessPool`; conditions are difficulties,
    seeds problem seeds)."""

    def __init__(self, env: ReasoningVectorEnv):
        self.env = env

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        """Nothing to release."""

    def collect(self, policy, conditions, seeds, budgets, row_seeds, greedy: bool = False) -> TrajectoryBatch:
        env = self.env
        obs, _ = env.reset(options={"conditions": list(conditions), "seeds": list(seeds), "budget": budgets})
        n, max_decisions = env.num_envs, env.max_steps + 1
        uniforms = decision_uniforms(row_seeds, max_decisions, 1)
        rows = torch.arange(n)
        decisions = np.full((n, max_decisions, 1), -1, dtype=np.int64)
        all_obs, all_actions, all_logp, all_active = [], [], [], []
        rewards = np.zeros(n)
        terms: dict[str, np.ndarray] = {}
        policy.eval()
        while not env.terminated.all():
            active = env.deciding()
            steps = torch.from_numpy(np.minimum(env.decoder.steps, max_decisions - 1))
            actions, logp = policy.act(torch.from_numpy(obs), greedy=greedy, uniforms=uniforms[rows, steps])
            actions[~torch.from_numpy(active)] = 0
            decisions[np.flatnonzero(active), steps.numpy()[active], 0] = actions.numpy()[active, 0]
            all_obs.append(obs)
            all_actions.append(actions.numpy())
            all_logp.append(logp.numpy())
            all_active.append(active)
            obs, reward, _, _, info = env.step(actions.numpy())
            rewards += reward
            for name, column in info["reward_terms"].items():
                target = terms.setdefault(name, np.full(n, np.nan))
                done_now = ~np.isnan(column)
                target[done_now] = column[done_now]
        active = np.stack(all_active)
        full = env.full_chains.get(env.conditions, env.seeds)
        think = env.decoder.think_tokens.copy()
        fraction = think / np.maximum(full["think_tokens"], 1)
        empty = np.zeros((n, 0), dtype=np.float32)
        return TrajectoryBatch(
            obs=np.where(active[..., None], np.stack(all_obs), 0).astype(np.float32),
            actions=np.where(active[..., None], np.stack(all_actions), 0).astype(np.int64),
            logp=np.where(active, np.stack(all_logp), 0).astype(np.float32), active=active,
            rewards=rewards, terms=terms, flops_fraction=fraction, cost_fraction=fraction,
            conditions=env.conditions.copy(), seeds=env.seeds.copy(), budgets=env.budgets.copy(),
            images=empty, references=chain_table(full), decisions=decisions,
            extra={"correct": env.correct.copy(), "think_tokens": think, "full_tokens": full["think_tokens"],
                   "full_correct": full["correct"], "steps": env.decoder.steps.copy(),
                   "answer_tokens": env.decoder.answer_tokens.copy(),
                   "stopped_by": env.decoder.stopped_by.copy()})
