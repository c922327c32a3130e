"""Wan 2.x text-to-video (``WanTransformer3DModel``): 3D patch tokens (frames x height x width),
self-attention over the video tokens only (``attn1``; sparse attention acts there), text through
a cross-attention (``attn2``, kept dense); WanPipeline calls the CFG branches one after the other,
conditional first, with ``timestep = sigma * 1000``."""

from __future__ import annotations

from hasten.errors import HastenError
from hasten.models.families import DiTFamily, register_family
from hasten.models.pipeline_spec import PipelineSpec, channel_unscale, register_pipeline


def velocity(transformer, x, sigma, tokens, pooled=None, guidance=None):
    """WanPipeline's call: latents (B, C, F, H, W) as they are (the model patchifies them)."""
    if x.ndim != 5:
        raise HastenError(f"WanTransformer3DModel: expected video latents (B, C, F, H, W), got shape {tuple(x.shape)}")
    return transformer(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=tokens, return_dict=False)[0]


def tokens(transformer, h, w, frames=1):
    p_t, p_h, p_w = transformer.config.patch_size
    return (frames // p_t) * (h // p_h) * (w // p_w)


def random(channels, num_layers, heads, head_dim, cond_dim, ffn_dim=None, **_):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                                 in_channels=channels, out_channels=channels, text_dim=cond_dim, freq_dim=32,
                                 ffn_dim=ffn_dim or 2 * heads * head_dim, num_layers=num_layers, cross_attn_norm=True,
                                 qk_norm="rms_norm_across_heads", rope_max_seq_len=64)


WAN = register_family(DiTFamily(
    name="wan",
    transformer_class="WanTransformer3DModel",
    block_lists=("blocks",),
    text_first=False,
    velocity=velocity,
    image_tokens=tokens,
    timestep_per_sigma=1000.0,
    row_inputs=("hidden_states", "encoder_hidden_states", "encoder_hidden_states_image", "timestep"),
    attention=("attn1",),
    joint_attention=False,
    cfg_layout="sequential",
    video=True,
    random=random,
))


def encode(pipe, prompts, device, max_sequence_length=None):
    """WanPipeline.encode_prompt: UMT5 tokens, zero-padded to ``max_sequence_length`` (512, as its
    ``__call__``); Wan has no pooled vector."""
    tokens, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                   max_sequence_length=max_sequence_length or 512, device=device)
    return tokens, None, None


def schedule(scheduler, num_steps, image_seq_len):
    """WanPipeline.__call__: the scheduler's own timesteps (its flow shift is in its config)."""
    scheduler.set_timesteps(num_steps)


register_pipeline(PipelineSpec(
    pipeline_class="WanPipeline",
    family="wan",
    encode=encode,
    schedule=schedule,
    default_guidance=lambda transformer: 5.0,
    spatial_scale=lambda vae: int(vae.get("scale_factor_spatial") or 8),
    temporal_scale=lambda vae: int(vae.get("scale_factor_temporal") or 4),
    token_side=lambda transformer: int(transformer.get("patch_size", (1, 2, 2))[1]),
    vae_class="AutoencoderKLWan",
    unscale=channel_unscale,  # WanPipeline's decode step
    video=True,
))
