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
        images: (N, C, H, W) final accelerated samples; references: the full-compute ones (for the
            reasoning task: (N, 3) reasoning tokens, lines and correctness of the full chains).
        decisions: (N, num_steps, K) applied levels by schedule position (-1: no call there).
        extra: what else a pool records: per-row arrays (e.g. the reasoning pool's ``correct``)
            and per-shard values (a Ray worker's ``busy_s``, ``pid``).
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

    @classmethod
    def concatenate(cls, batches: list["TrajectoryBatch"]) -> "TrajectoryBatch":
        """Rows of several batches, in order; shorter decision axes are padded with inactive steps.

        Inactive entries are zero in every batch (the pools zero them), so a batch split into
        shards and joined again equals the batch collected in one piece.
        """
        if not batches:
            raise ValueError("TrajectoryBatch.concatenate: expected at least one batch")
        steps = max(b.obs.shape[0] for b in batches)

        def time_major(name):
            parts = []
            for b in batches:
                a = getattr(b, name)
                pad = np.zeros((steps - a.shape[0], *a.shape[1:]), dtype=a.dtype)
                parts.append(np.concatenate([a, pad]))
            return np.concatenate(parts, axis=1)

        def rows(name):
            return np.concatenate([getattr(b, name) for b in batches])

        return cls(obs=time_major("obs"), actions=time_major("actions"), logp=time_major("logp"),
                   active=time_major("active"), rewards=rows("rewards"),
                   terms={k: np.concatenate([b.terms[k] for b in batches]) for k in batches[0].terms},
                   flops_fraction=rows("flops_fraction"), cost_fraction=rows("cost_fraction"),
                   conditions=rows("conditions"), seeds=rows("seeds"), budgets=rows("budgets"),
                   images=rows("images"), references=rows("references"), decisions=rows("decisions"),
                   extra={**_joined_rows(batches), "parts": [b.extra for b in batches]})

    @property
    def num_episodes(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_decisions(self) -> int:
        return int(self.active.sum())


def _joined_rows(batches: list[TrajectoryBatch]) -> dict:
    """The ``extra`` arrays that hold one entry per row in every batch, joined in row order."""
    keys = [k for k, v in batches[0].extra.items() if isinstance(v, np.ndarray)]
    return {k: np.concatenate([b.extra[k] for b in batches]) for k in keys
            if all(isinstance(b.extra.get(k), np.ndarray) and len(b.extra[k]) == b.num_episodes for b in batches)}
