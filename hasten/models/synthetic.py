"""Randomly initialised generators of each DiT family, for tests and the knobs benchmark.

They have the architecture (and, for the benchmark, the token counts) of real checkpoints but
random weights, so the cost of the knobs can be measured where no weights can be downloaded.
Each family says how its small random transformer is built (``DiTFamily.random``); the output
layers, zero-initialised in diffusers, get small random weights so outputs depend on every block.

Example:
    >>> gen = random_generator("sd3", image_size=8, channels=4, num_layers=2)
    >>> gen.family.name, gen.image_size
    ('sd3', 8)
    >>> random_generator("wan", image_size=8, channels=4, frames=3).sample_shape
    (4, 3, 8, 8)
"""

from __future__ import annotations

from hasten.models.adapter import DiTGenerator
from hasten.models.families import get_family, random_transformer
from hasten.models.flux_pixel import ClassEncoder, ClassEncoderConfig


def random_generator(family: str = "flux", image_size: int = 16, channels: int = 3, num_classes: int = 4,
                     num_layers: int = 1, num_single_layers: int = 1, heads: int = 2, head_dim: int = 16,
                     cond_dim: int = 16, text_tokens: int = 2, num_steps: int = 6, guidance: float = 3.0,
                     seed: int = 0, guidance_embeds: bool = False, frames: int = 3,
                     image_width: int | None = None, **extra) -> DiTGenerator:
    """A random-weight class-conditional generator of ``family`` (any registered family name).

    ``num_single_layers`` applies to the families with single-stream blocks (Flux, FLUX.2),
    ``guidance_embeds`` (guidance-distilled, as FLUX.1-dev) to those that have it, ``frames`` to
    video families (Wan); ``image_width`` makes samples ``image_size`` x ``image_width`` (default square);
    ``extra``: family-specific sizes (Wan's ``ffn_dim``).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    spec = get_family(family)
    transformer = random_transformer(family, channels=channels, num_layers=num_layers,
                                     num_single_layers=num_single_layers, heads=heads, head_dim=head_dim,
                                     cond_dim=cond_dim, image_size=image_size, guidance_embeds=guidance_embeds,
                                     seed=seed, **extra)
    encoder = ClassEncoder(ClassEncoderConfig(num_classes=num_classes, num_tokens=text_tokens,
                                              token_dim=cond_dim, pooled_dim=cond_dim))
    meta = {"family": family, "class_names": [f"class {i}" for i in range(num_classes)], "image_size": image_size,
            "channels": channels, "num_steps": num_steps, "guidance_scale": guidance}
    if spec.video:
        meta["frames"] = frames
    if image_width is not None:
        meta["image_width"] = image_width
    scheduler_config = dict(FlowMatchEulerDiscreteScheduler().config)
    return DiTGenerator(transformer, encoder, scheduler_config, meta)
