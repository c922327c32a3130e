"""Generator adapter of a frozen class-conditional diffusers DiT: the reference sampler and the
knob-driven sampler.

The reference sampler is the plain flow-matching Euler loop of FLUX / SD3, driven by diffusers'
``FlowMatchEulerDiscreteScheduler``: ``x <- x + (s_next - s) * v(x, s)`` from pure noise at
``s = 1`` to data at ``s = 0``, with classifier-free guidance (both branches in one batched model
call). Every sample has its own seed, so a row's result does not depend on the batch it sits in.

The knob-driven sampler (:meth:`DiTGenerator.start` / :meth:`DiTGenerator.step`, or
``sample(..., decisions=...)``) advances every row with its own decisions: rows sit at different
schedule positions, skip intervals, reuse cached block residuals or attend sparsely, and only the
rows that call the model go through it. With every knob at level 0 it reproduces the reference
sampler.

Example:
    >>> import hasten
    >>> gen = hasten.load_generator("embedded:shapes")  # doctest: +SKIP
    >>> images, stats = gen.sample(["red circle", "blue square"], seeds=[0, 1])  # doctest: +SKIP
    >>> images.shape, stats["model_calls"]  # doctest: +SKIP
    (torch.Size([2, 3, 32, 32]), array([28, 28]))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.knobs.cost import StepCost
from hasten.models.families import family_of
from hasten.models.flux_pixel import ClassEncoder
from hasten.models.rows import OBSERVATION, OBSERVATION_CHANGE_MAX, Rollout, RowState  # noqa: F401  (re-exported)
from hasten.knobs import (KNOBS, SKIP_INTERVALS, SPARSE_ATTENTION, KnobState, attach_knobs, detach_knobs,
                          validate_decisions)

logger = logging.getLogger(__name__)


class DiTGenerator:
    """A frozen class-conditional diffusers DiT (Flux or SD3 family) and its flow-matching schedule.

    Attributes:
        transformer: the frozen ``FluxTransformer2DModel`` / ``SD3Transformer2DModel`` (eval, no grads).
        family: its :class:`~hasten.models.families.DiTFamily`.
        class_encoder: class index -> ("text" tokens, pooled vector).
        scheduler_config: config of the ``FlowMatchEulerDiscreteScheduler``.
        meta: the generator folder's ``hasten_generator.json`` (class names, defaults, recipe).
        path: the generator folder.
        latent_space: True when the sampler runs in a VAE's latent space (a diffusers pipeline's
            generator, :mod:`hasten.models.pipeline`): samples are latents, never clamped.
    """

    def __init__(self, transformer, class_encoder: ClassEncoder, scheduler_config: dict, meta: dict,
                 path: str | None = None):
        self.transformer = transformer.eval().requires_grad_(False)
        self.family = family_of(transformer)
        if self.family.velocity is None:
            raise HastenError(f"{type(transformer).__name__} ({self.family.name}): hasten's own sampler needs a "
                              "registered family's velocity call; a generic transformer runs inside its pipeline "
                              "with hasten.accelerate(pipe, policy)")
        self.distilled_guidance = bool(getattr(transformer.config, "guidance_embeds", False))
        self.class_encoder = class_encoder.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.meta = meta
        self.path = path
        self.class_names: list[str] = list(meta["class_names"])
        self.image_size: int = int(meta["image_size"])  # height (and width unless image_width is set)
        self.image_width: int = int(meta.get("image_width", self.image_size))
        self.channels: int = int(meta.get("channels", 3))
        self.default_steps: int = int(meta["num_steps"])
        self.default_guidance: float = float(meta["guidance_scale"])
        self.latent_space: bool = bool(meta.get("latent_space", False))
        self.frames: int = int(meta.get("frames", 0))  # video families: frames of a clip (latent frames)
        if self.family.video and self.frames < 1:
            raise HastenError(f"a {self.family.name} (video) generator needs meta['frames'] >= 1")
        self._knobs: KnobState | None = None
        self._cost: StepCost | None = None

    # ----------------------------------------------------------------------------- conditions
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, condition: str | int) -> int:
        """``"red circle"``, ``"red_circle"``, ``3`` or ``"3"`` -> class index; errors list the names."""
        text = str(condition).strip().lower().replace("_", " ").replace("-", " ")
        if text.lstrip("-").isdigit() and 0 <= int(text) < self.num_classes:
            return int(text)
        if text in self.class_names:
            return self.class_names.index(text)
        raise HastenError(f"unknown class {condition!r}: expected an index 0..{self.num_classes - 1} "
                          f"or one of: {', '.join(self.class_names)}")

    def encode(self, conditions: Sequence[str | int]) -> torch.Tensor:
        """Conditions -> (B,) long tensor of class indices (on the model's device)."""
        return torch.tensor([self.class_index(c) for c in conditions], dtype=torch.long, device=self.device)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's dtype (the sampler's state stays float32; model inputs are cast to this)."""
        return next(self.transformer.parameters()).dtype

    def image_tokens(self) -> int:
        """Image (video) tokens of one sample inside the transformer."""
        return self.family.image_tokens(self.transformer, self.image_size, self.image_width,
                                        self.frames if self.family.video else 1)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape: (C, H, W), or (C, F, H, W) for a video family."""
        size = (self.image_size, self.image_width)
        return (self.channels, self.frames, *size) if self.family.video else (self.channels, *size)

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """(B, *sample_shape) initial noise on the model's device; row i depends only on ``seeds[i]``
        (drawn on the CPU, so the same seed gives the same noise on every device)."""
        shape = self.sample_shape
        rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(rows).to(self.device)

    # ----------------------------------------------------------------------------- the model call
    def make_scheduler(self, num_steps: int):
        """A fresh scheduler with ``num_steps`` set (fresh per call: no state leaks between calls)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(num_steps)
        return scheduler

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor,
                 guidance: float) -> torch.Tensor:
        """Guided velocity for images/latents ``x`` (B, C, H, W) at per-row noise levels ``sigma`` (B,).

        Both classifier-free-guidance branches go through the transformer in one batch of 2B rows
        (conditional rows first); a guidance-distilled model gets the scale as an input instead.
        """
        b, state_dtype = x.shape[0], x.dtype
        x = x.to(self.dtype)  # a bf16 / fp16 transformer gets its own dtype; the Euler state stays float32
        if self.distilled_guidance:  # FLUX.1-dev style: the scale is an input, one branch
            tokens, pooled = self._condition(labels)
            return self.family.velocity(self.transformer, x, sigma, tokens, pooled, guidance=guidance,
                                        **self._text_mask(labels)).to(state_dtype)
        if guidance == 1.0:
            all_labels, all_x, all_sigma = labels, x, sigma
        else:
            null = torch.full_like(labels, self.class_encoder.null_class)
            all_labels = torch.cat([labels, null])
            all_x, all_sigma = torch.cat([x, x]), torch.cat([sigma, sigma])
        tokens, pooled = self._condition(all_labels)
        v = self.family.velocity(self.transformer, all_x, all_sigma, tokens, pooled,
                                 **self._text_mask(all_labels)).to(state_dtype)
        if guidance == 1.0:
            return v
        return self.family.guide(v[:b], v[b:], guidance)

    def _condition(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The class encoder's (tokens, pooled) in the transformer's dtype (a bf16 / fp16 model gets
        half-precision conditioning; the class encoder itself stays as loaded)."""
        tokens, pooled = self.class_encoder(labels)
        return tokens.to(self.dtype), pooled.to(self.dtype)

    def _text_mask(self, labels: torch.Tensor) -> dict:
        """``{"text_mask": (B, T) bool}`` where the prompts are padded (Qwen-Image's), else nothing."""
        mask = getattr(self.class_encoder, "text_mask", None)
        rows = None if mask is None else mask(labels)
        return {} if rows is None else {"text_mask": rows}

    # ----------------------------------------------------------------------------- sampling
    def _check_args(self, conditions, seeds, num_steps, guidance):
        num_steps = self.default_steps if num_steps is None else int(num_steps)
        guidance = self.default_guidance if guidance is None else float(guidance)
        if len(conditions) != len(seeds):
            raise HastenError(f"conditions and seeds differ in length ({len(conditions)} vs {len(seeds)})")
        if num_steps < 1:
            raise HastenError(f"num_steps={num_steps}: expected an integer >= 1")
        if not np.isfinite(guidance) or guidance < 0:
            raise HastenError(f"guidance={guidance}: expected a finite number >= 0")
        return num_steps, guidance

    @torch.no_grad()
    def sample(self, conditions: Sequence[str | int], seeds: Sequence[int], num_steps: int | None = None,
               guidance: float | None = None, decisions=None, batch_size: int = 64, progress: bool = False,
               forecast: bool = False):
        """Sample one image per (condition, seed): full compute, or per-row knob decisions.

        Args:
            conditions: one class (name or index) per sample.
            seeds: one noise seed per sample.
            num_steps: schedule length (default: the model's, 28).
            guidance: classifier-free guidance scale (default: the model's; 1.0 = no guidance).
            decisions: None for the reference sampler; otherwise levels of (step_skip, cache_reuse,
                sparse_attention) as an int array (3,) for every row and step, (N, 3) per row, or
                (N, num_steps, 3) per row and schedule position; or a callable
                ``decide(rollout) -> (B, 3)`` asked before every step of a batch of rows.
            batch_size: rows per model call.
            progress: show a progress bar over batches.
            forecast: skipped intervals and reused residuals are forecast to their noise level (see :meth:`start`).

        Returns:
            (images (N, C, H, W) float32 in [-1, 1], stats) where stats holds per-row
            ``model_calls`` and ``flops_fraction`` (numpy arrays, FLOPs relative to the reference
            sampler at ``num_steps``), ``decisions`` (N, num_steps, 3) as applied (-1 where the row
            made no model call at that position) and ``seconds``.
        """
        num_steps, guidance = self._check_args(conditions, seeds, num_steps, guidance)
        if batch_size < 1:
            raise HastenError(f"batch_size={batch_size}: expected an integer >= 1")
        n = len(seeds)
        if decisions is not None and not callable(decisions):
            decisions = _expand_decisions(decisions, n, num_steps)
        labels = self.encode(conditions)
        start = time.perf_counter()
        images, calls, flops, applied = [], [], [], []
        chunks = range(0, n, batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"sampling ({num_steps} steps)", dynamic_ncols=True)
        for i in chunks:
            rows = slice(i, i + batch_size)
            if decisions is None:
                images.append(self._reference_batch(labels[rows], self.noise(seeds[rows]), num_steps, guidance))
                continue
            rollout = self.start(labels[rows], seeds[rows], num_steps, guidance, forecast)
            while not rollout.done.all():
                if callable(decisions):
                    step_decisions = decisions(rollout)
                else:
                    position = rollout.index.clamp(max=num_steps - 1).numpy()
                    step_decisions = decisions[rows][np.arange(len(position)), position]
                self.step(rollout, step_decisions)
            images.append(rollout.images())
            calls.append(rollout.model_calls.numpy())
            flops.append(rollout.flops_fraction())
            applied.append(rollout.decisions.numpy())
        empty = torch.empty(0, *self.sample_shape)
        if decisions is None:
            stats = {"model_calls": np.full(n, num_steps, dtype=np.int64), "flops_fraction": np.ones(n),
                     "decisions": np.zeros((n, num_steps, len(KNOBS)), dtype=np.int64)}
        else:
            stats = {"model_calls": np.concatenate(calls) if calls else np.zeros(0, dtype=np.int64),
                     "flops_fraction": np.concatenate(flops) if flops else np.zeros(0),
                     "decisions": (np.concatenate(applied) if applied
                                   else np.zeros((0, num_steps, len(KNOBS)), dtype=np.int64))}
        stats["seconds"] = time.perf_counter() - start
        return (torch.cat(images) if images else empty), stats

    def _reference_batch(self, labels, noise, num_steps, guidance):
        """The plain loop: diffusers' scheduler drives every Euler step, every row computes fully."""
        scheduler = self.make_scheduler(num_steps)
        x = noise
        for t in scheduler.timesteps:
            sigma = (t / scheduler.config.num_train_timesteps).expand(x.shape[0])
            v = self.velocity(x, sigma, labels, guidance)
            x = scheduler.step(v, t, x, return_dict=False)[0]
        return x if self.latent_space else x.clamp(-1, 1)

    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [-1, 1] of samples, for sample grids (pixel-space samples as they are)."""
        if images.shape[1] != 3:
            raise HastenError(f"preview of {images.shape[1]}-channel samples: expected RGB; a latent-space "
                              "generator decodes its latents (hasten.models.pipeline)")
        return images.float().cpu().clamp(-1, 1)

    # ----------------------------------------------------------------------------- knob-driven rollouts
    def step_cost(self) -> StepCost:
        """Analytic FLOPs of one model call of this generator, by knob level (traced once)."""
        if self._cost is None:
            cfg = self.class_encoder.config
            self._cost = StepCost.trace(self.transformer, self.image_size, self.channels, cfg.num_tokens,
                                        cfg.token_dim, cfg.pooled_dim, frames=self.frames if self.family.video else 0,
                                        width=self.image_width)
        return self._cost

    def attach_knobs(self) -> KnobState:
        """Attach the knob hooks to the transformer (idempotent); inert outside knob-driven calls."""
        if self._knobs is None:
            self._knobs = attach_knobs(self.transformer)
        return self._knobs

    def detach_knobs(self) -> None:
        """Remove the knob hooks; the transformer is exactly as loaded."""
        detach_knobs(self.transformer)
        self._knobs = None

    @torch.no_grad()
    def start(self, conditions, seeds: Sequence[int], num_steps: int | None = None,
              guidance: float | None = None, forecast: bool = False) -> "Rollout":
        """Begin a knob-driven rollout of a batch of rows at pure noise (schedule position 0).

        ``forecast``: intervals jumped by step-skip use the velocity extrapolated to their noise
        level from the row's last two model calls (first order, as TaylorSeer forecasts a model's
        output) instead of the current velocity, and cache-reuse adds the cached residual
        extrapolated to the call's noise level from the row's last two full computations instead
        of the last one.
        """
        if isinstance(conditions, torch.Tensor):
            labels = conditions.long()
            conditions = labels.tolist()
        num_steps, guidance = self._check_args(conditions, seeds, num_steps, guidance)
        labels = self.encode(conditions)
        scheduler = self.make_scheduler(num_steps)
        self.attach_knobs()
        return Rollout(labels=labels, x=self.noise(seeds), num_steps=num_steps, guidance=guidance,
                       timesteps=(scheduler.timesteps / scheduler.config.num_train_timesteps).cpu(),
                       sigmas=scheduler.sigmas.cpu(), cfg=guidance != 1.0 and not self.distilled_guidance,
                       seeds=seeds, clamp=not self.latent_space, forecast=forecast)

    @torch.no_grad()
    def step(self, rollout: "Rollout", decisions) -> torch.Tensor:
        """Advance every unfinished row by one model call with its decisions (B, 3).

        Returns the (B,) FLOPs fraction of a full model call that each row spent (0 for finished rows).
        """
        b = rollout.batch_size
        levels = torch.from_numpy(validate_decisions(decisions, rows=b)) if b else torch.zeros(0, 3)
        rows = (~rollout.done).nonzero().squeeze(1)
        spent = torch.zeros(b, dtype=torch.float64)
        if rows.numel() == 0:
            return spent
        skip, cache, sparse = levels[rows].long().unbind(1)
        j = rollout.index[rows]
        jump = SKIP_INTERVALS[skip]
        j_next = (j + 1 + jump).clamp(max=rollout.num_steps)
        keep = torch.tensor(SPARSE_ATTENTION.levels, dtype=torch.float32)[sparse]
        v, effective = self.model_call(rollout, rows, j, cache, keep)
        x = rollout.x[rows]
        if rollout.forecast:
            # each skipped interval: an Euler step with the output forecast at its own noise level
            # (where the reference sampler evaluates the model), first order in sigma from the row's
            # last two calls, as a velocity at the sample reached so far
            sigmas = rollout.sigmas.to(v.device)
            rollout.outputs.update(rows, rollout.sigmas[j], v, x)
            for m in range(int(jump.max()) + 1):
                at = (j + m).clamp(max=rollout.num_steps - 1)
                dt = torch.where(j + m < j_next, sigmas[at + 1] - sigmas[at], 0.0).to(v.device)
                step_v = v if m == 0 else rollout.outputs.at(rows, rollout.sigmas[at], x)
                x = x + _rows_of(dt, x) * step_v
        else:  # one Euler step over the whole jump with the current velocity
            dt = (rollout.sigmas[j_next] - rollout.sigmas[j]).to(v.device)
            x = x + _rows_of(dt, x) * v
        rollout.x[rows] = x
        fractions = self.step_cost().fractions(effective, keep)
        spent[rows] = fractions
        rollout.record_call(rows, j, skip, effective, sparse, fractions)
        return spent

    @torch.no_grad()
    def model_call(self, rollout: "Rollout", rows: torch.Tensor, position: torch.Tensor, cache_levels: torch.Tensor,
                   keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One guided velocity evaluation of ``rows`` at schedule ``position``, with their knob levels.

        Does not advance the rollout (only the residual cache is updated). Returns the velocity and
        the effective cache levels (a row's first call computes every block).
        """
        b = rollout.batch_size
        ids = torch.cat([rows, rows + b]) if rollout.cfg else rows  # bookkeeping stays on the CPU
        twice = 2 if rollout.cfg else 1
        state = self.attach_knobs()
        effective = state.set_call(rollout.cache, ids, cache_levels.repeat(twice), keep.repeat(twice),
                                   rollout.sigmas[position].repeat(twice))
        try:
            v = self.velocity(rollout.x[rows], rollout.timesteps[position].to(self.device), rollout.labels[rows],
                              rollout.guidance)
        finally:
            state.clear_call()
        return v, effective[: rows.numel()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.transformer.parameters()) + sum(
            p.numel() for p in self.class_encoder.parameters())


FluxClassGenerator = DiTGenerator  # the embedded generator's adapter (kept name)

def _rows_of(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) per-row values shaped to broadcast over samples ``x`` (B, C, [F,] H, W)."""
    return values.view(-1, *([1] * (x.ndim - 1)))


def _expand_decisions(decisions, n: int, num_steps: int) -> np.ndarray:
    """(3,), (N, 3) or (N, num_steps, 3) levels -> (N, num_steps, 3), validated."""
    array = validate_decisions(decisions)
    if array.ndim == 1:
        array = np.broadcast_to(array, (n, num_steps, len(KNOBS)))
    elif array.ndim == 2 and array.shape[0] == n:
        array = np.broadcast_to(array[:, None], (n, num_steps, len(KNOBS)))
    elif array.shape != (n, num_steps, len(KNOBS)):
        raise HastenError(f"decisions of shape {array.shape}: expected ({len(KNOBS)},), ({n}, {len(KNOBS)}) "
                          f"or ({n}, {num_steps}, {len(KNOBS)})")
    return array
