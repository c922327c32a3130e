"""What every task's env shares: the reset options of a batch, the reward-term columns of ``info``,
and the single-row view that ``gymnasium.make`` returns and ``check_env`` checks."""

from __future__ import annotations

import numpy as np
import gymnasium as gym

from hasten.errors import HastenError


def reset_options(env, options: dict, max_seed: int, unit: str = "fractions"):
    """(conditions, seeds, budgets) of a reset of ``env``'s ``num_envs`` rows: ``options``'
    ``conditions``, ``seeds`` and ``budget`` (a number or one per row), else drawn from
    ``env.np_random`` (conditions by ``env.draw_conditions(rng, n)``, budgets from ``env.budget_range``)."""
    n = env.num_envs
    conditions, seeds = options.get("conditions"), options.get("seeds")
    if conditions is None:
        conditions = env.draw_conditions(env.np_random, n)
    if seeds is None:
        seeds = env.np_random.integers(0, max_seed, size=n)
    if len(conditions) != n or len(seeds) != n:
        raise HastenError(f"reset options: {len(conditions)} conditions and {len(seeds)} seeds; "
                          f"expected {n} of each (one per row)")
    budgets = options.get("budget")
    if budgets is None:
        budgets = env.np_random.uniform(*env.budget_range, size=n) if env.budget_range else np.full(n, env.budget)
    budgets = np.broadcast_to(np.asarray(budgets, dtype=np.float64), (n,)).copy()
    if np.any(budgets <= 0) or np.any(budgets > 1):
        raise HastenError(f"budget {budgets.min():.3g}..{budgets.max():.3g}: expected {unit} in (0, 1]")
    return conditions, np.asarray(seeds, dtype=np.int64), budgets


def reward_columns(num_envs: int, rows: np.ndarray, terms: dict) -> dict[str, np.ndarray]:
    """``info["reward_terms"]``: each term's values at ``rows`` (the rows that just finished), NaN elsewhere."""
    columns = {}
    for name, value in terms.items():
        column = np.full(num_envs, np.nan)
        column[rows] = value.numpy()
        columns[name] = column
    return columns


class SingleRowEnv(gym.Env):
    """The single-row view of a batched env (``vector_class``, built with ``num_envs=1``): same spaces,
    rewards and arguments, one episode at a time; ``reset`` draws the condition and the seed from
    ``np_random`` unless ``options`` give ``condition`` / ``seed`` / ``budget``."""

    metadata = {"render_modes": []}
    vector_class: type = None
    max_seed: int = 2**31 - 1

    def __init__(self, **kwargs):
        self.vector = self.vector_class(num_envs=1, **kwargs)
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        vec = self.vector
        condition = options.get("condition", int(vec.draw_conditions(self.np_random, 1)[0]))
        row_seed = options.get("seed", int(self.np_random.integers(0, self.max_seed)))
        budget = options.get("budget")
        if budget is None:
            budget = float(self.np_random.uniform(*vec.budget_range)) if vec.budget_range else vec.budget
        obs, info = vec.reset(options={"conditions": [condition], "seeds": [row_seed], "budget": budget})
        return obs[0], {k: v[0] for k, v in info.items()}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.vector.step(np.asarray(action).reshape(1, -1))
        info = {k: (v[0] if isinstance(v, np.ndarray) else {n: c[0] for n, c in v.items()})
                for k, v in info.items()}
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), info
