"""Recipe of ``embedded:shapes``: a class-conditional rectified-flow FLUX transformer, pixel space.

``hasten generator train`` runs :func:`train_generator`. The model is a real
``diffusers.FluxTransformer2DModel`` (2x2 packed 32x32 RGB -> 256 image tokens), conditioned on
a class through :class:`~hasten.models.flux_pixel.ClassEncoder` ("text" tokens + pooled
vector). Training is rectified flow (Liu et al. 2022; the FLUX / SD3 objective): for data ``x0``
and noise ``e``, ``x_s = (1 - s) x0 + s e`` and the model regresses the velocity ``e - x0``, with
``s`` drawn logit-normal (Esser et al. 2024, SD3). Labels are dropped to the null class with
probability ``label_dropout`` so the sampler can use classifier-free guidance.

The run folder holds TensorBoard events, ``checkpoint/`` (safetensors + JSON, every
``checkpoint_every`` steps, ``--resume`` continues exactly) and, at the end, ``model/``: the
generator folder that :func:`hasten.load_generator` reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from hasten.embedded.flow_training import FlowRecipe, export_flow_generator, train_flow_generator
from hasten.embedded.flow_training import lr_at as _lr_at  # noqa: F401  (kept name)
from hasten.embedded.flow_training import progress_at  # noqa: F401  (kept name)
from hasten.embedded.shapes import data as shapes_data
from hasten.models.flux_pixel import ClassEncoder, ClassEncoderConfig, image_ids, pack, rope_axes, text_ids

logger = logging.getLogger(__name__)


@dataclass
class GeneratorTrainConfig:
    """Every knob of the generator recipe; the shipped model's values are in its folder."""

    seed: int = 0  # seeds the weights, the data stream, the timesteps and the label dropout
    steps: int = 20000  # optimiser steps (at most)
    max_minutes: float = 85.0  # wall-clock limit of the training (0: none); the cosine decay then ends at it
    batch_size: int = 32  # images per step
    lr: float = 1e-3  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr_min_ratio * lr
    lr_min_ratio: float = 0.1  # floor of the cosine decay, as a fraction of lr
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.999  # EMA of the weights; the EMA is what ships
    label_dropout: float = 0.1  # probability of the null class (classifier-free guidance)
    num_layers: int = 2  # FLUX double-stream blocks
    num_single_layers: int = 6  # FLUX single-stream blocks
    num_attention_heads: int = 4  # heads; inner dim = heads * head_dim
    attention_head_dim: int = 32  # per-head dim; rope axes (8, 12, 12) must sum to it
    num_text_tokens: int = 4  # class "text" tokens
    cond_dim: int = 64  # joint_attention_dim and pooled_projection_dim
    num_steps: int = 28  # default sampling steps recorded with the model (FLUX.1-dev)
    guidance_scale: float = 3.5  # default classifier-free guidance recorded with the model
    shift: float = 1.0  # flow-matching schedule shift recorded with the model
    checkpoint_every: int = 200  # steps between checkpoints
    log_every: int = 10  # steps between TensorBoard scalars
    threads: int = 0  # torch threads (0 = torch's default)

    def __post_init__(self):
        positive = ("steps", "batch_size", "num_layers", "num_single_layers", "num_attention_heads",
                    "attention_head_dim", "num_text_tokens", "cond_dim", "num_steps",
                    "checkpoint_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.num_layers + self.num_single_layers < 2:
            raise ValueError("num_layers + num_single_layers must be >= 2 so that caching has room")
        if self.attention_head_dim % 16:
            raise ValueError(f"attention_head_dim={self.attention_head_dim}: must be a multiple of 16 "
                             "(it is split over three rotary axes)")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout={self.label_dropout}: must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay}: must be in [0, 1)")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        if self.warmup_steps < 0 or self.threads < 0 or self.max_minutes < 0:
            raise ValueError("warmup_steps, threads and max_minutes must be >= 0")
        if self.shift <= 0:
            raise ValueError(f"shift={self.shift}: must be > 0")

    def rope_axes(self) -> tuple[int, int, int]:
        return rope_axes(self.attention_head_dim)


def build_models(config: GeneratorTrainConfig):
    """A fresh (transformer, class encoder) for ``config``, seeded by ``config.seed``."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(config.seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=3 * 4,
        num_layers=config.num_layers,
        num_single_layers=config.num_single_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.cond_dim,
        pooled_projection_dim=config.cond_dim,
        guidance_embeds=False,
        axes_dims_rope=config.rope_axes(),
    )
    encoder = ClassEncoder(ClassEncoderConfig(
        num_classes=shapes_data.NUM_CLASSES, num_tokens=config.num_text_tokens,
        token_dim=config.cond_dim, pooled_dim=config.cond_dim))
    return transformer, encoder


def flow_loss(transformer, encoder, images, labels, sigmas, noise) -> torch.Tensor:
    """Rectified-flow velocity regression loss (mean squared error on ``noise - images``)."""
    b, _, h, w = images.shape
    x_t = (1 - sigmas[:, None, None, None]) * images + sigmas[:, None, None, None] * noise
    tokens, pooled = encoder(labels)
    pred = transformer(
        hidden_states=pack(x_t), encoder_hidden_states=tokens, pooled_projections=pooled,
        timestep=sigmas, img_ids=image_ids(h, w), txt_ids=text_ids(tokens.shape[1]),
        return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred, pack(noise - images))


def train_generator(config: GeneratorTrainConfig, run_dir: str, resume: bool = False,
                    progress: bool = True) -> str:
    """Train (or resume) the generator recipe in ``run_dir``; returns the exported model folder.

    Example:
        >>> cfg = GeneratorTrainConfig(steps=2, batch_size=2, num_layers=1, num_single_layers=1)
        >>> train_generator(cfg, "/tmp/gen-run", progress=False)  # doctest: +SKIP
        '/tmp/gen-run/model'
    """
    return train_flow_generator(config, run_dir, FlowRecipe(build_models, flow_loss, shapes_data.batches,
                                                            export_generator, "generator"),
                                resume=resume, progress=progress)


def export_generator(transformer, encoder, config: GeneratorTrainConfig, out: str,
                     train_seconds: float, train_steps: int | None = None) -> None:
    """Write the generator folder (diffusers ``save_pretrained`` layout) read by load_generator."""
    export_flow_generator(transformer, encoder, config, out, train_seconds, train_steps, {
        "family": "flux",
        "kind": "class-conditional pixel-space rectified flow",
        "image_size": shapes_data.IMAGE_SIZE,
        "channels": 3,
        "class_names": list(shapes_data.CLASS_NAMES),
        "recipe": "hasten generator train",
    })
