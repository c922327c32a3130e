"""The unmasking head: per denoiser call of a masked-diffusion LM, how many masked tokens to commit and
whether the next call reuses the key/value cache.

A :class:`~hasten.policies.heads.Policy` with two knobs (:data:`~hasten.tasks.unmasking.env.KNOBS`):
``commit`` (the confidence a token needs to be committed now, from "only the most confident" to "all":
stop) and ``reuse`` (refresh or reuse), over the observation of ``hasten/Unmasking-v0`` (confidence and
entropy summaries of the masked positions, progress, cost so far, the budget). Trained by the same GRPO
trainer as every head; saved the same way, with the diffusion LM it was trained on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.policies.heads import Policy, PolicyConfig
from hasten.rollouts.inprocess import decision_uniforms
from hasten.tasks.unmasking.env import COLUMNS, KNOBS, commit_mask, observation


def unmasking_policy_config(base: PolicyConfig, lm, budget: float) -> PolicyConfig:
    """``base`` (the experiment's ``policy`` section) completed for the diffusion LM ``lm``."""
    return dataclasses.replace(base, knobs={k: list(v) for k, v in KNOBS.items()}, observation=list(COLUMNS),
                               family=lm.family, generator=lm.name, num_steps=lm.canvas, budget=budget,
                               cost_unit="flops", time_table=[],
                               chain_format={"canvas": lm.canvas, "prompt_width": lm.prompt_width})


def is_unmasking_config(config: PolicyConfig) -> bool:
    return {k: list(v) for k, v in config.knobs.items()} == {k: list(v) for k, v in KNOBS.items()}


class UnmaskingHead(Policy):
    """Commit/reuse decisions at each denoiser call of a frozen masked-diffusion LM."""

    def decide(self, decoder, budget: float | None = None, greedy: bool = False, row_seeds=None) -> np.ndarray:
        """(n, 2) (commit level, reuse) for the rows of ``decoder``; sampled decisions draw row i's uniforms
        from ``row_seeds[i]`` at its step index, as :func:`~hasten.rollouts.run_episodes` does, so a
        problem gets the decisions it gets in the env."""
        budget = self.config.budget if budget is None else budget
        obs = torch.from_numpy(observation(decoder, budget))
        uniforms = None
        if not greedy:
            row_seeds = np.arange(decoder.n) if row_seeds is None else np.asarray(row_seeds)
            table = decision_uniforms(row_seeds, decoder.lm.canvas, len(self.knobs))
            slots = torch.from_numpy(np.minimum(decoder.steps, decoder.lm.canvas - 1))
            uniforms = table[torch.arange(decoder.n), slots]
        with torch.no_grad():
            return self.act(obs, greedy=greedy, uniforms=uniforms)[0].numpy()

    def step(self, decoder, budget: float | None = None, greedy: bool = False, row_seeds=None) -> np.ndarray:
        """Decide and apply one step to ``decoder``; returns the decisions."""
        actions = self.decide(decoder, budget, greedy=greedy, row_seeds=row_seeds)
        decoder.step(commit_mask(decoder, actions[:, 0]), actions[:, 1] == 1)
        return actions

    def check_compatible(self, lm, where: str = "policy") -> None:
        """A clear error when this head was trained for another kind of model or canvas."""
        family = getattr(lm, "family", type(lm).__name__)
        if self.config.family != family:
            raise HastenError(f"{where}: an unmasking head trained for the {self.config.family!r} family "
                              f"({self.config.generator}); this model is {family!r}")
        canvas = self.config.chain_format.get("canvas")
        if canvas not in (None, lm.canvas):
            raise HastenError(f"{where}: trained on a canvas of {canvas} positions; this model's has {lm.canvas}")
