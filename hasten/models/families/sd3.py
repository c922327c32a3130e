"""SD3 / SD3.5 (``SD3Transformer2DModel``): patchified latents, joint attention [image, text];
StableDiffusion3Pipeline batches the CFG branches as [uncond, cond] rows of one call."""

from __future__ import annotations

from hasten.errors import HastenError
from hasten.models.families import DiTFamily, register_family
from hasten.models.pipeline_spec import PipelineSpec, register_pipeline


def velocity(transformer, x, sigma, tokens, pooled, guidance=None):
    """StableDiffusion3Pipeline's call: latents as (B, C, H, W), ``timestep = sigma * 1000``."""
    return transformer(hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled,
                       timestep=sigma * 1000, return_dict=False)[0]


def random(channels, num_layers, heads, head_dim, cond_dim, image_size, **_):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=image_size, patch_size=2, in_channels=channels, out_channels=channels,
                                 num_layers=num_layers, attention_head_dim=head_dim, num_attention_heads=heads,
                                 joint_attention_dim=cond_dim, caption_projection_dim=heads * head_dim,
                                 pooled_projection_dim=cond_dim, pos_embed_max_size=max(16, image_size))


SD3 = register_family(DiTFamily(
    name="sd3",
    transformer_class="SD3Transformer2DModel",
    block_lists=("transformer_blocks",),
    text_first=False,
    velocity=velocity,
    image_tokens=lambda transformer, h, w, frames=1: (h // transformer.config.patch_size) * (w // transformer.config.patch_size),
    timestep_per_sigma=1000.0,
    row_inputs=("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"),
    cfg_layout="batched",
    random=random,
))


def encode(pipe, prompts, device, max_sequence_length=None):
    """StableDiffusion3Pipeline.encode_prompt (CLIP + CLIP + T5), one branch: the negative prompt is
    encoded exactly as a positive one (same helpers, same lengths)."""
    length = {} if not max_sequence_length else {"max_sequence_length": max_sequence_length}
    tokens, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                              do_classifier_free_guidance=False, **length)
    return tokens, pooled, None


def schedule(scheduler, num_steps, image_seq_len):
    """StableDiffusion3Pipeline.__call__, step 5: default sigmas with the static (or dynamic) shift
    (its max_shift default is 1.16)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg, kwargs = scheduler.config, {}
    if cfg.get("use_dynamic_shifting", False):
        kwargs["mu"] = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256),
                                       cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                       cfg.get("max_shift", 1.16))
    scheduler.set_timesteps(num_steps, **kwargs)


def check(transformer, latent_size):
    patch, limit = int(transformer.get("patch_size", 2)), transformer.get("pos_embed_max_size")
    if limit and latent_size // patch > limit:
        raise HastenError(f"generator_options.resolution: {latent_size} latent pixels are above the transformer's "
                          f"position grid ({limit} patches of {patch})")


register_pipeline(PipelineSpec(
    pipeline_class="StableDiffusion3Pipeline",
    family="sd3",
    encode=encode,
    schedule=schedule,
    default_guidance=lambda transformer: 7.0,
    token_side=lambda transformer: int(transformer.get("patch_size", 2)),
    check=check,
))
