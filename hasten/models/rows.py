"""Per-row state of knob-driven denoising: where each row is in its schedule, what it has spent and
decided, its residual cache, and the observation a policy sees before each model call
(:data:`OBSERVATION`, :class:`RowState`); :class:`Rollout` adds the samples of hasten's own sampler.

Shared by :class:`~hasten.models.adapter.DiTGenerator` (hasten's sampler), the denoising env and
:func:`hasten.accelerate` (a diffusers pipeline's loop), so a policy sees the same observation in all.
"""

from __future__ import annotations

import numpy as np
import torch

from hasten.knobs import KNOBS, SKIP_INTERVALS, OutputForecast, RowCache, forecast_space

#: Columns of :meth:`Rollout.observation` (what a policy head sees before each model call).
OBSERVATION = (
    "sigma",            # noise level of the row's schedule position (1 = pure noise, 0 = done)
    "step",             # schedule position / num_steps
    "first_block_change",  # relative L1 change of block 0's output since the last full call (TeaCache signal)
    "since_full",       # schedule intervals since the row's last full computation / num_steps
    "cost_spent",       # FLOPs spent so far, in units of the full-compute trajectory
    "budget",           # target FLOPs fraction of the episode
    "cache_ready",      # 1 when the row has cached residuals (cache-reuse can apply)
)
OBSERVATION_CHANGE_MAX = 10.0


class RowState:
    """Per-row bookkeeping of knob-driven denoising: where each row is in its schedule, what it has
    spent and decided, its residual cache, and what a policy observes (:meth:`observation`).

    Shared by :class:`Rollout` (hasten's own sampler) and :func:`hasten.accelerate` (a diffusers
    pipeline's loop), so that a policy sees the same observation in both.

    Attributes:
        index: (B,) schedule position of each row (``num_steps`` = finished).
        model_calls: (B,) model calls so far; flops: (B,) FLOPs so far in full-call units.
        decisions: (B, num_steps, 3) the applied levels (-1 where the row made no call).
        last_full: (B,) schedule position of each row's last full computation.
        seeds: (B,) the seed of each row (the random stream of its sampled decisions).
        cache: the per-row residual cache of the cache-reuse knob (2B rows with CFG: the
            conditional branch in rows 0..B-1, the unconditional one in rows B..2B-1).
    """

    def __init__(self, batch_size: int, num_steps: int, sigmas: torch.Tensor, cfg: bool, seeds=None,
                 forecast: bool = False):
        b = batch_size
        self.num_steps, self.sigmas, self.cfg = num_steps, sigmas, cfg
        self.forecast = forecast_space(forecast)  # None: skipped steps reuse the velocity
        self.outputs = OutputForecast(b, space=self.forecast or "velocity")  # each row's last output and its slope
        self.index = torch.zeros(b, dtype=torch.long)
        self.model_calls = torch.zeros(b, dtype=torch.long)
        self.flops = torch.zeros(b, dtype=torch.float64)
        self.decisions = torch.full((b, num_steps, len(KNOBS)), -1, dtype=torch.long)
        self.last_full = torch.zeros(b, dtype=torch.long)
        self.seeds = np.zeros(b, dtype=np.int64) if seeds is None else np.asarray(seeds, dtype=np.int64).copy()
        self.cache = RowCache(2 * b if cfg else b, forecast=self.forecast is not None)

    def record_call(self, rows: torch.Tensor, position: torch.Tensor, skip: torch.Tensor, cache_levels: torch.Tensor,
                    sparse: torch.Tensor, fractions: torch.Tensor) -> None:
        """Book one model call of ``rows`` at schedule ``position`` with their applied levels
        (``cache_levels`` effective) and FLOPs ``fractions`` of a full call; each row moves on to
        ``position + 1 +`` the intervals its step_skip level ``skip`` jumps."""
        self.flops[rows] += fractions
        self.model_calls[rows] += 1
        self.decisions[rows, position] = torch.stack([skip, cache_levels, sparse], dim=1)
        full = cache_levels == 0
        self.last_full[rows[full]] = position[full]
        self.index[rows] = (position + 1 + SKIP_INTERVALS[skip]).clamp(max=self.num_steps)

    def observation(self, budget, spent=None) -> np.ndarray:
        """(B, len(OBSERVATION)) float32 features of each row's state, in [0, 1] except the change.

        See :data:`OBSERVATION` for the meaning of each column; ``budget`` is the target cost
        fraction (a number or one per row); ``spent`` (B,) replaces the FLOPs spent so far when the
        cost is counted in another unit (measured time).
        """
        b, n = self.batch_size, self.num_steps
        index = self.index.clamp(max=n)
        change = self.cache.change[:b].double().clamp(max=OBSERVATION_CHANGE_MAX)
        columns = [
            self.sigmas[index].double(),
            index.double() / n,
            change,
            (index - self.last_full).clamp(min=0).double() / n,
            (self.flops / n if spent is None else torch.as_tensor(spent, dtype=torch.float64)).clamp(max=1.0),
            torch.as_tensor(budget, dtype=torch.float64).expand(b),
            self.cache.filled[:b].double(),
        ]
        return torch.stack(columns, dim=1).float().numpy()

    @property
    def batch_size(self) -> int:
        return self.index.shape[0]

    @property
    def done(self) -> torch.Tensor:
        return self.index >= self.num_steps

    @property
    def sigma(self) -> torch.Tensor:
        """(B,) current noise level of each row."""
        return self.sigmas[self.index]

    def flops_fraction(self) -> np.ndarray:
        """FLOPs spent per row relative to ``num_steps`` full calls."""
        return (self.flops / self.num_steps).numpy()


class Rollout(RowState):
    """The state of a batch of rows being denoised by hasten's sampler with per-row knob decisions.

    Attributes (besides :class:`RowState`'s):
        x: (B, C, H, W) current images/latents.
        labels: (B,) class of each row; guidance: the guidance scale.
        timesteps: (num_steps,) the schedule's timesteps as noise levels; sigmas: (num_steps + 1,).
        clamp: whether :meth:`images` clamps to [-1, 1] (pixel space; latents are not clamped).
    """

    def __init__(self, labels, x, num_steps, guidance, timesteps, sigmas, cfg: bool, seeds=None,
                 clamp: bool = True, forecast: bool = False):
        super().__init__(x.shape[0], num_steps, sigmas, cfg, seeds, forecast)
        self.labels, self.x = labels, x.clone()
        self.guidance, self.timesteps = guidance, timesteps
        self.clamp = clamp

    def reset_rows(self, rows: torch.Tensor, labels: torch.Tensor, x: torch.Tensor, seeds=None) -> None:
        """Start rows ``rows`` afresh at pure noise ``x`` with classes ``labels`` (the rest go on)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        if seeds is not None:
            self.seeds[rows.numpy()] = np.asarray(seeds, dtype=np.int64)
        self.labels[rows.to(self.labels.device)] = labels.to(self.labels.device)
        self.x[rows.to(self.x.device)] = x.to(self.x.device)
        for tensor in (self.index, self.model_calls, self.last_full):
            tensor[rows] = 0
        self.flops[rows] = 0.0
        self.decisions[rows] = -1
        self.outputs.forget(rows)
        self.cache.forget(torch.cat([rows, rows + self.batch_size]) if self.cfg else rows)

    def images(self) -> torch.Tensor:
        return self.x.clamp(-1, 1) if self.clamp else self.x
