"""Procedural clips of moving coloured shapes: the training data of ``embedded:clips``.

Every clip is 8 frames of 32x32 RGB: one saturated shape (circle, square, triangle, plus) in one
of four colours doing one of four motions over the clip — sliding across the frame, rotating,
growing, or changing colour (to the next colour of the palette) — on a textured background whose
stripes drift. The class is ``motion x shape x colour`` (64 classes; for a colour change the
starting colour). Start position, size, tilt, speed, direction and the background (grey level,
tint, gradient, stripe orientation, frequency and drift) are random, so that the flow from noise
to data is curved and cutting sampling steps costs fidelity, as on Wan.

Clips are generated on the fly, vectorised in numpy, and fully determined by a seed::

    >>> clips, labels = make_batch(seed=0, batch_size=4)
    >>> clips.shape, clips.dtype, labels.shape
    ((4, 3, 8, 32, 32), dtype('float32'), (4,))
"""

from __future__ import annotations

import numpy as np

from hasten.embedded.shapes.data import (COLOURS, IMAGE_SIZE, MAX_TILT, SHAPES, _shape_distance, seeded_batch,
                                         seeded_stream)

FRAMES = 8
MOTIONS = ("sliding", "rotating", "growing", "recolouring")
FACTORS = ("motion", "colour", "shape")  # the words of a class name, in order
CLASS_NAMES = tuple(f"{motion} {colour} {shape}" for motion in MOTIONS for shape in SHAPES for colour in COLOURS)
NUM_CLASSES = len(CLASS_NAMES)
_PALETTE = np.asarray(list(COLOURS.values()), dtype=np.float32)


def split_label(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(motion, shape, colour) indices of class indices."""
    labels = np.asarray(labels, dtype=np.int64)
    per_motion = len(SHAPES) * len(COLOURS)
    return labels // per_motion, (labels % per_motion) // len(COLOURS), labels % len(COLOURS)


def render(labels: np.ndarray, rng: np.random.Generator, frames: int = FRAMES) -> np.ndarray:
    """Render one clip per label with randomness drawn from ``rng``: (B, 3, F, 32, 32) in [-1, 1]."""
    motion, shape_ids, colour_ids = split_label(labels)
    batch = motion.shape[0]
    coords = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    py, px = np.meshgrid(coords, coords, indexing="ij")
    py, px = py[None, None], px[None, None]  # (1, 1, H, W)
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32)[None, :, None, None]  # (1, F, 1, 1)

    def draw(low, high, shape=()):
        return rng.uniform(low, high, size=(batch, *shape)).astype(np.float32)

    def per_clip(x):  # (B,) -> (B, 1, 1, 1), broadcast over frames and pixels
        return x[:, None, None, None]

    # background: base colour, gradient, stripes drifting across the clip
    grey = draw(0.25, 0.75)[:, None]
    base = np.clip(grey + draw(-0.12, 0.12, (3,)), 0.0, 1.0)[:, :, None, None, None]  # (B, 3, 1, 1, 1)
    g_angle, s_angle = draw(0, 2 * np.pi), draw(0, np.pi)
    g_amp, s_amp = draw(0.0, 0.25), draw(0.0, 0.18)
    freq, phase, drift = draw(1.0, 4.0), draw(0, 2 * np.pi), draw(-np.pi, np.pi)
    u, v = (px - 16) / 32, (py - 16) / 32
    grad = np.cos(per_clip(g_angle)) * u + np.sin(per_clip(g_angle)) * v
    proj = np.cos(per_clip(s_angle)) * u + np.sin(per_clip(s_angle)) * v
    stripes = np.sin(2 * np.pi * per_clip(freq) * proj + per_clip(phase) + per_clip(drift) * t)
    texture = per_clip(g_amp) * grad + per_clip(s_amp) * stripes  # (B, F, H, W)
    stripe_colour = draw(-1.0, 1.0, (3,)) * 0.5 + 1.0
    clip = base + texture[:, None] * stripe_colour[:, :, None, None, None]  # (B, 3, F, H, W)

    # foreground: the class's shape, its motion over the clip
    size0 = draw(6.0, 9.5)
    grow = np.where(motion == 2, draw(1.35, 1.6), 1.0).astype(np.float32)
    size = per_clip(size0) * (1 + (per_clip(grow) - 1) * t)  # (B, F, 1, 1)
    margin = 0.8 * size0 * grow
    cx0 = rng.uniform(margin, IMAGE_SIZE - margin).astype(np.float32)
    cy0 = rng.uniform(margin, IMAGE_SIZE - margin).astype(np.float32)
    heading, distance = draw(0, 2 * np.pi), draw(7.0, 11.0)
    sliding = motion == 0
    # a sliding shape crosses the frame: its path is centred so that it stays inside
    cx0 = np.where(sliding, 16 - 0.5 * distance * np.cos(heading), cx0)
    cy0 = np.where(sliding, 16 - 0.5 * distance * np.sin(heading), cy0)
    cx = per_clip(cx0) + per_clip(np.where(sliding, distance * np.cos(heading), 0)) * t
    cy = per_clip(cy0) + per_clip(np.where(sliding, distance * np.sin(heading), 0)) * t
    spin = np.where(motion == 1, draw(0.6, 1.2) * np.sign(draw(-1, 1)), 0.0).astype(np.float32)
    rot = per_clip(draw(-MAX_TILT, MAX_TILT)) + per_clip(spin) * t
    dx, dy = px - cx, py - cy
    cos, sin = np.cos(rot), np.sin(rot)
    qx, qy = cos * dx + sin * dy, -sin * dx + cos * dy  # (B, F, H, W)
    dist = np.empty((batch, frames, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for shape in range(len(SHAPES)):
        rows = shape_ids == shape
        if rows.any():
            dist[rows] = _shape_distance(shape, qx[rows], qy[rows], size[rows])
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[:, None]  # (B, 1, F, H, W)
    start = _PALETTE[colour_ids] * draw(0.85, 1.05)[:, None] + draw(-0.04, 0.04, (3,))
    end = np.where((motion == 3)[:, None], _PALETTE[(colour_ids + 1) % len(COLOURS)], start)
    colour = start[:, :, None] + (end - start)[:, :, None] * t.reshape(1, 1, frames)  # (B, 3, F)
    clip = (1 - alpha) * clip + alpha * np.clip(colour, 0, 1)[:, :, :, None, None]
    return (np.clip(clip, 0.0, 1.0) * 2 - 1).astype(np.float32)


def make_batch(seed: int, batch_size: int, labels: np.ndarray | None = None):
    """A batch fully determined by ``seed``: (clips (B, 3, F, 32, 32) in [-1, 1], labels (B,))."""
    return seeded_batch(render, NUM_CLASSES, seed, batch_size, labels)


def batches(seed: int, batch_size: int, start: int = 0):
    """Endless stream of batches; a resumed run continues with exactly the batches it would have seen."""
    return seeded_stream(make_batch, seed, batch_size, start)
