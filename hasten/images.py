"""Image grids as PNG, with class labels, written atomically."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from hasten.io import publish


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, rows: int, path: str, row_labels: list[str] | None = None,
              scale: int = 3, pad: int = 2) -> None:
    """Save ``images`` (row-major, ``rows`` rows) as one PNG grid, labels at the left of each row."""
    from PIL import Image, ImageDraw

    pixels = to_uint8(images)
    n, h, w, _ = pixels.shape
    cols = (n + rows - 1) // rows
    label_w = 0
    if row_labels:
        label_w = 7 * max(len(t) for t in row_labels) + 8
    grid = Image.new("RGB", (label_w + cols * (w * scale + pad) + pad, rows * (h * scale + pad) + pad),
                     (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = Image.fromarray(pixels[i]).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, (label_w + pad + c * (w * scale + pad), pad + r * (h * scale + pad)))
    for r, text in enumerate(row_labels or []):
        draw.text((4, pad + r * (h * scale + pad) + h * scale // 2 - 5), text, fill=(0, 0, 0))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    os.close(fd)
    try:
        grid.save(tmp, format="PNG")
        publish(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
