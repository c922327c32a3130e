"""The discriminator term: a small conv net trained online to tell full-compute samples from
accelerated ones (the guard against reward hacking, DESIGN.md "Rewards").

Its reward is the probability it gives an accelerated sample of being a full-compute one, so the
return rises only when samples look like the frozen model's own. The trainer updates it
alternately with the policy (:meth:`Discriminator.update`) and checkpoints it with the heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hasten.errors import HastenError
from hasten.rewards.registry import RewardInputs, register_reward


class DiscriminatorNet(nn.Module):
    """(B, C, H, W) images in [-1, 1] -> (B,) logits of "full compute"; clips (B, C, F, H, W) are
    judged frame by frame and their logits averaged over the frames."""

    def __init__(self, channels: int = 3, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 5:
            b, f = images.shape[0], images.shape[2]
            return self.net(images.transpose(1, 2).flatten(0, 1)).view(b, f).mean(1)
        return self.net(images).squeeze(1)


@register_reward("discriminator")
class Discriminator:
    """Reward term and its online-trained network.

    Args:
        width: channels of the first conv layer.
        lr: AdamW learning rate of the discriminator.
        updates: optimiser steps per training iteration.
        channels: image channels (set by the trainer from the generator).
    """

    def __init__(self, width: int = 16, lr: float = 1e-3, updates: int = 2, channels: int = 3):
        self.width, self.lr, self.updates, self.channels = int(width), float(lr), int(updates), int(channels)
        self.net = DiscriminatorNet(channels, self.width)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=0.0)

    def _check(self, images: torch.Tensor) -> None:
        if images.shape[1] != self.channels:
            raise HastenError(f"rewards.discriminator.channels={self.channels}, but the generator's samples have "
                              f"{images.shape[1]} channels (a pipeline generator's are latents: 16 for FLUX.1 and "
                              f"SD3); set rewards.discriminator.channels: {images.shape[1]}")

    @torch.no_grad()
    def __call__(self, inputs: RewardInputs) -> torch.Tensor:
        self._check(inputs.images)
        self.net.eval()
        return torch.sigmoid(self.net(inputs.images.float().cpu()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)

    def update(self, full: torch.Tensor, accelerated: torch.Tensor) -> float:
        """``updates`` steps of binary cross-entropy: full-compute = 1, accelerated = 0; returns the last loss."""
        self._check(full)
        self.net.train()
        images = torch.cat([full, accelerated]).float().cpu()
        targets = torch.cat([torch.ones(len(full)), torch.zeros(len(accelerated))])
        loss = torch.zeros(())
        for _ in range(self.updates):
            loss = F.binary_cross_entropy_with_logits(self.net(images), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.net.eval()
        return loss.item()
