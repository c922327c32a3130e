"""Recipe of ``embedded:clips``: a class-conditional rectified-flow Wan transformer on video clips,
pixel space.

``hasten generator train --config experiments/clips_generator.yaml`` runs :func:`train_generator`.
The model is a real ``diffusers.WanTransformer3DModel``: clips of 8 frames of 32x32 RGB are its
"latents" (B, 3, 8, 32, 32), patchified 1x4x4 into 8 x 8 x 8 = 512 video tokens (a VAE would
compress them first; here the pixels play the latents, as ``embedded:shapes`` does for FLUX). The
class goes in through :class:`~hasten.models.flux_pixel.ClassEncoder`'s "text" tokens, which Wan
reads through its cross-attention (its pooled vector is unused). Training is rectified flow with
logit-normal noise levels, the same loop as ``embedded:shapes`` (:mod:`hasten.embedded.flow_training`),
and ``timestep = sigma * 1000`` as WanPipeline calls the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from hasten.embedded.clips import data as clips_data
from hasten.embedded.flow_training import FlowRecipe, export_flow_generator, train_flow_generator
from hasten.models.flux_pixel import ClassEncoder, ClassEncoderConfig

logger = logging.getLogger(__name__)


@dataclass
class ClipsGeneratorConfig:
    """Every knob of the clips recipe; the shipped model's values are in its folder."""

    recipe: str = "clips"  # which generator recipe (hasten generator train reads it)
    seed: int = 0
    steps: int = 20000  # optimiser steps (at most)
    max_minutes: float = 85.0  # wall-clock limit (0: none); the cosine decay ends at it
    batch_size: int = 16  # clips per step
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_min_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    num_layers: int = 6  # Wan blocks
    num_attention_heads: int = 4
    attention_head_dim: int = 32  # inner dim 128
    ffn_dim: int = 384
    patch_size: list = field(default_factory=lambda: [1, 4, 4])  # frames x height x width per token
    num_text_tokens: int = 4  # one of the class's own, then its three words (motion, shape, colour)
    cond_dim: int = 64  # text_dim
    word_tokens: bool = True  # the class as words shared across classes (ClassEncoderConfig.factors)
    frames: int = clips_data.FRAMES
    num_steps: int = 28  # default sampling steps recorded with the model
    guidance_scale: float = 3.5
    shift: float = 1.0
    checkpoint_every: int = 200
    log_every: int = 10
    threads: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim",
                     "num_text_tokens", "cond_dim", "frames", "num_steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.recipe != "clips":
            raise ValueError(f"recipe={self.recipe!r}: this is the clips recipe")
        if len(self.patch_size) != 3 or clips_data.IMAGE_SIZE % self.patch_size[1] or self.frames % self.patch_size[0]:
            raise ValueError(f"patch_size={self.patch_size}: expected [t, h, w] dividing {self.frames} frames of "
                             f"{clips_data.IMAGE_SIZE}x{clips_data.IMAGE_SIZE}")
        if self.num_layers < 2:
            raise ValueError("num_layers must be >= 2 so that caching has room")
        if not 0.0 <= self.label_dropout < 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("label_dropout and ema_decay must be in [0, 1)")
        if self.lr <= 0 or self.shift <= 0:
            raise ValueError("lr and shift must be > 0")
        if self.warmup_steps < 0 or self.threads < 0 or self.max_minutes < 0:
            raise ValueError("warmup_steps, threads and max_minutes must be >= 0")


def build_models(config: ClipsGeneratorConfig):
    """A fresh (Wan transformer, class encoder) for ``config``, seeded by ``config.seed``."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(config.seed)
    transformer = WanTransformer3DModel(
        patch_size=tuple(config.patch_size), num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim, in_channels=3, out_channels=3, text_dim=config.cond_dim,
        freq_dim=64, ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
    factors = [len(clips_data.MOTIONS), len(clips_data.SHAPES), len(clips_data.COLOURS)] if config.word_tokens else []
    encoder = ClassEncoder(ClassEncoderConfig(num_classes=clips_data.NUM_CLASSES, num_tokens=config.num_text_tokens,
                                              token_dim=config.cond_dim, pooled_dim=config.cond_dim, factors=factors))
    return transformer, encoder


def flow_loss(transformer, encoder, clips, labels, sigmas, noise) -> torch.Tensor:
    """Rectified-flow velocity regression on clips (B, 3, F, H, W)."""
    s = sigmas.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * clips + s * noise
    tokens, _ = encoder(labels)
    pred = transformer(hidden_states=x_t, timestep=sigmas * 1000, encoder_hidden_states=tokens, return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred, noise - clips)


def export_generator(transformer, encoder, config: ClipsGeneratorConfig, out: str, train_seconds: float,
                     train_steps: int | None = None) -> None:
    """Write the generator folder (diffusers ``save_pretrained`` layout) read by load_generator."""
    export_flow_generator(transformer, encoder, config, out, train_seconds, train_steps, {
        "family": "wan",
        "kind": "class-conditional pixel-space rectified flow on video clips",
        "image_size": clips_data.IMAGE_SIZE,
        "frames": config.frames,
        "channels": 3,
        "class_names": list(clips_data.CLASS_NAMES),
        "recipe": "hasten generator train --config experiments/clips_generator.yaml",
    })


def train_generator(config: ClipsGeneratorConfig, run_dir: str, resume: bool = False, progress: bool = True) -> str:
    """Train (or resume) the clips recipe in ``run_dir``; returns the exported model folder."""
    return train_flow_generator(config, run_dir, FlowRecipe(build_models, flow_loss, clips_data.batches,
                                                            export_generator, "clips generator"),
                                resume=resume, progress=progress)
