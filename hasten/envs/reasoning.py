"""``hasten/Reasoning-v0``: the chain of thought of a frozen causal LM as a Gymnasium env.

Each row is one problem; one ``step`` takes every row that waits at a step boundary (the end of a
reasoning line) one decision further: continue (0) writes the next line, stop (1) forces the
answer (budget forcing). All rows decode in lockstep with one KV cache
(:class:`~hasten.models.reasoner.ChainDecoder`). :class:`ReasoningEnv` is the single-row view
(``gymnasium.make``); training uses the native vector env.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hasten.envs.common import SingleRowEnv, reset_options, reward_columns
from hasten.errors import HastenError
from hasten.rewards import CompositeReward, ReasoningInputs, build_reward

DEFAULT_REWARDS = {"correctness": {"weight": 1.0}, "length": {"weight": 0.3, "mode": "linear"}}
MAX_PROBLEM_SEED = 2**31 - 1
SCALARS = ("p_answer", "think_tokens", "steps", "budget")


def observation_columns(hidden_size: int) -> list[str]:
    """Names of the observation's columns: the LM's hidden state, then :data:`SCALARS`."""
    return [f"hidden_{i}" for i in range(hidden_size)] + list(SCALARS)


def build_observation(hidden: np.ndarray, p_answer, think_tokens, steps, budget, max_think_tokens: int,
                      max_steps: int) -> np.ndarray:
    """(B, H + 4) observations (columns: :func:`observation_columns`): the LM's hidden states at
    the rows' last tokens, P(answer prefix next), reasoning tokens and lines as fractions of the limits,
    the budget."""
    n = hidden.shape[0]
    scalars = np.stack([np.asarray(p_answer, dtype=np.float64), np.asarray(think_tokens) / max(max_think_tokens, 1),
                        np.asarray(steps) / max(max_steps, 1),
                        np.broadcast_to(np.asarray(budget, dtype=np.float64), (n,))], axis=1)
    return np.concatenate([hidden, scalars], axis=1).astype(np.float32)


def chain_observation(decoder, budgets) -> np.ndarray:
    """The observations of a :class:`~hasten.models.reasoner.ChainDecoder`'s rows."""
    meta = decoder.meta
    return build_observation(decoder.hidden.cpu().numpy(), decoder.p_answer, decoder.think_tokens, decoder.steps,
                             budgets, meta.max_think_tokens, meta.max_steps)


def _load(reasoner):
    if isinstance(reasoner, str):
        from hasten.models.reasoner import load_reasoner

        return load_reasoner(reasoner)
    return reasoner


def chain_table(full: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3) float32 rows (reasoning tokens, lines, correct) of :meth:`FullChains.get`'s result:
    what a rollout batch carries as its ``references``."""
    return np.stack([full["think_tokens"], full["steps"], full["correct"]], axis=1).astype(np.float32)


class FullChains:
    """The frozen model's full chain of each problem (its reasoning tokens, steps and correctness),
    computed once per (condition, seed) and kept: the reference of the length terms and metrics."""

    def __init__(self, reasoner, batch_size: int = 64):
        self.reasoner, self.batch_size = reasoner, batch_size
        self.known_chains: dict[tuple[int, int], tuple[int, int, bool]] = {}

    def get(self, conditions, seeds) -> dict[str, np.ndarray]:
        keys = [(int(c), int(s)) for c, s in zip(conditions, seeds)]
        missing = sorted(set(k for k in keys if k not in self.known_chains))
        for start in range(0, len(missing), self.batch_size):
            part = missing[start:start + self.batch_size]
            problems = self.reasoner.problems([k[0] for k in part], [k[1] for k in part])
            decoder = self.reasoner.decoder([p.prompt() for p in problems])
            while not decoder.done.all():
                decoder.advance(stop=False)
            for k, p, answer, tokens, steps in zip(part, problems, decoder.answers(), decoder.think_tokens,
                                                   decoder.steps):
                self.known_chains[k] = (int(tokens), int(steps), bool(p.check(answer)))
        rows = [self.known_chains[k] for k in keys]
        return {"think_tokens": np.array([r[0] for r in rows], dtype=np.int64),
                "steps": np.array([r[1] for r in rows], dtype=np.int64),
                "correct": np.array([r[2] for r in rows], dtype=bool)}

    def known(self, conditions, seeds) -> dict[tuple[int, int], tuple[int, int, bool]]:
        """The full chains already held for these rows (what a Ray pool ships with a shard)."""
        keys = {(int(c), int(s)) for c, s in zip(conditions, seeds)}
        return {k: self.known_chains[k] for k in keys if k in self.known_chains}

    def remember(self, known: dict[tuple[int, int], tuple[int, int, bool]]) -> None:
        """Hold full chains another process computed."""
        for key, row in known.items():
            self.known_chains.setdefault(key, row)

    def add(self, conditions, seeds, table) -> None:
        """Hold the full chains of a batch's rows (its ``references``, see :func:`chain_table`)."""
        for c, s, (tokens, steps, correct) in zip(conditions, seeds, np.asarray(table)):
            self.known_chains.setdefault((int(c), int(s)), (int(tokens), int(steps), bool(correct)))

    @property
    def shards(self) -> list:
        """Nothing on disk (recomputed in seconds); the trainer's checkpoint lists none."""
        return []


class ReasoningVectorEnv(VectorEnv):
    """A batch of problems reasoned about by a frozen causal LM, decided line by line.

    ## Action Space
    ``Discrete(2)`` per row: 0 continue thinking (write the next line), 1 stop and answer. Rows
    that do not wait at a boundary this step (answering, or done) ignore their action.

    ## Observation Space
    ``Box(-inf, inf, (H + 4,), float32)`` per row: the LM's last hidden state (after its final
    norm) at the row's last token, the probability the LM gives to starting the answer there,
    reasoning tokens used and chain lines written (as fractions of the limits), target budget.

    ## Rewards
    0 until a row's group terminates; then the composite (default: 1 for a right answer minus
    0.3 x reasoning tokens / the full chain's). ``info["reward_terms"]`` has each term.

    ## Episode End
    A row finishes when its answer is written (the policy stopped it, the model answered by
    itself, or a limit forced the answer: ``max_steps`` lines or ``max_think_tokens``). Rows of a
    group (``group_size`` consecutive rows, which share their problem in GRPO) terminate
    together, so that a length term may compare a row with its group. Never truncated.
    Autoreset is disabled (``AutoresetMode.DISABLED``): call ``reset`` for a new batch.

    ## Arguments
    - ``num_envs``: rows per batch; ``group_size``: rows per group (divides ``num_envs``).
    - ``reasoner``: ``"embedded:arith"``, a reasoner folder, or a loaded :class:`~hasten.models.reasoner.Reasoner`.
    - ``budget`` / ``budget_range``: target fraction of the full chain (the ``cap`` length term, the observation).
    - ``rewards``: a :class:`~hasten.rewards.CompositeReward` or ``{name: {weight: w, ...}}``.

    ``reset`` options: ``conditions`` (difficulty: operations, 1..6) and ``seeds`` (problem seeds),
    one per row, drawn from ``np_random`` when absent; ``budget`` (a number or one per row).
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}

    def __init__(self, num_envs: int = 8, reasoner="embedded:arith", budget: float = 0.5, budget_range=None,
                 rewards=None, group_size: int = 1, full_chains: FullChains | None = None):
        if num_envs < 1:
            raise HastenError(f"num_envs={num_envs}: expected an integer >= 1")
        if group_size < 1 or num_envs % group_size:
            raise HastenError(f"group_size={group_size}: expected a divisor of num_envs={num_envs}")
        self.reasoner = _load(reasoner)
        self.num_envs, self.group_size = int(num_envs), int(group_size)
        self.budget_range = None if budget_range is None else (float(budget_range[0]), float(budget_range[1]))
        for value in (budget, *(self.budget_range or ())):
            if not 0 < value <= 1:
                raise HastenError(f"budget={value}: expected a fraction of the full chain in (0, 1]")
        self.budget = float(budget)
        self.reward = rewards if isinstance(rewards, CompositeReward) else build_reward(rewards or DEFAULT_REWARDS)
        self.full_chains = full_chains or FullChains(self.reasoner)
        self.columns = observation_columns(self.reasoner.hidden_size)
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (len(self.columns),), np.float32)
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.decoder = None
        self.problems = []
        self.conditions = np.zeros(self.num_envs, dtype=np.int64)
        self.seeds = np.zeros(self.num_envs, dtype=np.int64)
        self.budgets = np.full(self.num_envs, self.budget)
        self.terminated = np.zeros(self.num_envs, dtype=bool)
        self.correct = np.zeros(self.num_envs, dtype=bool)
        self.decisions = np.full((self.num_envs, self.max_decisions, 1), -1, dtype=np.int64)

    @property
    def max_steps(self) -> int:
        return self.reasoner.meta.max_steps

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        if "reset_mask" in options and not np.all(options["reset_mask"]):
            raise HastenError("reset_mask: hasten/Reasoning-v0 resets whole batches (one KV cache); "
                              "expected no reset_mask or all True")
        conditions, seeds, budgets = reset_options(self, options, MAX_PROBLEM_SEED)
        self.conditions = np.asarray(conditions, dtype=np.int64).copy()
        self.seeds = seeds.copy()
        self.budgets = budgets
        self.problems = self.reasoner.problems(self.conditions, self.seeds)
        self.decoder = self.reasoner.decoder([p.prompt() for p in self.problems])
        self.terminated = np.zeros(self.num_envs, dtype=bool)
        self.correct = np.zeros(self.num_envs, dtype=bool)
        self.decisions = np.full((self.num_envs, self.max_decisions, 1), -1, dtype=np.int64)
        return self.observation(), self._info()

    def draw_conditions(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` difficulties drawn from ``rng`` (a reset without ``conditions``)."""
        return self.reasoner.sample_conditions(rng, n)

    def observation(self) -> np.ndarray:
        return chain_observation(self.decoder, self.budgets)

    def _info(self) -> dict:
        return {"condition": self.conditions.copy(), "problem_seed": self.seeds.copy(), "budget": self.budgets.copy(),
                "waiting": self.deciding()}

    def deciding(self) -> np.ndarray:
        """(num_envs,) rows whose action the next ``step`` applies (waiting at a boundary)."""
        return self.decoder.waiting & ~self.terminated

    # ------------------------------------------------------------------------- the pools' questions
    @property
    def max_decisions(self) -> int:
        """Decision slots per row: one per chain line, and one after the line limit."""
        return self.max_steps + 1

    def all_done(self) -> bool:
        return bool(self.terminated.all())

    def decision_index(self) -> np.ndarray:
        """(num_envs,) lines written so far: the slot of each row's next decision."""
        return np.minimum(self.decoder.steps, self.max_decisions - 1)

    def episode_batch(self) -> dict:
        """The per-row fields of a :class:`~hasten.rollouts.batch.TrajectoryBatch` of the finished
        problems: references are the full chains' (tokens, lines, correct), no images."""
        full = self.full_chains.get(self.conditions, self.seeds)
        think = self.decoder.think_tokens.copy()
        fraction = think / np.maximum(full["think_tokens"], 1)
        return dict(flops_fraction=fraction, cost_fraction=fraction, conditions=self.conditions.copy(),
                    seeds=self.seeds.copy(), budgets=self.budgets.copy(),
                    images=np.zeros((self.num_envs, 0), dtype=np.float32), references=chain_table(full),
                    decisions=self.decisions.copy(),
                    extra={"correct": self.correct.copy(), "think_tokens": think, "full_tokens": full["think_tokens"],
                           "full_correct": full["correct"], "steps": self.decoder.steps.copy(),
                           "answer_tokens": self.decoder.answer_tokens.copy(),
                           "stopped_by": self.decoder.stopped_by.copy()})

    def step(self, actions):
        if self.decoder is None:
            raise HastenError("step() before reset(): call reset() first")
        actions = np.asarray(actions).reshape(self.num_envs, -1)[:, 0]
        if np.any((actions < 0) | (actions > 1)):
            raise HastenError(f"actions {actions.tolist()}: expected 0 (continue) or 1 (stop) per row")
        deciding = np.flatnonzero(self.deciding())
        self.decisions[deciding, self.decision_index()[deciding], 0] = actions[deciding]
        self.decoder.advance(stop=actions.astype(bool))
        done = self.decoder.done.reshape(-1, self.group_size).all(axis=1).repeat(self.group_size)
        finished = done & ~self.terminated
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        info = self._info()
        info["reward_terms"] = {}
        if finished.any():
            rows = np.flatnonzero(finished)
            answers = self.decoder.answers()
            self.correct[rows] = [self.problems[i].check(answers[i]) for i in rows]
            total, terms = self.episode_reward(rows)
            rewards[rows] = total.numpy()
            info["reward_terms"] = reward_columns(self.num_envs, rows, terms)
        self.terminated |= finished
        info["waiting"] = self.deciding()
        return self.observation(), rewards, self.terminated.copy(), np.zeros(self.num_envs, dtype=bool), info

    def episode_reward(self, rows: np.ndarray):
        full = self.full_chains.get(self.conditions[rows], self.seeds[rows])
        inputs = ReasoningInputs(correct=torch.from_numpy(self.correct[rows].astype(np.float64)),
                                 think_tokens=torch.from_numpy(self.decoder.think_tokens[rows]),
                                 full_tokens=torch.from_numpy(full["think_tokens"]),
                                 budget=torch.from_numpy(self.budgets[rows]),
                                 group=torch.from_numpy(rows // self.group_size))
        return self.reward(inputs)


class ReasoningEnv(SingleRowEnv):
    """Single-row view of :class:`ReasoningVectorEnv` (``gymnasium.make("hasten/Reasoning-v0")``).

    Same spaces, rewards and arguments, one problem at a time; ``reset`` draws the difficulty and
    the problem seed from ``np_random`` unless ``options`` give ``condition`` / ``seed`` / ``budget``.
    """

    vector_class = ReasoningVectorEnv
    max_seed = MAX_PROBLEM_SEED

    def __init__(self, **kwargs):
        kwargs.pop("group_size", None)
        super().__init__(**kwargs)
