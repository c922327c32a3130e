"""Generator adapter of a class-conditional FLUX transformer and its reference sampler.

The reference sampler is the plain flow-matching Euler loop of FLUX / SD3, driven by diffusers'
``FlowMatchEulerDiscreteScheduler``: ``x <- x + (s_next - s) * v(x, s)`` from pure noise at
``s = 1`` to data at ``s = 0``, with classifier-free guidance (both branches in one batched model
call). Every sample has its own seed, so a row's result does not depend on the batch it sits in.

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
from hasten.generators.flux_pixel import ClassEncoder, image_ids, pack, text_ids, unpack

logger = logging.getLogger(__name__)


class FluxClassGenerator:
    """A frozen class-conditional ``FluxTransformer2DModel`` in pixel space (2x2 packed).

    Attributes:
        transformer: the frozen ``diffusers.FluxTransformer2DModel`` (eval mode, no grads).
        class_encoder: class index -> ("text" tokens, pooled vector).
        scheduler_config: config of the ``FlowMatchEulerDiscreteScheduler``.
        meta: the generator folder's ``hasten_generator.json`` (class names, defaults, recipe).
        path: the generator folder.
    """

    family = "flux"

    def __init__(self, transformer, class_encoder: ClassEncoder, scheduler_config: dict, meta: dict,
                 path: str | None = None):
        self.transformer = transformer.eval().requires_grad_(False)
        self.class_encoder = class_encoder.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.meta = meta
        self.path = path
        self.class_names: list[str] = list(meta["class_names"])
        self.image_size: int = int(meta["image_size"])
        self.channels: int = int(meta.get("channels", 3))
        self.default_steps: int = int(meta["num_steps"])
        self.default_guidance: float = float(meta["guidance_scale"])

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
        """Conditions -> (B,) long tensor of class indices."""
        return torch.tensor([self.class_index(c) for c in conditions], dtype=torch.long)

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """(B, C, H, W) initial noise; row i depends only on ``seeds[i]``."""
        shape = (self.channels, self.image_size, self.image_size)
        rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(rows)

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
        """Guided velocity for packed tokens ``x`` (B, N, C*4) at per-row noise levels ``sigma`` (B,).

        Both classifier-free-guidance branches go through the transformer in one batch of 2B rows.
        """
        b = x.shape[0]
        if guidance == 1.0:
            all_labels, all_x, all_sigma = labels, x, sigma
        else:
            null = torch.full_like(labels, self.class_encoder.null_class)
            all_labels = torch.cat([labels, null])
            all_x, all_sigma = torch.cat([x, x]), torch.cat([sigma, sigma])
        tokens, pooled = self.class_encoder(all_labels)
        v = self.transformer(
            hidden_states=all_x, encoder_hidden_states=tokens, pooled_projections=pooled,
            timestep=all_sigma, img_ids=image_ids(self.image_size, self.image_size, device=x.device),
            txt_ids=text_ids(tokens.shape[1], device=x.device), return_dict=False)[0]
        if guidance == 1.0:
            return v
        v_cond, v_uncond = v[:b], v[b:]
        return v_uncond + guidance * (v_cond - v_uncond)

    # ----------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, conditions: Sequence[str | int], seeds: Sequence[int], num_steps: int | None = None,
               guidance: float | None = None, batch_size: int = 64, progress: bool = False):
        """The reference sampler: full compute, ``num_steps`` Euler steps of the flow.

        Args:
            conditions: one class (name or index) per sample.
            seeds: one noise seed per sample.
            num_steps: Euler steps (default: the model's, 28).
            guidance: classifier-free guidance scale (default: the model's; 1.0 = no guidance).
            batch_size: rows per model call.
            progress: show a progress bar over batches.

        Returns:
            (images (N, C, H, W) float32 in [-1, 1], stats) where stats holds per-row
            ``model_calls`` and ``flops_fraction`` (numpy arrays) and ``seconds``.
        """
        num_steps = self.default_steps if num_steps is None else int(num_steps)
        guidance = self.default_guidance if guidance is None else float(guidance)
        if len(conditions) != len(seeds):
            raise HastenError(f"conditions and seeds differ in length ({len(conditions)} vs {len(seeds)})")
        if num_steps < 1:
            raise HastenError(f"num_steps={num_steps}: expected an integer >= 1")
        if not np.isfinite(guidance) or guidance < 0:
            raise HastenError(f"guidance={guidance}: expected a finite number >= 0")
        if batch_size < 1:
            raise HastenError(f"batch_size={batch_size}: expected an integer >= 1")
        labels = self.encode(conditions)
        start = time.perf_counter()
        outputs = []
        chunks = range(0, len(seeds), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"sampling ({num_steps} steps)", dynamic_ncols=True)
        for i in chunks:
            rows = slice(i, i + batch_size)
            outputs.append(self._sample_batch(labels[rows], self.noise(seeds[rows]), num_steps, guidance))
        images = torch.cat(outputs) if outputs else torch.empty(0, self.channels, self.image_size,
                                                                self.image_size)
        stats = {
            "model_calls": np.full(len(seeds), num_steps, dtype=np.int64),
            "flops_fraction": np.full(len(seeds), num_steps / self.default_steps),
            "seconds": time.perf_counter() - start,
        }
        return images, stats

    def _sample_batch(self, labels, noise, num_steps, guidance):
        scheduler = self.make_scheduler(num_steps)
        x = pack(noise)  # (B, N, C*4)
        for t in scheduler.timesteps:
            sigma = (t / scheduler.config.num_train_timesteps).expand(x.shape[0])
            v = self.velocity(x, sigma, labels, guidance)
            x = scheduler.step(v, t, x, return_dict=False)[0]
        return unpack(x, self.image_size, self.image_size).clamp(-1, 1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.transformer.parameters()) + sum(
            p.numel() for p in self.class_encoder.parameters())
