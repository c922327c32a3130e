"""Qwen-Image (``QwenImageTransformer2DModel``): 2x2-packed latent tokens as FLUX packs them,
double-stream blocks with joint attention [text, image]; QwenImagePipeline calls the true-CFG
branches one after the other, conditional first, with ``timestep = sigma`` and per-row
``img_shapes``."""

from __future__ import annotations

from hasten.errors import HastenError
from hasten.models.families import DiTFamily, register_family
from hasten.models.flux_pixel import pack, unpack
from hasten.models.pipeline_spec import PipelineSpec, channel_unscale, register_pipeline, shifted_schedule


def velocity(transformer, x, sigma, tokens, pooled=None, guidance=None, text_mask=None):
    """QwenImagePipeline's call: 2x2-packed tokens, one ``img_shapes`` entry per row, the mask of
    the prompts' real tokens where they are padded (the pipeline drops an all-ones mask)."""
    if transformer.config.patch_size != 2 or getattr(transformer.config, "zero_cond_t", False):
        raise HastenError("QwenImageTransformer2DModel: expected patch_size=2 and no zero_cond_t (text-to-image)")
    height, width = x.shape[-2:]
    shapes = [[(1, height // 2, width // 2)]] * x.shape[0]
    scale = None
    if transformer.config.guidance_embeds:
        scale = sigma.new_full(sigma.shape, 1.0 if guidance is None else float(guidance))
    v = transformer(hidden_states=pack(x), timestep=sigma, guidance=scale, encoder_hidden_states=tokens,
                    encoder_hidden_states_mask=text_mask, img_shapes=shapes, return_dict=False)[0]
    return unpack(v, height, width)


def guide(v_cond, v_uncond, scale):
    """QwenImagePipeline's true CFG: the mix rescaled, per packed token, to the conditional norm."""
    height, width = v_cond.shape[-2:]
    cond, mixed = pack(v_cond), pack(v_uncond + scale * (v_cond - v_uncond))
    mixed = mixed * (cond.norm(dim=-1, keepdim=True) / mixed.norm(dim=-1, keepdim=True))
    return unpack(mixed, height, width)


def encode(pipe, prompts, device, max_sequence_length=None):
    """QwenImagePipeline.encode_prompt (Qwen2.5-VL's last hidden states after the chat template),
    padded to the longest prompt of the batch, with the mask of real tokens; no pooled vector."""
    tokens, mask = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length or 1024)
    return tokens, None, mask


def unscale(vae, latents):
    """QwenImagePipeline's decode step: a one-frame clip, per-channel ``latents * std + mean``."""
    return channel_unscale(vae, latents[:, :, None])


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
    guide=guide,
))

register_pipeline(PipelineSpec(
    pipeline_class="QwenImagePipeline",
    family="qwen-image",
    encode=encode,
    schedule=shifted_schedule(max_shift=1.15),  # QwenImagePipeline.__call__: linspace sigmas, shifted by mu
    default_guidance=lambda transformer: 4.0,  # its true_cfg_scale
    spatial_scale=lambda vae: 2 ** len(vae.get("temperal_downsample", [0, 0, 0])),
    token_side=lambda transformer: 2,
    vae_class="AutoencoderKLQwenImage",
    unscale=unscale,
))
