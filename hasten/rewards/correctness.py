"""Reasoning terms: the answer's correctness and the length of the chain of thought (DESIGN.md,
"Rewards"). Combined like every term: ``rewards: {correctness: {weight: 1}, length: {weight: 0.5, mode: linear}}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hasten.errors import HastenError
from hasten.rewards.registry import register_reward


@dataclass
class ReasoningInputs:
    """What a reasoning term sees of a batch of finished episodes.

    Attributes:
        correct: (B,) 1.0 where the answer is right.
        think_tokens: (B,) reasoning tokens the episode spent (the forced answer not counted).
        full_tokens: (B,) reasoning tokens of the frozen model's full chain on the same problem.
        budget: (B,) target fraction of the full chain.
        group: (B,) group index of each episode (rows of a group share their problem).
    """

    correct: torch.Tensor
    think_tokens: torch.Tensor
    full_tokens: torch.Tensor
    budget: torch.Tensor
    group: torch.Tensor


@register_reward("correctness")
class Correctness:
    """1 for a right answer, 0 otherwise."""

    def __call__(self, inputs: ReasoningInputs) -> torch.Tensor:
        return inputs.correct.double()


@register_reward("length")
class Length:
    """The length of the chain as a penalty (<= 0), relative to the full chain of the same problem.

    Args:
        mode: ``"linear"`` — ``-tokens / full_tokens`` (every token costs, as O1-Pruner / L1);
            ``"cap"`` — ``-1`` when the chain is longer than ``budget x full_tokens``, else 0 (a hard
            cap, as ThinkPrune); ``"shortest"`` — ``-|tokens - shortest correct chain of the group| /
            full_tokens`` (ShorterBetter; the group's shortest chain when none is correct).
    """

    def __init__(self, mode: str = "linear"):
        if mode not in ("linear", "cap", "shortest"):
            raise HastenError(f"rewards.length.mode={mode!r}: expected 'linear', 'cap' or 'shortest'")
        self.mode = mode

    def __call__(self, inputs: ReasoningInputs) -> torch.Tensor:
        tokens = inputs.think_tokens.double()
        full = inputs.full_tokens.double().clamp(min=1)
        if self.mode == "linear":
            return -tokens / full
        if self.mode == "cap":
            return -(tokens > inputs.budget.double() * full + 1e-9).double()
        shortest = torch.empty_like(tokens)
        for g in inputs.group.unique():
            rows = inputs.group == g
            right = rows & (inputs.correct > 0)
            shortest[rows] = tokens[right].min() if right.any() else tokens[rows].min()
        return -(tokens - shortest).abs() / full
