"""Per-architecture facts about diffusers flow-matching DiTs, in one registry.

The knobs (step-skip, cache-reuse, sparse attention) and the sampler only need a handful of facts
about a transformer family: which ``ModuleList``s hold its blocks (in execution order), how a
block is called and what it returns, where the text tokens sit inside joint attention, and how
one velocity evaluation is called. Adding a family is one :func:`register_family` call.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
    ...                                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
    ...                                pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    >>> family_of(model).name, len(family_of(model).blocks(model))
    ('flux', 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hasten.errors import HastenError
from hasten.models.flux_pixel import image_ids, pack, text_ids, unpack


@dataclass(frozen=True)
class DiTFamily:
    """What hasten needs to know about one diffusers DiT class.

    Attributes:
        name: short name stored in generator and policy files (``"flux"``, ``"sd3"``).
        transformer_class: the diffusers class name it matches.
        block_lists: attribute names of the block ``ModuleList``s, in execution order.
        text_first: True when joint attention orders tokens [text, image] (Flux), False for
            [image, text] (SD3).
        velocity: ``(transformer, x (B, C, H, W), sigma (B,), tokens, pooled, guidance=None) -> v``;
            ``guidance`` is the embedded guidance scale of guidance-distilled models (FLUX.1-dev).
        image_tokens: ``(transformer, height, width) -> number of image tokens``.
        timestep_per_sigma: what the transformer's ``timestep`` argument is per unit of noise level
            (Flux takes ``sigma`` and scales it itself, SD3 takes ``sigma * 1000``).
        row_inputs: forward arguments that hold one row per sample (the rest, such as Flux's
            position ids, are shared by the batch); what :func:`hasten.accelerate` splits by row.
    """

    name: str
    transformer_class: str
    block_lists: tuple[str, ...]
    text_first: bool
    velocity: Callable[..., torch.Tensor]
    image_tokens: Callable[[nn.Module, int, int], int]
    timestep_per_sigma: float = 1.0
    row_inputs: tuple[str, ...] = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")

    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """All transformer blocks, flattened in execution order."""
        return [block for name in self.block_lists for block in getattr(transformer, name)]


FAMILIES: dict[str, DiTFamily] = {}


def register_family(family: DiTFamily) -> DiTFamily:
    """Make a DiT family known to the adapters and knobs (one call per architecture)."""
    FAMILIES[family.name] = family
    return family


def family_of(transformer: nn.Module) -> DiTFamily:
    """The registered family of a transformer instance (by class name, through wrappers)."""
    cls = type(transformer).__name__
    for family in FAMILIES.values():
        if family.transformer_class == cls:
            return family
    known = ", ".join(f"{f.transformer_class} ({f.name})" for f in FAMILIES.values())
    raise HastenError(f"transformer class {cls} has no registered DiT family; known: {known}")


def get_family(name: str) -> DiTFamily:
    if name not in FAMILIES:
        raise HastenError(f"unknown generator family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


# ---------------------------------------------------------------------------------------- Flux
def _flux_velocity(transformer, x, sigma, tokens, pooled, guidance=None):
    """FluxPipeline's call: 2x2-packed tokens, ``timestep = sigma`` (the model multiplies by 1000);
    guidance-distilled checkpoints (``guidance_embeds=True``, FLUX.1-dev) get the scale as input."""
    p = transformer.config.patch_size
    if p != 1:
        raise HastenError(f"FluxTransformer2DModel with patch_size={p}: expected 1 (FluxPipeline packs 2x2)")
    height, width = x.shape[-2:]
    if transformer.config.guidance_embeds:
        guidance = torch.full_like(sigma, 3.5 if guidance is None else float(guidance))
    else:
        guidance = None
    v = transformer(hidden_states=pack(x), encoder_hidden_states=tokens, pooled_projections=pooled,
                    timestep=sigma, guidance=guidance,
                    img_ids=image_ids(height, width, device=x.device, dtype=x.dtype),
                    txt_ids=text_ids(tokens.shape[1], device=x.device, dtype=x.dtype),
                    return_dict=False)[0]
    return unpack(v, height, width)


register_family(DiTFamily(
    name="flux",
    transformer_class="FluxTransformer2DModel",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    text_first=True,
    velocity=_flux_velocity,
    image_tokens=lambda transformer, h, w: (h // 2) * (w // 2),
    timestep_per_sigma=1.0,
    row_inputs=("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance"),
))


# ---------------------------------------------------------------------------------------- SD3
def _sd3_velocity(transformer, x, sigma, tokens, pooled, guidance=None):
    """StableDiffusion3Pipeline's call: latents as (B, C, H, W), ``timestep = sigma * 1000``."""
    return transformer(hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled,
                       timestep=sigma * 1000, return_dict=False)[0]


register_family(DiTFamily(
    name="sd3",
    transformer_class="SD3Transformer2DModel",
    block_lists=("transformer_blocks",),
    text_first=False,
    velocity=_sd3_velocity,
    image_tokens=lambda transformer, h, w: (h // transformer.config.patch_size) * (w // transformer.config.patch_size),
    timestep_per_sigma=1000.0,
    row_inputs=("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"),
))
