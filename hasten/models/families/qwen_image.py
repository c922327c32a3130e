"""Qwen-Image (``QwenImageTransformer2DModel``): 2x2-packed latent tokens as FLUX packs them,
double-stream blocks with joint attention [text, image]; QwenImagePipeline calls the true-CFG
branches one after the other, conditional first, with ``timestep = sigma`` and per-row
``img_shapes``."""

from __future__ import annotations

from hasten.errors import HastenError
from hasten.models.families import DiTFamily, register_family
from hasten.models.flux_pixel import pack, unpack


def velocity(transformer, x, sigma, tokens, pooled=None, guidance=None):
    """QwenImagePipeline's call: 2x2-packed tokens, one ``img_shapes`` entry per row, no text mask
    (the pipeline drops an all-ones mask)."""
    if transformer.config.patch_size != 2 or getattr(transformer.config, "zero_cond_t", False):
        raise HastenError("QwenImageTransformer2DModel: expected patch_size=2 and no zero_cond_t (text-to-image)")
    height, width = x.shape[-2:]
    shapes = [[(1, height // 2, width // 2)]] * x.shape[0]
    scale = None
    if transformer.config.guidance_embeds:
        scale = sigma.new_full(sigma.shape, 1.0 if guidance is None else float(guidance))
    v = transformer(hidden_states=pack(x), timestep=sigma, guidance=scale, encoder_hidden_states=tokens,
                    encoder_hidden_states_mask=None, img_shapes=shapes, return_dict=False)[0]
    return unpack(v, height, width)


def random(channels, num_layers, heads, head_dim, cond_dim, guidance_embeds=False, **_):
    from diffusers import QwenImageTransformer2DModel

    quarter = head_dim // 4
    return QwenImageTransformer2DModel(patch_size=2, in_channels=channels * 4, out_channels=channels,
                                       num_layers=num_layers, attention_head_dim=head_dim, num_attention_heads=heads,
                                       joint_attention_dim=cond_dim, guidance_embeds=guidance_embeds,
                                       axes_dims_rope=(head_dim - 3 * quarter // 2 * 2, 3 * quarter // 2,
                                                       3 * quarter // 2))


QWEN_IMAGE = register_family(DiTFamily(
    name="qwen-image",
    transformer_class="QwenImageTransformer2DModel",
    block_lists=("transformer_blocks",),
    text_first=True,
    velocity=velocity,
    image_tokens=lambda transformer, h, w, frames=1: (h // 2) * (w // 2),
    timestep_per_sigma=1.0,
    row_inputs=("hidden_states", "encoder_hidden_states", "encoder_hidden_states_mask", "timestep", "guidance",
                "img_shapes"),
    cfg_layout="sequential",
    channels=lambda transformer: transformer.config.in_channels // 4,
    random=random,
))
