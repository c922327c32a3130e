"""FLUX.2 (``Flux2Transformer2DModel``): one token per latent pixel of the 2x2-patchified VAE
latents, 4D position ids (t, h, w, l), double-stream blocks then single-stream blocks that take
[text; image] as one sequence; Flux2Pipeline's guidance is an input of a single call."""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.models.families import DiTFamily, register_family
from hasten.models.pipeline_spec import PipelineSpec, register_pipeline


def latent_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H * W, 4) ids (0, row, col, 0), as Flux2Pipeline._prepare_latent_ids."""
    t, l = torch.arange(1), torch.arange(1)
    return torch.cartesian_prod(t, torch.arange(height), torch.arange(width), l).to(device=device, dtype=dtype)


def text_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(L, 4) ids (0, 0, 0, l), as Flux2Pipeline._prepare_text_ids."""
    zero = torch.arange(1)
    return torch.cartesian_prod(zero, zero, zero, torch.arange(length)).to(device=device, dtype=dtype)


def velocity(transformer, x, sigma, tokens, pooled=None, guidance=None):
    """Flux2Pipeline's call: latents (B, C, H, W) as (B, H * W, C) tokens, ``timestep = sigma``."""
    if transformer.config.patch_size != 1:
        raise HastenError(f"Flux2Transformer2DModel with patch_size={transformer.config.patch_size}: expected 1")
    b, c, height, width = x.shape
    scale = None
    if transformer.config.guidance_embeds:
        scale = sigma.new_full(sigma.shape, 4.0 if guidance is None else float(guidance))
    v = transformer(hidden_states=x.reshape(b, c, height * width).permute(0, 2, 1), timestep=sigma, guidance=scale,
                    encoder_hidden_states=tokens, img_ids=latent_ids(height, width, x.device, x.dtype),
                    txt_ids=text_ids(tokens.shape[1], x.device, x.dtype), return_dict=False)[0]
    return v.permute(0, 2, 1).reshape(b, -1, height, width)


def random(channels, num_layers, num_single_layers, heads, head_dim, cond_dim, guidance_embeds=False, **_):
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(patch_size=1, in_channels=channels, num_layers=num_layers,
                                   num_single_layers=num_single_layers, attention_head_dim=head_dim,
                                   num_attention_heads=heads, joint_attention_dim=cond_dim,
                                   timestep_guidance_channels=32, axes_dims_rope=(head_dim // 4,) * 4,
                                   guidance_embeds=guidance_embeds)


FLUX2 = register_family(DiTFamily(
    name="flux2",
    transformer_class="Flux2Transformer2DModel",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    text_first=True,
    velocity=velocity,
    image_tokens=lambda transformer, h, w, frames=1: h * w,
    timestep_per_sigma=1.0,
    row_inputs=("hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"),
    cfg_layout="sequential",
    random=random,
))


def encode(pipe, prompts, device, max_sequence_length=None):
    """Flux2Pipeline.encode_prompt: the Mistral-3 text encoder's hidden states of layers 10, 20 and 30
    after the chat template with FLUX.2's system message, padded to ``max_sequence_length`` (512)."""
    tokens, _ = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length or 512)
    return tokens, None, None


def schedule(scheduler, num_steps, image_seq_len):
    """Flux2Pipeline.__call__, step 6: ``linspace(1, 1/n, n)`` sigmas shifted by its empirical mu."""
    import numpy as np
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    mu = compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_steps)
    if scheduler.config.get("use_flow_sigmas", False):
        scheduler.set_timesteps(num_steps, mu=mu)
    else:
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)


def unscale(vae, latents):
    """Flux2Pipeline's decode step: the VAE's batch-norm statistics undone, then the 2x2 patches
    unfolded back into the VAE's latent channels."""
    from diffusers import Flux2Pipeline

    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents.device, latents.dtype)
    return Flux2Pipeline._unpatchify_latents(latents * std + mean)


register_pipeline(PipelineSpec(
    pipeline_class="Flux2Pipeline",
    family="flux2",
    encode=encode,
    schedule=schedule,
    default_guidance=lambda transformer: 4.0,  # its guidance_scale (an input of the guidance-distilled model)
    spatial_scale=lambda vae: 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1) * 2,  # VAE 8x, then 2x2 patches
    token_side=lambda transformer: 1,
    vae_class="AutoencoderKLFlux2",
    unscale=unscale,
))
