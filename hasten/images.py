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


def _grid(pixels: np.ndarray, rows: int, row_labels, scale: int, pad: int):
    """(N, H, W, 3) uint8 tiles, row-major -> one PIL image, labels at the left of each row."""
    from PIL import Image, ImageDraw

    n, h, w, _ = pixels.shape
    cols = (n + rows - 1) // rows
    label_w = 7 * max(len(t) for t in row_labels) + 8 if row_labels else 0
    grid = Image.new("RGB", (label_w + cols * (w * scale + pad) + pad, rows * (h * scale + pad) + pad),
                     (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = Image.fromarray(pixels[i]).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, (label_w + pad + c * (w * scale + pad), pad + r * (h * scale + pad)))
    for r, text in enumerate(row_labels or []):
        draw.text((4, pad + r * (h * scale + pad) + h * scale // 2 - 5), text, fill=(0, 0, 0))
    return grid


def save_grid(images: torch.Tensor, rows: int, path: str, row_labels: list[str] | None = None,
              scale: int = 3, pad: int = 2, frame_ms: int = 150) -> None:
    """Save ``images`` (row-major, ``rows`` rows) as one grid, labels at the left of each row.

    Clips (B, C, F, H, W) become an animated GIF when ``path`` ends in ``.gif`` (one grid per frame,
    Pillow's GIF writer, ``frame_ms`` per frame, looping), else a PNG film strip (each clip's frames
    side by side).
    """
    if images.ndim == 5:
        frames = images.shape[2]
        if path.lower().endswith(".gif"):
            grids = [_grid(to_uint8(images[:, :, f]), rows, row_labels, scale, pad) for f in range(frames)]
            _publish(lambda tmp: grids[0].save(tmp, format="GIF", save_all=True, append_images=grids[1:],
                                               duration=frame_ms, loop=0), path, ".gif")
            return
        strip = images.permute(0, 2, 1, 3, 4).flatten(0, 1)  # each clip's frames in a row
        images, rows = strip, rows
        grid = _grid(to_uint8(images), rows, row_labels, scale, pad)
    else:
        grid = _grid(to_uint8(images), rows, row_labels, scale, pad)
    _publish(lambda tmp: grid.save(tmp, format="PNG"), path, ".png")


def _publish(write, path: str, suffix: str) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
