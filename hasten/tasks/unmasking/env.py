"""``hasten/Unmasking-v0``: the unmasking loop of a frozen masked-diffusion LM as a Gymnasium env.

Each row is one problem decoded on its own canvas (:class:`~hasten.tasks.unmasking.decode.CanvasDecoder`);
one ``step`` takes every unfinished row one denoiser call further. :class:`UnmaskingEnv` is the
single-row view (``gymnasium.make``); training uses the native vector env.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hasten.envs.common import SingleRowEnv, reset_options, reward_columns
from hasten.errors import HastenError
from hasten.rewards import CompositeReward, build_reward
from hasten.tasks.unmasking.decode import CanvasDecoder, threshold_commit
from hasten.tasks.unmasking.model import load_dllm

#: the knobs of an unmasking head: the confidence a masked token needs to be committed now ("top1": only
#: the most confident one, the full schedule's rule; "all": every token, i.e. stop), and whether the next
#: denoiser call reuses the cached keys/values of the decoded positions
KNOBS = {"commit": ["top1", "0.99", "0.95", "0.9", "0.8", "0.6", "0.4", "all"], "reuse": ["refresh", "reuse"]}
THRESHOLDS = np.array([math.inf, 0.99, 0.95, 0.9, 0.8, 0.6, 0.4, -math.inf])
DEFAULT_REWARDS = {"correctness": {"weight": 1.0}, "cost": {"weight": 0.5, "mode": "target", "undershoot": 0.2}}
MAX_PROBLEM_SEED = 2**31 - 1
COLUMNS = ["conf_max", "conf_q75", "conf_median", "conf_q25", "conf_min", "share_conf_0.99", "share_conf_0.9",
           "share_conf_0.7", "entropy_mean", "share_eos", "frontier", "decoded", "calls", "cost", "since_refresh",
           "budget"]


@dataclass
class UnmaskingInputs:
    """What the reward terms see of finished episodes (``correctness`` reads ``correct``, ``cost`` the fractions)."""

    correct: torch.Tensor
    flops_fraction: torch.Tensor
    cost_fraction: torch.Tensor
    budget: torch.Tensor
    group: torch.Tensor


def observation(decoder: CanvasDecoder, budgets) -> np.ndarray:
    """(n, len(COLUMNS)) float32: confidence quantiles and shares over each row's masked positions, their
    mean entropy (/ log V) and share predicted ``<eos>``, the first masked position, the share decoded, calls
    and FLOPs spent (fractions of the full schedule's), calls since the last refresh, the budget."""
    masked = decoder.canvas_masked
    n, width = masked.shape
    conf = torch.where(masked, decoder.conf, torch.full_like(decoder.conf, float("nan")))
    quantiles = torch.nanquantile(conf, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), dim=1).T
    count = masked.sum(dim=1).clamp(min=1)
    shares = torch.stack([((decoder.conf >= t) & masked).sum(dim=1) / count for t in (0.99, 0.9, 0.7)], dim=1)
    entropy = (torch.where(masked, decoder.entropy, torch.zeros_like(decoder.entropy)).sum(dim=1) / count
               / math.log(decoder.logits.shape[-1]))
    eos = ((decoder.pred == decoder.lm.tokenizer.eos_token_id) & masked).sum(dim=1) / count
    frontier = torch.where(masked.any(dim=1), masked.float().argmax(dim=1).float(), torch.full((n,), float(width)))
    columns = torch.cat([quantiles.nan_to_num(1.0), shares, entropy[:, None], eos[:, None],
                         (frontier / width)[:, None]], dim=1).cpu().numpy()
    scalars = np.stack([decoder.decoded_fraction(), decoder.call_fraction, decoder.cost_fraction,
                        np.minimum(decoder.since_refresh, 16) / 16,
                        np.broadcast_to(np.asarray(budgets, dtype=np.float64), (n,))], axis=1)
    return np.concatenate([columns, scalars], axis=1).astype(np.float32)


def commit_mask(decoder: CanvasDecoder, levels: np.ndarray) -> torch.Tensor:
    """The commit positions of ``commit`` knob levels (one per row)."""
    return threshold_commit(decoder, THRESHOLDS[np.asarray(levels, dtype=np.int64)], 1)


class References:
    """The unmasking env needs no full-compute reference (its reward checks the answer): the trainer's
    reference store, empty."""

    def known(self, conditions, seeds) -> dict:
        return {}

    def remember(self, known: dict) -> None:
        pass

    def add(self, conditions, seeds, table) -> None:
        pass

    @property
    def shards(self) -> list:
        return []


class UnmaskingVectorEnv(VectorEnv):
    """A batch of problems decoded by a frozen masked-diffusion LM, decided denoiser call by call.

    ## Action Space
    ``MultiDiscrete([8, 2])`` per row: the ``commit`` level (commit the masked tokens whose confidence is at
    least 0.99 ... 0.4, only the most confident one, or all of them: stop) and ``reuse`` (the next call
    recomputes every position, or only the masked ones and those just committed, over cached keys/values).

    ## Observation Space
    ``Box(-inf, inf, (16,), float32)`` per row (:data:`COLUMNS`, :func:`observation`).

    ## Rewards
    0 until a row's canvas is complete; then the composite (default: 1 for a right answer, minus the cost
    term of the FLOPs fraction against the budget). ``info["reward_terms"]`` has each term.

    ## Episode End
    A row ends when no ``<mask>`` is left (at most ``canvas`` calls). Never truncated. Autoreset is
    disabled: call ``reset`` for a new batch.

    ## Arguments
    - ``num_envs``; ``group_size`` (rows per GRPO group; rows are independent here).
    - ``model``: ``"embedded:dllm"``, a diffusion-LM folder, or a loaded :class:`~hasten.tasks.unmasking.model.DiffusionLM`.
    - ``budget`` / ``budget_range``: target FLOPs fraction of the full schedule (the cost term, the observation).
    - ``rewards``: a :class:`~hasten.rewards.CompositeReward` or ``{name: {weight: w, ...}}``.

    ``reset`` options: ``conditions`` (operations, 1..4), ``seeds``, ``budget``.
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}

    def __init__(self, num_envs: int = 8, model="embedded:dllm", budget: float = 0.25, budget_range=None,
                 rewards=None, group_size: int = 1, references=None):
        if num_envs < 1:
            raise HastenError(f"num_envs={num_envs}: expected an integer >= 1")
        if group_size < 1 or num_envs % group_size:
            raise HastenError(f"group_size={group_size}: expected a divisor of num_envs={num_envs}")
        self.lm = load_dllm(model)
        self.num_envs, self.group_size = int(num_envs), int(group_size)
        self.budget_range = None if budget_range is None else (float(budget_range[0]), float(budget_range[1]))
        for value in (budget, *(self.budget_range or ())):
            if not 0 < value <= 1:
                raise HastenError(f"budget={value}: expected a FLOPs fraction of the full schedule in (0, 1]")
        self.budget = float(budget)
        self.reward = rewards if isinstance(rewards, CompositeReward) else build_reward(rewards or DEFAULT_REWARDS)
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (len(COLUMNS),), np.float32)
        self.single_action_space = spaces.MultiDiscrete([len(v) for v in KNOBS.values()])
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.decoder = None
        self.conditions = np.zeros(self.num_envs, dtype=np.int64)
        self.seeds = np.zeros(self.num_envs, dtype=np.int64)
        self.budgets = np.full(self.num_envs, self.budget)
        self.terminated = np.zeros(self.num_envs, dtype=bool)
        self.decisions = np.full((self.num_envs, self.max_decisions, len(KNOBS)), -1, dtype=np.int64)

    @property
    def max_decisions(self) -> int:
        return self.lm.canvas

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        if "reset_mask" in options and not np.all(options["reset_mask"]):
            raise HastenError("reset_mask: hasten/Unmasking-v0 resets whole batches; expected no reset_mask or all True")
        conditions, seeds, budgets = reset_options(self, options, MAX_PROBLEM_SEED)
        self.conditions = np.asarray(conditions, dtype=np.int64).copy()
        self.seeds, self.budgets = seeds.copy(), budgets
        self.decoder = CanvasDecoder(self.lm, self.lm.problems(self.conditions, self.seeds))
        self.terminated = np.zeros(self.num_envs, dtype=bool)
        self.decisions = np.full((self.num_envs, self.max_decisions, len(KNOBS)), -1, dtype=np.int64)
        return observation(self.decoder, self.budgets), self._info()

    def draw_conditions(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.lm.sample_conditions(rng, n)

    def _info(self) -> dict:
        return {"condition": self.conditions.copy(), "problem_seed": self.seeds.copy(), "budget": self.budgets.copy(),
                "waiting": self.deciding()}

    def deciding(self) -> np.ndarray:
        return ~self.terminated

    def all_done(self) -> bool:
        return bool(self.terminated.all())

    def decision_index(self) -> np.ndarray:
        return np.minimum(self.decoder.steps, self.max_decisions - 1)

    def step(self, actions):
        if self.decoder is None:
            raise HastenError("step() before reset(): call reset() first")
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, -1)
        highs = np.array([len(v) for v in KNOBS.values()])
        if actions.shape[1] != len(KNOBS) or np.any((actions < 0) | (actions >= highs)):
            raise HastenError(f"actions {actions.tolist()}: expected per row (commit 0..{highs[0] - 1}, reuse 0..1)")
        deciding = np.flatnonzero(self.deciding())
        self.decisions[deciding, self.decision_index()[deciding]] = actions[deciding]
        self.decoder.step(commit_mask(self.decoder, actions[:, 0]), actions[:, 1] == 1)
        finished = self.decoder.done & ~self.terminated
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        info = self._info()
        info["reward_terms"] = {}
        if finished.any():
            rows = np.flatnonzero(finished)
            total, terms = self.reward(self.inputs(rows))
            rewards[rows] = total.numpy()
            info["reward_terms"] = reward_columns(self.num_envs, rows, terms)
        self.terminated |= finished
        info["waiting"] = self.deciding()
        return (observation(self.decoder, self.budgets), rewards, self.terminated.copy(),
                np.zeros(self.num_envs, dtype=bool), info)

    def inputs(self, rows: np.ndarray) -> UnmaskingInputs:
        cost = torch.from_numpy(self.decoder.cost_fraction[rows])
        return UnmaskingInputs(correct=torch.from_numpy(self.decoder.correct()[rows].astype(np.float64)),
                               flops_fraction=cost, cost_fraction=cost, budget=torch.from_numpy(self.budgets[rows]),
                               group=torch.from_numpy(rows // self.group_size))

    def episode_batch(self) -> dict:
        d = self.decoder
        return dict(flops_fraction=d.cost_fraction.copy(), cost_fraction=d.cost_fraction.copy(),
                    conditions=self.conditions.copy(), seeds=self.seeds.copy(), budgets=self.budgets.copy(),
                    images=np.zeros((self.num_envs, 0), dtype=np.float32),
                    references=np.zeros((self.num_envs, 0), dtype=np.float32), decisions=self.decisions.copy(),
                    extra={"correct": d.correct(), "calls": d.calls.copy(), "call_fraction": d.call_fraction.copy(),
                           "seconds": np.full(self.num_envs, d.seconds / max(self.num_envs, 1))})


class UnmaskingEnv(SingleRowEnv):
    """Single-row view of :class:`UnmaskingVectorEnv` (``gymnasium.make("hasten/Unmasking-v0")``)."""

    vector_class = UnmaskingVectorEnv
    max_seed = MAX_PROBLEM_SEED

    def __init__(self, **kwargs):
        kwargs.pop("group_size", None)
        super().__init__(**kwargs)
