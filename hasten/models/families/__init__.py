"""Per-architecture facts about diffusers flow-matching DiTs, in one registry.

The knobs (step-skip, cache-reuse, sparse attention) and the sampler only need a handful of facts
about a transformer family: which ``ModuleList``s hold its blocks (in execution order), which
attention modules see the image (or video) tokens and whether the text tokens sit inside them,
how one velocity evaluation is called, and how a tiny random one is built for tests. Adding a
family is one module in this package with one :func:`register_family` call:

| module | family | transformer |
|---|---|---|
| ``flux.py`` | ``flux`` | ``FluxTransformer2DModel`` (FLUX.1) |
| ``sd3.py`` | ``sd3`` | ``SD3Transformer2DModel`` (SD3 / SD3.5) |
| ``wan.py`` | ``wan`` | ``WanTransformer3DModel`` (Wan 2.x text-to-video) |
| ``qwen_image.py`` | ``qwen-image`` | ``QwenImageTransformer2DModel`` |
| ``flux2.py`` | ``flux2`` | ``Flux2Transformer2DModel`` (FLUX.2) |
| ``generic.py`` | ``generic:CLASS`` | any other diffusers transformer with its blocks in ``nn.ModuleList``s (built on the fly by :func:`family_of`, no velocity call: it runs inside a pipeline through ``hasten.accelerate``) |

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

ALL_KNOBS = ("step_skip", "cache_reuse", "sparse_attention")


def standard_guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance as FLUX's true CFG, SD3 and Wan mix it: ``uncond + g * (cond - uncond)``."""
    return v_uncond + scale * (v_cond - v_uncond)


@dataclass(frozen=True)
class DiTFamily:
    """What hasten needs to know about one diffusers DiT class.

    Attributes:
        name: short name stored in generator and policy files (``"flux"``, ``"wan"``).
        transformer_class: the diffusers class name it matches.
        block_lists: attribute names of the block ``ModuleList``s, in execution order.
        text_first: True when joint attention orders tokens [text, image] (Flux), False for
            [image, text] (SD3).
        velocity: ``(transformer, x (B, C, [F,] H, W), sigma (B,), tokens, pooled, guidance=None) -> v``;
            ``guidance`` is the embedded guidance scale of guidance-distilled models (FLUX.1-dev);
            None for a family hasten's own sampler cannot call (the generic one).
        image_tokens: ``(transformer, height, width, frames) -> number of image (video) tokens``.
        timestep_per_sigma: what the transformer's ``timestep`` argument is per unit of noise level
            (Flux takes ``sigma`` and scales it itself, SD3 and Wan take ``sigma * 1000``).
        row_inputs: forward arguments that hold one row per sample (the rest, such as Flux's
            position ids, are shared by the batch); what :func:`hasten.accelerate` splits by row.
        attention: attribute names, inside a block, of the attention modules sparse attention acts
            on (Wan's self-attention ``attn1``; its text cross-attention ``attn2`` stays dense).
        joint_attention: the text tokens sit inside those attention calls (they stay dense);
            False for self-attention over image/video tokens only (Wan).
        cfg_layout: how the family's diffusers pipelines lay out classifier-free guidance:
            ``"batched"``, one call on [uncond, cond] rows (StableDiffusion3Pipeline), or
            ``"sequential"``, one call per branch at the same step, conditional first (FluxPipeline,
            WanPipeline, QwenImagePipeline).
        video: samples are clips (C, F, H, W) instead of images (C, H, W).
        channels: ``transformer -> channels of one sample`` (FLUX packs 2x2 patches: in_channels / 4).
        random: ``(channels=, num_layers=, num_single_layers=, heads=, head_dim=, cond_dim=, image_size=,
            guidance_embeds=) ->`` a small random-weight transformer of the family (tests and
            ``knobs bench``); arguments a family has no use for are ignored.
        knobs: the knobs the family supports.
        guide: ``(v_cond, v_uncond, scale) -> v``: how the family's pipelines mix the two CFG branches
            (Qwen-Image rescales the mix to the conditional prediction's norm).
    """

    name: str
    transformer_class: str
    block_lists: tuple[str, ...]
    text_first: bool
    velocity: Callable[..., torch.Tensor] | None
    image_tokens: Callable[..., int]
    timestep_per_sigma: float = 1.0
    row_inputs: tuple[str, ...] = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")
    attention: tuple[str, ...] = ("attn",)
    joint_attention: bool = True
    cfg_layout: str = "sequential"
    video: bool = False
    channels: Callable[[nn.Module], int] = lambda transformer: transformer.config.in_channels
    random: Callable[..., nn.Module] | None = None
    knobs: tuple[str, ...] = ALL_KNOBS
    guide: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = standard_guidance

    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """All transformer blocks, flattened in execution order."""
        return [block for name in self.block_lists for block in getattr(transformer, name)]

    def check_knobs(self, levels: dict, where: str = "policy") -> None:
        """Raise when ``levels`` (knob name -> allowed levels) uses a knob this family lacks."""
        for knob, allowed in levels.items():
            if knob not in self.knobs and any(int(level) != 0 for level in allowed):
                raise HastenError(f"{where}: uses {knob} levels {list(allowed)}, but the {self.name} family "
                                  f"({self.transformer_class}) supports only {', '.join(self.knobs)}; retrain with "
                                  f"allowed_levels: {{{knob}: [0]}}")


FAMILIES: dict[str, DiTFamily] = {}


def register_family(family: DiTFamily) -> DiTFamily:
    """Make a DiT family known to the adapters and knobs (one call per architecture)."""
    FAMILIES[family.name] = family
    return family


def family_of(transformer: nn.Module) -> DiTFamily:
    """The registered family of a transformer instance (by class name), or the generic family of a
    diffusers transformer whose blocks sit in ``nn.ModuleList``s; the error says what is missing."""
    cls = type(transformer).__name__
    for family in FAMILIES.values():
        if family.transformer_class == cls:
            return family
    return generic_family(transformer, known=supported())


def get_family(name: str) -> DiTFamily:
    if name not in FAMILIES:
        raise HastenError(f"unknown generator family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def supported() -> str:
    """``FluxTransformer2DModel (flux), ...``: the registered families, for error messages."""
    return ", ".join(f"{f.transformer_class} ({f.name})" for f in FAMILIES.values())


def random_transformer(name: str, channels: int = 3, num_layers: int = 1, num_single_layers: int = 1,
                       heads: int = 2, head_dim: int = 16, cond_dim: int = 16, image_size: int = 16,
                       guidance_embeds: bool = False, seed: int = 0, **extra) -> nn.Module:
    """A small random-weight transformer of family ``name``; diffusers' zero-initialised output
    layers get small random weights so that outputs depend on every block. ``extra``: family-specific
    sizes (Wan's ``ffn_dim``)."""
    family = get_family(name)
    if family.random is None:
        raise HastenError(f"the {name} family has no random configuration")
    torch.manual_seed(seed)
    transformer = family.random(channels=channels, num_layers=num_layers, num_single_layers=num_single_layers,
                                heads=heads, head_dim=head_dim, cond_dim=cond_dim, image_size=image_size,
                                guidance_embeds=guidance_embeds, **extra)
    with torch.no_grad():
        for p in transformer.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return transformer.eval()


from hasten.models.families import flux, sd3, wan, qwen_image, flux2  # noqa: E402,F401  (register)
from hasten.models.families.generic import generic_family  # noqa: E402
