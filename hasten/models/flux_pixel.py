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
from dataclasses import asdict, dataclass

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


class ClassEncoder(nn.Module):
    """Class index -> (encoder_hidden_states (B, T, D), pooled_projections (B, P)).

    Example:
        >>> enc = ClassEncoder(ClassEncoderConfig(num_classes=4))
        >>> tokens, pooled = enc(torch.tensor([0, 4]))
        >>> tuple(tokens.shape), tuple(pooled.shape)
        ((2, 4, 64), (2, 64))
    """

    def __init__(self, config: ClassEncoderConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.num_classes + 1, config.num_tokens * config.token_dim)
        self.pooled = nn.Embedding(config.num_classes + 1, config.pooled_dim)
        nn.init.normal_(self.tokens.weight, std=1.0)
        nn.init.normal_(self.pooled.weight, std=1.0)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokens(labels).view(-1, self.config.num_tokens, self.config.token_dim)
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
