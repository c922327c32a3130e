"""Tiny random FluxPipeline / StableDiffusion3Pipeline folders, built offline (no download): CLIP and
T5 text encoders from configs, tokenizers from a small character vocabulary, a 2-level VAE."""

import string

import torch

SIZE = 32  # pixels; the tiny VAE halves it: 16x16 latents
COND_DIM = 16  # T5 d_model = joint_attention_dim
CHARS = string.ascii_lowercase + string.digits + ".,!?'-"
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                      base_shift=0.5, max_shift=1.15)  # FLUX.1-dev's scheduler_config.json
SD3_SCHEDULER = dict(shift=3.0)  # SD3-medium's


def clip_tokenizer():
    from transformers import CLIPTokenizer

    special = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(CHARS)
    vocab = {t: i for i, t in enumerate(special + chars + [c + "</w>" for c in chars])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in CHARS]
              + [("\u2581" + c, -2.5) for c in string.ascii_lowercase])
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def clip_encoder(with_projection: bool, vocab_size: int, hidden: int = 8):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=COND_DIM, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8)).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=SIZE, shift_factor=0.0609, scaling_factor=1.5035).eval()


def randomise_zero_layers(model):
    """diffusers zero-initialises output layers; small random weights make outputs depend on every block."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model.eval()


def make_tiny_pipeline(family: str, guidance_embeds: bool = True, seed: int = 0):
    """A tiny random ``FluxPipeline`` (FLUX.1-dev layout when ``guidance_embeds``) or
    ``StableDiffusion3Pipeline`` (SD3-medium layout: two CLIPs with projection and a T5)."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                           SD3Transformer2DModel, StableDiffusion3Pipeline)

    torch.manual_seed(seed)
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    if family == "flux":
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                             attention_head_dim=8, num_attention_heads=2, joint_attention_dim=COND_DIM,
                                             pooled_projection_dim=8, axes_dims_rope=(2, 2, 4),
                                             guidance_embeds=guidance_embeds)
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=tiny_vae(),
                            text_encoder=clip_encoder(False, len(clip_tok)), tokenizer=clip_tok,
                            text_encoder_2=t5_encoder(len(t5_tok)), tokenizer_2=t5_tok,
                            transformer=randomise_zero_layers(transformer))
    else:
        transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=COND_DIM,
                                            caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16)
        pipe = StableDiffusion3Pipeline(transformer=randomise_zero_layers(transformer),
                                        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=tiny_vae(),
                                        text_encoder=clip_encoder(True, len(clip_tok)), tokenizer=clip_tok,
                                        text_encoder_2=clip_encoder(True, len(clip_tok)), tokenizer_2=clip_tokenizer(),
                                        text_encoder_3=t5_encoder(len(t5_tok)), tokenizer_3=t5_tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(path: str, family: str, **kwargs) -> str:
    make_tiny_pipeline(family, **kwargs).save_pretrained(path)
    return path
