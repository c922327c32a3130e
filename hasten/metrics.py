"""Image fidelity metrics against full-compute samples: PSNR and SSIM, per row."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-row PSNR in dB between image batches in [-1, 1]; identical rows give +inf. Clips
    (B, C, F, H, W) get the mean of their per-frame PSNRs (each frame capped at 100 dB)."""
    if a.ndim == 5:
        frames = (a.float() - b.float()).pow(2).mean(dim=(1, 3, 4))  # (B, F)
        return (10 * torch.log10(data_range**2 / frames)).clamp(max=100).mean(1)
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def temporal_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row temporal-consistency error of clips (B, C, F, H, W) to reference clips: the mean
    absolute difference of their frame-to-frame changes (0 when ``a`` moves exactly as ``b``).

    Example:
        >>> clip = torch.rand(2, 3, 4, 8, 8)
        >>> temporal_error(clip, clip).tolist(), round(float(temporal_error(clip + 0.5, clip)[0]), 6)
        ([0.0, 0.0], 0.0)
    """
    da, db = a.float().diff(dim=2), b.float().diff(dim=2)
    return (da - db).abs().flatten(1).mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-row SSIM (Wang et al. 2004) with a Gaussian window, averaged over channels and pixels.

    Example:
        >>> x = torch.rand(2, 3, 16, 16) * 2 - 1
        >>> ssim(x, x).tolist()
        [1.0, 1.0]

    Clips (B, C, F, H, W) get the mean SSIM of their frames.
    """
    if a.ndim == 5:
        rows, frames = a.shape[0], a.shape[2]
        fold = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731
        return ssim(fold(a), fold(b), data_range, window, sigma).view(rows, frames).mean(1)
    a, b = a.float(), b.float()
    c = a.shape[1]
    coords = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = (g / g.sum()).to(a.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(x):
        return F.conv2d(x, kernel, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(1).clamp(max=1.0)
