"""Fidelity and cost: the two terms every denoising experiment uses."""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.metrics import psnr, ssim
from hasten.rewards.registry import RewardInputs, register_reward


@register_reward("fidelity")
class Fidelity:
    """Similarity of the accelerated sample to the full-compute sample of the same condition and noise.

    Args:
        metric: ``"psnr"`` (dB, capped at ``cap`` and divided by ``scale``) or ``"ssim"`` (in [-1, 1]).
        cap: PSNR above this counts as this (identical images would be +inf).
        scale: dB per reward unit.
    """

    def __init__(self, metric: str = "psnr", cap: float = 45.0, scale: float = 10.0):
        if metric not in ("psnr", "ssim"):
            raise HastenError(f"rewards.fidelity.metric={metric!r}: expected 'psnr' or 'ssim'")
        if scale <= 0 or cap <= 0:
            raise HastenError(f"rewards.fidelity: cap={cap}, scale={scale}: expected positive numbers")
        self.metric, self.cap, self.scale = metric, float(cap), float(scale)

    def __call__(self, inputs: RewardInputs) -> torch.Tensor:
        if self.metric == "ssim":
            return ssim(inputs.images, inputs.references)
        return psnr(inputs.images, inputs.references).clamp(max=self.cap) / self.scale


@register_reward("cost")
class Cost:
    """Compute spent, as a penalty (so the term is <= 0), in the env's cost unit (FLOPs or time).

    Args:
        mode: ``"overshoot"`` — ``-max(0, flops - budget) / budget`` (free up to the target budget,
            then the relative overshoot); ``"target"`` — the overshoot plus ``undershoot`` times the
            relative shortfall, so the budget is a speed to reach, not only a cap (what a
            budget-conditioned policy needs to be one model for any speed); ``"fraction"`` —
            ``-flops`` (every FLOP counts).
        undershoot: weight of the shortfall in ``"target"`` mode.
    """

    def __init__(self, mode: str = "overshoot", undershoot: float = 0.5):
        if mode not in ("overshoot", "target", "fraction"):
            raise HastenError(f"rewards.cost.mode={mode!r}: expected 'overshoot', 'target' or 'fraction'")
        if undershoot < 0:
            raise HastenError(f"rewards.cost.undershoot={undershoot}: expected a number >= 0")
        self.mode, self.undershoot = mode, float(undershoot)

    def __call__(self, inputs: RewardInputs) -> torch.Tensor:
        flops = (inputs.flops_fraction if inputs.cost_fraction is None else inputs.cost_fraction).double()
        if self.mode == "fraction":
            return -flops
        budget = inputs.budget.double()
        penalty = (flops - budget).clamp(min=0)
        if self.mode == "target":
            penalty = penalty + self.undershoot * (budget - flops).clamp(min=0)
        return -penalty / budget
