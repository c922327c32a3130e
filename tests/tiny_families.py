"""Tiny random WanPipeline / QwenImagePipeline / Flux2Pipeline, built offline (no download): the
transformer from a small config, no text encoder (prompt embeddings are passed to the call), no VAE
(``output_type="latent"``), a flow-matching Euler scheduler."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline, QwenImagePipeline, WanPipeline

from hasten.models.families import random_transformer

COND_DIM = 16
TEXT_TOKENS = 3
STEPS = 6
# pixels (frames) of a call: without a VAE the pipelines assume its scale (8x spatial, 4x temporal)
SHAPES = {"wan": dict(height=64, width=64, num_frames=9),  # 3 latent frames of 8x8: 48 video tokens
          "qwen-image": dict(height=128, width=128),  # 16x16 latents, 2x2 packed: 64 tokens
          "flux2": dict(height=128, width=128)}  # 8x8 tokens of the 2x2-patchified 16x16 latents
FAMILIES = tuple(SHAPES)


def umt5_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, d_model=COND_DIM, d_kv=8, d_ff=32, num_layers=1,
                                       num_heads=2, relative_attention_num_buckets=8)).eval()


def tiny_wan_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.0, 0.3],
                            latents_std=[1.5, 0.8, 1.0, 1.2]).eval()


def make_pipe(family: str, seed: int = 0, num_layers: int = 3, guidance_embeds: bool = False, text: bool = False):
    """The family's pipeline around a random transformer of ``num_layers`` (FLUX.2: double + single) blocks;
    ``text``: Wan with a tiny UMT5 text encoder, character tokenizer and VAE (a complete pipeline)."""
    transformer = random_transformer(family, channels=4 if family != "flux2" else 16, num_layers=num_layers,
                                     num_single_layers=num_layers, heads=2, head_dim=16, cond_dim=COND_DIM,
                                     guidance_embeds=guidance_embeds, seed=seed)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if family == "wan" and text:
        from tiny_pipelines import t5_tokenizer

        tokenizer = t5_tokenizer()
        torch.manual_seed(seed)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=umt5_encoder(len(tokenizer)), vae=tiny_wan_vae(),
                           scheduler=scheduler, transformer=transformer)
    elif family == "wan":
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)
    elif family == "qwen-image":
        pipe = QwenImagePipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                                 transformer=transformer)
    else:
        pipe = Flux2Pipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(family: str, n: int = 2, seed: int = 0, cfg: bool = True, **extra) -> dict:
    """Prompt embeddings given directly and a seeded noise generator; CFG as the family's pipeline does it."""
    g = torch.Generator().manual_seed(1000 + seed)
    embeds = lambda: torch.randn(n, TEXT_TOKENS, COND_DIM, generator=g)  # noqa: E731
    kwargs = dict(prompt_embeds=embeds(), num_inference_steps=STEPS, output_type="latent",
                  generator=torch.Generator().manual_seed(seed), **SHAPES[family])
    if family == "wan":
        kwargs.update(negative_prompt_embeds=embeds(), guidance_scale=3.0 if cfg else 1.0)
    elif family == "qwen-image":
        kwargs.update(true_cfg_scale=3.0 if cfg else 1.0)
        if cfg:
            kwargs.update(negative_prompt_embeds=embeds())
    else:
        kwargs.update(guidance_scale=4.0)
    kwargs.update(extra)
    return kwargs


def run(pipe, family: str, **extra) -> torch.Tensor:
    out = pipe(**call_kwargs(family, **extra))
    return out.frames if family == "wan" else out.images
