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


def qwen_tokenizer():
    """A byte-level BPE Qwen2Tokenizer over the 256 byte symbols (no merges) and Qwen's chat tokens."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tokenizer


def qwen_text_encoder(vocab_size: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=COND_DIM, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=COND_DIM,
                           fullatt_block_indexes=[0]))
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen_vae():
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                  temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.0, 0.3],
                                  latents_std=[1.5, 0.8, 1.0, 1.2]).eval()


def make_qwen_with_text(seed: int = 0, num_layers: int = 3):
    """A complete tiny QwenImagePipeline: Qwen2.5-VL text encoder, byte tokenizer, transformer and VAE."""
    tokenizer = qwen_tokenizer()
    torch.manual_seed(seed)
    encoder = qwen_text_encoder(len(tokenizer))
    transformer = random_transformer("qwen-image", channels=4, num_layers=num_layers, heads=2, head_dim=16,
                                     cond_dim=COND_DIM, seed=seed)
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                                      base_shift=0.5, max_shift=0.9),
                             vae=tiny_qwen_vae(), text_encoder=encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for part in m['content'] %}"
                 "{{ part['text'] }}{% endfor %}<|im_end|>\n{% endfor %}")


def mistral3_text_encoder(vocab_size: int):
    """A tiny Mistral-3 (Pixtral vision + Mistral text) with the 31 hidden states FLUX.2 reads (layers 10, 20, 30)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14, head_dim=8))
    return Mistral3ForConditionalGeneration(config).eval()


def tiny_flux2_vae():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(block_out_channels=(8, 8), latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4).eval()


def make_flux2_with_text(seed: int = 0, num_layers: int = 2):
    """A complete tiny Flux2Pipeline: a Mistral-3 text encoder (3 x 16 = 48-dim prompt features), a
    byte tokenizer with a chat template, a guidance-distilled transformer and a 2-level VAE (scale 2,
    then FLUX.2's 2x2 patches: 16 latent channels)."""
    from diffusers import Flux2Transformer2DModel

    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    encoder = mistral3_text_encoder(len(tokenizer))
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=num_layers,
                                          num_single_layers=num_layers, attention_head_dim=16, num_attention_heads=2,
                                          joint_attention_dim=48, timestep_guidance_channels=32,
                                          axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True)
    with torch.no_grad():
        for p in transformer.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                         vae=tiny_flux2_vae(), text_encoder=encoder, tokenizer=tokenizer, transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


BUSY = {"step_skip": [0.4, 0.2, 0.1, 0.1, 0.1, 0.1], "cache_reuse": [0.4, 0.3, 0.3], "sparse_attention": [0.4, 0.3, 0.3]}


def assert_training_matches_the_pipeline(gen, pipe, pipeline_latents, family: str, prompts, steps: int,
                                         guidance: float, tolerance: float):
    """A busy policy makes the same decisions, FLOPs and latents in hasten's sampler on the pipeline
    generator (training) as inside the real pipeline through ``hasten.accelerate`` (inference);
    ``pipeline_latents(pipe, prompts, noise, guidance)`` is the pipeline's own output."""
    import pytest

    import hasten
    from hasten.policies import Policy, PolicyConfig

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(family=family, num_steps=steps, init_probs=BUSY))
    seeds = list(range(1, len(prompts) + 1))
    latents, stats = gen.sample(prompts, seeds, num_steps=steps, guidance=guidance,
                                decisions=policy.decide(0.4, seed=0))
    with hasten.accelerate(pipe, policy, budget=0.4, seed=0, seeds=seeds) as acc:
        expected = pipeline_latents(pipe, prompts, gen.noise(seeds), guidance)
    assert (stats["decisions"] == acc.stats["decisions"]).all()
    assert (stats["decisions"][..., 1:] > 0).any() and stats["flops_fraction"].max() < 0.9  # the knobs acted
    assert stats["flops_fraction"] == pytest.approx(acc.stats["flops_fraction"])
    assert (latents - expected).abs().max().item() < tolerance
