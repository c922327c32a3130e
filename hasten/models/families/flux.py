"""FLUX.1 (``FluxTransformer2DModel``): 2x2-packed latent tokens, joint attention [text, image],
double-stream then single-stream blocks; FLUX.1-dev's guidance is an input of one call."""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.models.families import DiTFamily, register_family
from hasten.models.flux_pixel import image_ids, pack, rope_axes, text_ids, unpack
from hasten.models.pipeline_spec import PipelineSpec, register_pipeline, shifted_schedule


def velocity(transformer, x, sigma, tokens, pooled, guidance=None):
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


def random(channels, num_layers, num_single_layers, heads, head_dim, cond_dim, guidance_embeds=False, **_):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=channels * 4, num_layers=num_layers,
                                  num_single_layers=num_single_layers, attention_head_dim=head_dim,
                                  num_attention_heads=heads, joint_attention_dim=cond_dim,
                                  pooled_projection_dim=cond_dim, axes_dims_rope=rope_axes(head_dim),
                                  guidance_embeds=guidance_embeds)


FLUX = register_family(DiTFamily(
    name="flux",
    transformer_class="FluxTransformer2DModel",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    text_first=True,
    velocity=velocity,
    image_tokens=lambda transformer, h, w, frames=1: (h // 2) * (w // 2),
    timestep_per_sigma=1.0,
    row_inputs=("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance"),
    cfg_layout="sequential",
    channels=lambda transformer: transformer.config.in_channels // 4,
    random=random,
))


def encode(pipe, prompts, device, max_sequence_length=None):
    """FluxPipeline.encode_prompt: T5 tokens and the pooled CLIP vector."""
    length = {} if not max_sequence_length else {"max_sequence_length": max_sequence_length}
    tokens, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, **length)
    return tokens, pooled, None


register_pipeline(PipelineSpec(
    pipeline_class="FluxPipeline",
    family="flux",
    encode=encode,
    schedule=shifted_schedule(max_shift=1.15),  # FluxPipeline.__call__, step 5
    default_guidance=lambda transformer: 3.5 if transformer.get("guidance_embeds") else 1.0,
    token_side=lambda transformer: 2,
))
