"""The in-process rollout pool and the episode runner every pool uses, whatever the task.

An env that a pool can run (``hasten/Denoising-v0``, ``hasten/Reasoning-v0``, a plug-in task's)
is a batched Gymnasium ``VectorEnv`` that also answers, between steps:

- ``max_decisions``: decision slots per row (the second axis of the decision random numbers);
- ``all_done()``: whether every row's episode has ended;
- ``deciding()``: (N,) bool, the rows whose action the next ``step`` applies;
- ``decision_index()``: (N,) int, the slot of each row's next decision (< ``max_decisions``);
- ``episode_batch()``: the per-row fields of a :class:`~hasten.rollouts.batch.TrajectoryBatch` once
  every row is done (``flops_fraction``, ``cost_fraction``, ``conditions``, ``seeds``, ``budgets``,
  ``images``, ``references``, ``decisions`` and ``extra``).
"""

from __future__ import annotations

import numpy as np
import torch

from hasten.rollouts.batch import TrajectoryBatch


def decision_uniforms(row_seeds, num_steps: int, num_knobs: int) -> torch.Tensor:
    """(N, num_steps, K) uniforms in [0, 1): row n's draws depend only on ``row_seeds[n]``."""
    return torch.stack([torch.rand(num_steps, num_knobs, generator=torch.Generator().manual_seed(int(s)))
                        for s in row_seeds])


def run_episodes(env, policy, conditions, seeds, budgets, row_seeds, greedy: bool = False) -> TrajectoryBatch:
    """Run one episode per row of ``env`` to its end; row n samples its decisions from ``row_seeds[n]``
    (so a row's trajectory is the same in any batch, on any worker)."""
    obs, _ = env.reset(options={"conditions": list(conditions), "seeds": list(seeds), "budget": budgets})
    n = env.num_envs
    uniforms = decision_uniforms(row_seeds, env.max_decisions, len(policy.knobs))
    rows = torch.arange(n)
    all_obs, all_actions, all_logp, all_active = [], [], [], []
    rewards = np.zeros(n)
    terms: dict[str, np.ndarray] = {}
    policy.eval()
    while not env.all_done():
        active = env.deciding()
        slots = torch.from_numpy(np.asarray(env.decision_index(), dtype=np.int64))
        actions, logp = policy.act(torch.from_numpy(obs), greedy=greedy, uniforms=uniforms[rows, slots])
        actions[~torch.from_numpy(active)] = 0
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
    return TrajectoryBatch(
        # inactive entries zeroed, so that shards joined by TrajectoryBatch.concatenate equal one batch
        obs=np.where(active[..., None], np.stack(all_obs), 0).astype(np.float32),
        actions=np.where(active[..., None], np.stack(all_actions), 0).astype(np.int64),
        logp=np.where(active, np.stack(all_logp), 0).astype(np.float32), active=active,
        rewards=rewards, terms=terms, **env.episode_batch())


class InProcessPool:
    """Runs episodes of a task's batched env with a policy, in this process.

    Args:
        make_env: builds the task's batched env for ``n`` rows (one env is kept per size).
        rows_per_batch: rows per batched episode run (whole groups of ``group_size``; 0 = every row
            of a ``collect`` in one batch). On a CPU, batches of 16-32 rows beat one of 64: the
            embedded generator's 64 rollouts take 16.0 s in batches of 16 and 20.3 s in one batch.
        group_size: rows per group (a batch holds whole groups).
    """

    def __init__(self, make_env, rows_per_batch: int = 0, group_size: int = 1):
        self.make_env = make_env
        self.rows_per_batch = int(rows_per_batch)
        self.group_size = max(1, int(group_size))
        self.envs: dict[int, object] = {}

    def stats(self) -> dict:
        """Pool metrics of the last ``collect`` (none for the in-process pool)."""
        return {}

    def close(self) -> None:
        """Nothing to release (the Ray pool stops its actors here)."""

    def env(self, n: int):
        """The env of ``n`` rows (built once)."""
        if n not in self.envs:
            self.envs[n] = self.make_env(n)
        return self.envs[n]

    def batches(self, rows: int) -> list[slice]:
        """Row ranges of each batched run: whole groups, at most ``rows_per_batch`` rows (one group at least)."""
        if self.rows_per_batch <= 0 or rows <= self.rows_per_batch:
            return [slice(0, rows)]
        step = max(self.group_size, self.rows_per_batch // self.group_size * self.group_size)
        return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]

    def collect(self, policy, conditions, seeds, budgets, row_seeds, greedy: bool = False) -> TrajectoryBatch:
        """Run one episode per row to its end (:func:`run_episodes`), in batches of ``rows_per_batch`` rows."""
        conditions, seeds = list(conditions), list(seeds)
        budgets, row_seeds = np.asarray(budgets), np.asarray(row_seeds)
        parts = [run_episodes(self.env(part.stop - part.start), policy, conditions[part], seeds[part], budgets[part],
                              row_seeds[part], greedy=greedy) for part in self.batches(len(conditions))]
        return parts[0] if len(parts) == 1 else TrajectoryBatch.concatenate(parts)
