"""The pieces of a pixel-space, class-conditional FLUX model: the class encoder, 2x2 packing and
position ids.

The embedded generator is a real ``diffusers.FluxTransformer2DModel``; only its conditioning is
small. A class plays the role of FLUX's prompt: :class:`ClassEncoder` maps it to a few "text"
tokens (``encoder_hidden_states``) and a pooled vector (``pooled_projections``), exactly the two
inputs that T5 and CLIP provide to FLUX.1. Index ``num_classes`` is the null class used for
label dropout and classifier-free guidance.
"""

from __future__ import annotations

import os
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from hasten.io import load_safetensors_into, read_json, save_module


@dataclass
class ClassEncoderConfig:
    """Shape of the class conditioning."""

    num_classes: int = 16  # real classes; index num_classes is the null (unconditional) class
    num_tokens: int = 4  # "text" tokens per class
    token_dim: int = 64  # FluxTransformer2DModel.joint_attention_dim
    pooled_dim: int = 64  # FluxTransformer2DModel.pooled_projection_dim
    # a class index as mixed-radix "words" (e.g. [4, 4, 4]: motion, shape, colour of embedded:clips):
    # the last len(factors) tokens are one embedding per word, shared by every class that has it,
    # as a prompt's words are; the first num_tokens - len(factors) stay per class
    factors: list = field(default_factory=list)

    def __post_init__(self):
        if self.factors and (math.prod(self.factors) != self.num_classes or len(self.factors) >= self.num_tokens):
            raise ValueError(f"factors={self.factors}: expected factors of num_classes={self.num_classes} and fewer "
                             f"than num_tokens={self.num_tokens}")


class ClassEncoder(nn.Module):
    """Class index -> (encoder_hidden_states (B, T, D), pooled_projections (B, P)).

    Example:
        >>> enc = ClassEncoder(ClassEncoderConfig(num_classes=4))
        >>> tokens, pooled = enc(torch.tensor([0, 4]))
        >>> tuple(tokens.shape), tuple(pooled.shape)
        ((2, 4, 64), (2, 64))
        >>> words = ClassEncoder(ClassEncoderConfig(num_classes=8, factors=[2, 4]))  # 2 tokens of its own, 2 words
        >>> t, _ = words(torch.tensor([1, 5]))  # classes 1 = (0, 1) and 5 = (1, 1) share their second word
        >>> bool(torch.equal(t[0, 3], t[1, 3])), bool(torch.equal(t[0, 2], t[1, 2]))
        (True, False)
    """

    def __init__(self, config: ClassEncoderConfig):
        super().__init__()
        self.config = config
        own = config.num_tokens - len(config.factors)  # tokens of the class itself
        self.tokens = nn.Embedding(config.num_classes + 1, own * config.token_dim)
        self.pooled = nn.Embedding(config.num_classes + 1, config.pooled_dim)
        nn.init.normal_(self.tokens.weight, std=1.0)
        nn.init.normal_(self.pooled.weight, std=1.0)
        if config.factors:  # one table per word, each with a null row
            self.words = nn.ModuleList(nn.Embedding(f + 1, config.token_dim) for f in config.factors)
            for table in self.words:
                nn.init.normal_(table.weight, std=1.0)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        tokens = self.tokens(labels).view(labels.shape[0], -1, cfg.token_dim)
        if cfg.factors:
            null = labels == self.null_class
            words, stride = [], cfg.num_classes
            for size, table in zip(cfg.factors, self.words):
                stride //= size
                digit = torch.where(null, torch.full_like(labels, size), (labels // stride) % size)
                words.append(table(digit))
            tokens = torch.cat([tokens, torch.stack(words, dim=1)], dim=1)
        return tokens, self.pooled(labels)

    def save_pretrained(self, path: str) -> None:
        save_module(self, path, asdict(self.config))

    @classmethod
    def from_pretrained(cls, path: str) -> "ClassEncoder":
        config = ClassEncoderConfig(**read_json(os.path.join(path, "config.json"), ClassEncoderConfig))
        encoder = cls(config)
        load_safetensors_into(encoder, os.path.join(path, "model.safetensors"))
        return encoder


def pack(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4): 2x2 patches as tokens, the layout of FluxPipeline."""
    b, c, h, w = images.shape
    x = images.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack`: (B, H/2 * W/2, C * 4) -> (B, C, H, W)."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H/2 * W/2, 3) position ids (0, row, col), as FluxPipeline._prepare_latent_image_ids."""
    rows = torch.arange(height // 2, device=device, dtype=dtype)
    cols = torch.arange(width // 2, device=device, dtype=dtype)
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.view(-1, 3)


def text_ids(num_tokens: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(T, 3) zeros: FLUX gives text tokens no position."""
    return torch.zeros(num_tokens, 3, device=device, dtype=dtype)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Rotary axes (index, row, col) of a head, split as FLUX.1's 16/56/56 of 128."""
    quarter = head_dim // 4
    return (quarter, 3 * quarter // 2, 3 * quarter // 2)
