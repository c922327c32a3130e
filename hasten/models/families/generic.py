"""The generic family: any other diffusers transformer whose blocks sit in ``nn.ModuleList``s.

hasten's knobs need two things of a transformer it has no adapter for: its blocks, in execution
order, and for sparse attention a self-attention over the image/video tokens alone. The generic
family takes every top-level ``nn.ModuleList`` of blocks (in registration order, which is the
order diffusers' DiTs run them) and, where every block has a self-attention ``attn1`` beside a
cross-attention ``attn2`` (PixArt / Sana / Wan-style blocks), sparsifies ``attn1``. It has no
velocity call of its own, so it runs inside the model's own pipeline through
``hasten.accelerate(pipe, policy)`` (step-skip and cache-reuse; sparse attention where found).
"""

from __future__ import annotations

import inspect

from torch import nn

from hasten.errors import HastenError
from hasten.models.families import DiTFamily


def _block_lists(transformer: nn.Module) -> tuple[str, ...]:
    return tuple(name for name, child in transformer.named_children()
                 if isinstance(child, nn.ModuleList) and len(child) and all(
                     "block" in type(block).__name__.lower() or "layer" in type(block).__name__.lower()
                     for block in child))


def _timestep_scale(transformer: nn.Module) -> float:
    """1000 for transformers that embed ``timestep`` in [0, 1000] (most), 1 for those that take sigma."""
    return 1.0 if type(transformer).__name__.startswith(("Flux", "QwenImage", "Chroma")) else 1000.0


def generic_family(transformer: nn.Module, known: str = "") -> DiTFamily:
    """A :class:`DiTFamily` for an unregistered transformer, or an error saying what is missing."""
    cls = type(transformer).__name__
    lists = _block_lists(transformer)
    if not lists:
        raise HastenError(f"transformer class {cls}: no nn.ModuleList of transformer blocks found, which hasten's "
                          f"generic adapter needs for step-skip and cache-reuse; registered families: {known}")
    if "hidden_states" not in inspect.signature(transformer.forward).parameters:
        raise HastenError(f"transformer class {cls}: its forward has no hidden_states argument, which hasten's "
                          f"generic adapter needs; registered families: {known}")
    blocks = [block for name in lists for block in getattr(transformer, name)]
    self_attention = all(hasattr(getattr(b, "attn1", None), "processor") and hasattr(b, "attn2") for b in blocks)
    knobs = ("step_skip", "cache_reuse", "sparse_attention") if self_attention else ("step_skip", "cache_reuse")
    return DiTFamily(
        name=f"generic:{cls}",
        transformer_class=cls,
        block_lists=lists,
        text_first=False,
        velocity=None,
        image_tokens=lambda t, h, w, frames=1: 0,
        timestep_per_sigma=_timestep_scale(transformer),
        row_inputs=tuple(inspect.signature(transformer.forward).parameters),
        attention=("attn1",) if self_attention else (),
        joint_attention=False,
        cfg_layout="batched",  # diffusers' pipelines other than the registered ones batch [uncond, cond]
        knobs=knobs,
    )
