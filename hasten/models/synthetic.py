"""Randomly initialised generators of each DiT family, for tests and the knobs benchmark.

They have the architecture (and, for the benchmark, the token counts) of real checkpoints but
random weights, so the cost of the knobs can be measured where no weights can be downloaded.
The output layers, zero-initialised in diffusers, get small random weights so outputs depend on
every block.

Example:
    >>> gen = random_generator("sd3", image_size=8, channels=4, num_layers=2)
    >>> gen.family.name, gen.image_size
    ('sd3', 8)
"""

from __future__ import annotations

import torch

from hasten.models.adapter import DiTGenerator
from hasten.models.families import get_family
from hasten.models.flux_pixel import ClassEncoder, ClassEncoderConfig, rope_axes


def _flux(channels, num_layers, num_single_layers, heads, head_dim, cond_dim, guidance_embeds=False):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=channels * 4, num_layers=num_layers,
                                  num_single_layers=num_single_layers, attention_head_dim=head_dim,
                                  num_attention_heads=heads, joint_attention_dim=cond_dim,
                                  pooled_projection_dim=cond_dim, axes_dims_rope=rope_axes(head_dim),
                                  guidance_embeds=guidance_embeds)


def _sd3(channels, num_layers, heads, head_dim, cond_dim, image_size):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=image_size, patch_size=2, in_channels=channels, out_channels=channels,
                                 num_layers=num_layers, attention_head_dim=head_dim, num_attention_heads=heads,
                                 joint_attention_dim=cond_dim, caption_projection_dim=heads * head_dim,
                                 pooled_projection_dim=cond_dim, pos_embed_max_size=max(16, image_size))


def random_generator(family: str = "flux", image_size: int = 16, channels: int = 3, num_classes: int = 4,
                     num_layers: int = 1, num_single_layers: int = 1, heads: int = 2, head_dim: int = 16,
                     cond_dim: int = 16, text_tokens: int = 2, num_steps: int = 6, guidance: float = 3.0,
                     seed: int = 0, guidance_embeds: bool = False) -> DiTGenerator:
    """A random-weight class-conditional generator of ``family`` ("flux" or "sd3").

    ``num_single_layers`` and ``guidance_embeds`` (guidance-distilled, as FLUX.1-dev) apply to
    Flux only. Image tokens: (image_size / 2)^2 for both families.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    get_family(family)
    torch.manual_seed(seed)
    if family == "flux":
        transformer = _flux(channels, num_layers, num_single_layers, heads, head_dim, cond_dim, guidance_embeds)
    else:
        transformer = _sd3(channels, num_layers, heads, head_dim, cond_dim, image_size)
    with torch.no_grad():
        for p in transformer.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    encoder = ClassEncoder(ClassEncoderConfig(num_classes=num_classes, num_tokens=text_tokens,
                                              token_dim=cond_dim, pooled_dim=cond_dim))
    meta = {"family": family, "class_names": [f"class {i}" for i in range(num_classes)], "image_size": image_size,
            "channels": channels, "num_steps": num_steps, "guidance_scale": guidance}
    scheduler_config = dict(FlowMatchEulerDiscreteScheduler().config)
    return DiTGenerator(transformer, encoder, scheduler_config, meta)
