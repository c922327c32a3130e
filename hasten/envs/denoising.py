"""``hasten/Denoising-v0``: the denoising loop of a frozen flow-matching DiT as a Gymnasium env.

Each row of the batch is one (class, noise seed) episode; one ``step`` is one batched model call
in which every unfinished row applies its own knob levels. The native vector env is what training
uses; :class:`DenoisingEnv` is the single-row view (what ``gymnasium.make`` returns and
``check_env`` checks).
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hasten.errors import HastenError
from hasten.models.rows import OBSERVATION, OBSERVATION_CHANGE_MAX
from hasten.knobs import KNOBS, forecast_space
from hasten.envs.common import SingleRowEnv, reset_options, reward_columns
from hasten.envs.references import ReferenceCache
from hasten.rewards import CompositeReward, RewardInputs, build_reward

DEFAULT_REWARDS = {"fidelity": {"weight": 1.0}, "cost": {"weight": 4.0, "mode": "overshoot"}}
MAX_NOISE_SEED = 2**31 - 1


def observation_space() -> spaces.Box:
    """The Box of one row's observation (columns: :data:`hasten.models.adapter.OBSERVATION`)."""
    high = np.ones(len(OBSERVATION), dtype=np.float32)
    high[OBSERVATION.index("first_block_change")] = OBSERVATION_CHANGE_MAX
    return spaces.Box(low=np.zeros(len(OBSERVATION), dtype=np.float32), high=high, dtype=np.float32)


def action_space() -> spaces.MultiDiscrete:
    """Levels of (step_skip, cache_reuse, sparse_attention) for one row and one model call."""
    return spaces.MultiDiscrete([len(k.levels) for k in KNOBS])


def _load(generator):
    if isinstance(generator, str):
        from hasten.models import load_generator

        return load_generator(generator)
    return generator


class DenoisingVectorEnv(VectorEnv):
    """A batch of denoising episodes of a frozen DiT, one batched model call per step.

    ## Action Space
    ``MultiDiscrete([6, 3, 3])`` per row: step_skip (jump 0/1/2/3/5/7 extra schedule intervals),
    cache_reuse (none / deep half / all but the first block), sparse_attention (keep 1.0 / 0.5 /
    0.25 of the image key blocks). Level 0 everywhere is the plain sampler.

    ## Observation Space
    ``Box(0, high, (7,), float32)`` per row: noise level, schedule position, relative change of the
    first block's output since the last full computation (capped at 10), intervals since the last
    full computation, FLOPs spent so far (fraction of the full trajectory), target budget, and
    whether cached residuals exist.

    ## Rewards
    0 until a row terminates; then the composite reward (default: fidelity as PSNR/10 to the
    full-compute sample of the same class and noise, minus 4x the relative overshoot of the FLOPs
    budget). ``info["reward_terms"]`` holds each term for the rows that just terminated.

    ## Episode End
    Terminated when the row's schedule reaches t = 0 (after at most ``num_steps`` model calls).
    Never truncated. Autoreset is disabled (``AutoresetMode.DISABLED``): finished rows stay
    finished (no compute, reward 0, ``terminated`` True) until ``reset(options={"reset_mask": m})``.

    ## Arguments
    - ``num_envs``: rows per batch.
    - ``generator``: ``"embedded:shapes"``, a generator folder, or a loaded adapter.
    - ``num_steps``, ``guidance``: the schedule (default: the generator's).
    - ``budget``: target FLOPs fraction, or ``budget_range=(lo, hi)`` to draw one per episode.
    - ``rewards``: a :class:`~hasten.rewards.CompositeReward` or a spec ``{name: {weight: w, ...}}``.
    - ``reference_dir``: where full-compute references are cached on disk.
    - ``cost_unit``: ``"flops"`` (analytic) or ``"time"`` (measured time per knob level,
      ``time_table`` (3, 3) by (cache, sparse) level, measured at batch 1 when not given): the unit
      of the cost-spent observation, the budget and the cost term.
    - ``forecast``: a row that skips intervals steps through them with its model output forecast
      at their noise levels (first order from its last two model calls, as TaylorSeer forecasts a
      model's output; ``True`` or ``"velocity"`` extrapolates the velocity, ``"noise"`` the noise
      prediction, see :class:`~hasten.knobs.OutputForecast`) instead of its current
      velocity, and a row that reuses cached residuals adds them forecast to the call's noise
      level from its last two full computations; no extra model call, no counted FLOPs.

    ``reset`` options: ``conditions`` and ``seeds`` (one class and noise seed per row; drawn from
    ``np_random`` when absent), ``budget`` (a number or one per row), ``reset_mask``.
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}

    def __init__(self, num_envs: int = 8, generator="embedded:shapes", num_steps: int | None = None,
                 guidance: float | None = None, budget: float = 0.4, budget_range=None, rewards=None,
                 reference_dir: str | None = None, references: ReferenceCache | None = None,
                 cost_unit: str = "flops", time_table=None, forecast: bool | str = False):
        if num_envs < 1:
            raise HastenError(f"num_envs={num_envs}: expected an integer >= 1")
        self.generator = _load(generator)
        self.num_envs = int(num_envs)
        self.num_steps = self.generator.default_steps if num_steps is None else int(num_steps)
        self.guidance = self.generator.default_guidance if guidance is None else float(guidance)
        self.budget_range = None if budget_range is None else (float(budget_range[0]), float(budget_range[1]))
        for value in (budget, *(self.budget_range or ())):
            if not 0 < value <= 1:
                raise HastenError(f"budget={value}: expected a FLOPs fraction in (0, 1]")
        self.budget = float(budget)
        if cost_unit not in ("flops", "time"):
            raise HastenError(f"cost_unit={cost_unit!r}: expected 'flops' or 'time'")
        self.cost_unit = cost_unit
        self.forecast = forecast_space(forecast)
        self.time_table = None
        if cost_unit == "time":
            from hasten.knobs.cost import measure_time_fractions

            self.time_table = time_table if time_table is not None else measure_time_fractions(self.generator)
        self.reward = rewards if isinstance(rewards, CompositeReward) else build_reward(rewards or DEFAULT_REWARDS)
        self.references = references or ReferenceCache(self.generator, self.num_steps, self.guidance, reference_dir)
        self.single_observation_space = observation_space()
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.rollout = None
        self.seeds = np.zeros(self.num_envs, dtype=np.int64)
        self.budgets = np.full(self.num_envs, self.budget)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        mask = np.asarray(options.get("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        if mask.shape != (self.num_envs,):
            raise HastenError(f"reset_mask of shape {mask.shape}: expected ({self.num_envs},)")
        rows = np.flatnonzero(mask)
        conditions, seeds, budgets = reset_options(self, options, MAX_NOISE_SEED, unit="FLOPs fractions")
        labels = self.generator.encode(list(conditions))
        if self.rollout is None or rows.size == self.num_envs:
            self.rollout = self.generator.start(labels, seeds.tolist(), self.num_steps, self.guidance,
                                                forecast=self.forecast)
        else:
            self.rollout.reset_rows(torch.from_numpy(rows), labels[rows], self.generator.noise(seeds[rows].tolist()),
                                    seeds[rows])
        self.seeds[rows] = seeds[rows]
        self.budgets[rows] = budgets[rows]
        return self.rollout.observation(torch.from_numpy(self.budgets), self.spent()), self._info()

    def draw_conditions(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` classes drawn from ``rng`` (a reset without ``conditions``)."""
        return rng.integers(0, self.generator.num_classes, size=n)

    def spent(self) -> np.ndarray | None:
        """(num_envs,) cost spent so far in the env's unit (None: the FLOPs the rollout counts)."""
        if self.cost_unit == "flops":
            return None
        from hasten.knobs.cost import time_spent

        return time_spent(self.rollout.decisions.numpy(), self.time_table, self.num_steps)

    def _info(self) -> dict:
        return {"condition": self.rollout.labels.cpu().numpy().copy(), "noise_seed": self.seeds.copy(),
                "budget": self.budgets.copy()}

    def step(self, actions):
        if self.rollout is None:
            raise HastenError("step() before reset(): call reset() first")
        actions = np.asarray(actions)
        active = (~self.rollout.done).numpy()
        spent = self.generator.step(self.rollout, actions).numpy()
        terminated = self.rollout.done.numpy().copy()
        finished = terminated & active
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        info = self._info()
        info.update(active=active, step_flops=spent, flops_fraction=self.rollout.flops_fraction().copy(),
                    reward_terms={})
        spent_now = self.spent()
        if finished.any():
            total, terms = self.episode_reward(np.flatnonzero(finished), spent_now)
            rewards[finished] = total.numpy()
            info["reward_terms"] = reward_columns(self.num_envs, finished, terms)
        obs = self.rollout.observation(torch.from_numpy(self.budgets), spent_now)
        return obs, rewards, terminated, np.zeros(self.num_envs, dtype=bool), info

    def episode_reward(self, rows: np.ndarray, spent: np.ndarray | None = None):
        """Composite reward and its terms for finished ``rows`` (fidelity against cached references).

        ``spent``: the cost spent per row in the env's unit, if already computed this step.
        """
        labels = self.rollout.labels.cpu().numpy()[rows]
        if spent is None:
            spent = self.spent()
        inputs = RewardInputs(images=self.rollout.images()[torch.from_numpy(rows)].cpu(),
                              references=self.references.get(labels, self.seeds[rows]),
                              flops_fraction=torch.from_numpy(self.rollout.flops_fraction()[rows]),
                              budget=torch.from_numpy(self.budgets[rows]),
                              cost_fraction=None if spent is None else torch.from_numpy(spent[rows]))
        return self.reward(inputs)

    def images(self) -> torch.Tensor:
        """(num_envs, C, H, W) current samples (the finished ones are final)."""
        return self.rollout.images()

    # ------------------------------------------------------------------------- the pools' questions
    @property
    def max_decisions(self) -> int:
        """Decision slots per row: one per model call, at most one call per schedule step."""
        return self.num_steps

    def all_done(self) -> bool:
        return bool(self.rollout.done.all())

    def deciding(self) -> np.ndarray:
        """(num_envs,) rows that make a model call at the next ``step`` (every unfinished row)."""
        return (~self.rollout.done).numpy()

    def decision_index(self) -> np.ndarray:
        """(num_envs,) each row's model-call count: the slot of its next decision."""
        return self.rollout.model_calls.clamp(max=self.num_steps - 1).numpy()

    def episode_batch(self) -> dict:
        """The per-row fields of a :class:`~hasten.rollouts.batch.TrajectoryBatch` of the finished episodes."""
        labels = self.rollout.labels.cpu().numpy()
        spent = self.spent()
        flops = self.rollout.flops_fraction().copy()
        return dict(flops_fraction=flops, cost_fraction=flops if spent is None else spent, conditions=labels,
                    seeds=self.seeds.copy(), budgets=self.budgets.copy(), images=self.images().cpu().numpy(),
                    references=self.references.get(labels, self.seeds).numpy(),
                    decisions=self.rollout.decisions.numpy().copy())


class DenoisingEnv(SingleRowEnv):
    """Single-row view of :class:`DenoisingVectorEnv` (``gymnasium.make("hasten/Denoising-v0")``).

    Same Action Space, Observation Space, Rewards and Arguments as the vector env, for one
    episode at a time; ``reset`` draws the class and the noise seed from ``np_random`` unless
    ``options`` give ``condition`` / ``seed`` / ``budget``.
    """

    vector_class = DenoisingVectorEnv
    max_seed = MAX_NOISE_SEED
