"""What hasten needs to know about one diffusers pipeline class to run it as a frozen generator
from a folder, in one registry beside the DiT family registry: how it encodes prompts, how its
``__call__`` sets up its schedule, its VAE's scale factors and default guidance.

Each family's module registers the pipelines of its family (``register_pipeline``), so a family
is still added in one place; :mod:`hasten.models.pipeline` reads only this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hasten.errors import HastenError


@dataclass(frozen=True)
class PipelineSpec:
    """One diffusers pipeline class as a hasten generator.

    Attributes:
        pipeline_class: the diffusers class name (``model_index.json``'s ``_class_name``).
        family: the DiT family of its ``transformer``.
        encode: ``(pipe, prompts, device, max_sequence_length or None) -> (tokens (B, T, D), pooled
            (B, P) or None, text mask (B, T) or None)``: the pipeline's own ``encode_prompt``, one
            branch, no CFG doubling; the mask marks real tokens where prompts are padded (Qwen-Image).
        schedule: ``(scheduler, num_steps, image_seq_len) -> None``: ``set_timesteps`` exactly as the
            pipeline's ``__call__`` does it (sigmas, resolution-dependent shift).
        default_guidance: ``transformer config -> guidance scale`` of the pipeline's ``__call__``.
        spatial_scale: ``vae config -> pixels per latent pixel``; temporal_scale: ``vae config ->
            frames per latent frame`` (video pipelines; 0 for image pipelines).
        token_side: ``transformer config -> sample pixels per token side`` (FLUX packs 2x2, SD3 and
            Wan patchify by their ``patch_size``); the resolution must be a multiple of
            ``spatial_scale * token_side``.
        check: ``(transformer config, latent size) -> None``, raising where the transformer cannot
            take that latent size (SD3's position grid), or None.
        vae_class: the diffusers class of its ``vae`` (previews decode with it).
        unscale: ``(vae, latents) -> what vae.decode takes`` (FLUX / SD3: ``latents / scaling_factor +
            shift_factor``).
        video: the pipeline makes clips; its generator's samples are (C, F, H, W).
    """

    pipeline_class: str
    family: str
    encode: Callable
    schedule: Callable
    default_guidance: Callable[[dict], float]
    spatial_scale: Callable[[dict], int] = lambda vae: 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    temporal_scale: Callable[[dict], int] = lambda vae: 0
    token_side: Callable[[dict], int] = lambda transformer: 2
    check: Callable | None = None
    vae_class: str = "AutoencoderKL"
    unscale: Callable = lambda vae, z: z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    video: bool = False


PIPELINES: dict[str, PipelineSpec] = {}


def register_pipeline(spec: PipelineSpec) -> PipelineSpec:
    PIPELINES[spec.pipeline_class] = spec
    return spec


def get_pipeline(name: str, where: str = "model_index.json") -> PipelineSpec:
    if name not in PIPELINES:
        raise HastenError(f"{where}: pipeline class {name!r} is not supported as a generator folder; expected one "
                          f"of {sorted(PIPELINES)} (any other pipeline with a DiT runs through "
                          "hasten.accelerate(pipe, policy))")
    return PIPELINES[name]


def shifted_schedule(max_shift: float = 1.15, linear_sigmas: bool = True):
    """FluxPipeline's (and QwenImagePipeline's, Flux2Pipeline's) schedule: ``sigmas = linspace(1, 1/n, n)``
    with the resolution-dependent shift ``mu = calculate_shift(image_seq_len, ...)``."""
    import numpy as np

    def schedule(scheduler, num_steps: int, image_seq_len: int) -> None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = scheduler.config
        mu = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", max_shift))
        if cfg.get("use_flow_sigmas", False) or not linear_sigmas:
            scheduler.set_timesteps(num_steps, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)

    return schedule


def channel_unscale(vae, latents):
    """The Wan / Qwen-Image VAEs' decode step: per-channel ``latents * std + mean`` of the VAE's config,
    on clips (B, C, F, H, W)."""
    import torch

    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    return latents * std + mean
