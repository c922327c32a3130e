"""The in-process rollout pool: one batched Denoising env in the controller's process."""

from __future__ import annotations

import numpy as np
import torch

from hasten.envs.denoising import DenoisingVectorEnv
from hasten.rollouts.batch import TrajectoryBatch


def decision_uniforms(row_seeds, num_steps: int, num_knobs: int) -> torch.Tensor:
    """(N, num_steps, K) uniforms in [0, 1): row n's draws depend only on ``row_seeds[n]``."""
    return torch.stack([torch.rand(num_steps, num_knobs, generator=torch.Generator().manual_seed(int(s)))
                        for s in row_seeds])


class InProcessPool:
    """Runs episodes of a :class:`DenoisingVectorEnv` with a policy, in this process.

    Args:
        env: the batched env (its ``num_envs`` is the number of episodes per call).
    """

    def __init__(self, env: DenoisingVectorEnv):
        self.env = env

    def stats(self) -> dict:
        """Pool metrics of the last ``collect`` (none for the in-process pool)."""
        return {}

    def close(self) -> None:
        """Nothing to release (the Ray pool stops its actors here)."""

    def collect(self, policy, conditions, seeds, budgets, row_seeds, greedy: bool = False) -> TrajectoryBatch:
        """Run one episode per row to its end; row n samples its decisions from ``row_seeds[n]``."""
        env = self.env
        obs, _ = env.reset(options={"conditions": list(conditions), "seeds": list(seeds), "budget": budgets})
        n = env.num_envs
        uniforms = decision_uniforms(row_seeds, env.num_steps, env.single_action_space.shape[0])
        rows = torch.arange(n)
        all_obs, all_actions, all_logp, all_active = [], [], [], []
        rewards = np.zeros(n)
        terms: dict[str, np.ndarray] = {}
        policy.eval()
        while not env.rollout.done.all():
            active = (~env.rollout.done).numpy()
            calls = env.rollout.model_calls.clamp(max=env.num_steps - 1)
            actions, logp = policy.act(torch.from_numpy(obs), greedy=greedy, uniforms=uniforms[rows, calls])
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
        labels = env.rollout.labels.cpu().numpy()
        spent = env.spent()
        flops = env.rollout.flops_fraction().copy()
        return TrajectoryBatch(
            # inactive entries zeroed, so that shards joined by TrajectoryBatch.concatenate equal one batch
            obs=np.where(active[..., None], np.stack(all_obs), 0).astype(np.float32),
            actions=np.where(active[..., None], np.stack(all_actions), 0).astype(np.int64),
            logp=np.where(active, np.stack(all_logp), 0).astype(np.float32), active=active,
            rewards=rewards, terms=terms, flops_fraction=flops, cost_fraction=flops if spent is None else spent,
            conditions=labels, seeds=np.asarray(seeds, dtype=np.int64), budgets=env.budgets.copy(),
            images=env.images().cpu().numpy(), references=env.references.get(labels, seeds).numpy(),
            decisions=env.rollout.decisions.numpy().copy())
