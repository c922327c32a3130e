"""The trajectory batch: what a rollout pool returns for one iteration, as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TrajectoryBatch:
    """Episodes of one iteration, row-major (row = one episode), time-major per decision.

    Attributes:
        obs: (T, N, D) observations before each decision.
        actions: (T, N, K) knob levels chosen.
        logp: (T, N) log-probability of the chosen levels under the sampling policy.
        active: (T, N) whether row n made a decision at step t (finished rows make none).
        rewards: (N,) episode returns (the composite reward at termination).
        terms: name -> (N,) unweighted reward terms.
        flops_fraction: (N,) FLOPs spent relative to full compute.
        cost_fraction: (N,) cost spent in the experiment's unit (equal to ``flops_fraction`` for FLOPs).
        conditions, seeds, budgets: (N,) class index, noise seed and target budget of each row.
        images: (N, C, H, W) final accelerated samples; references: the full-compute ones.
        decisions: (N, num_steps, K) applied levels by schedule position (-1: no call there).
    """

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    active: np.ndarray
    rewards: np.ndarray
    terms: dict[str, np.ndarray]
    flops_fraction: np.ndarray
    cost_fraction: np.ndarray
    conditions: np.ndarray
    seeds: np.ndarray
    budgets: np.ndarray
    images: np.ndarray
    references: np.ndarray
    decisions: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def num_episodes(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_decisions(self) -> int:
        return int(self.active.sum())
