"""The learning-rate schedule of the embedded models' recipes: linear warm-up, then cosine decay,
ended by a step count or by a wall-clock limit, whichever comes first."""

from __future__ import annotations

import math


def run_progress(step: int, steps: int, elapsed_s: float, max_minutes: float) -> float:
    """Share of the run done: by steps, or by wall clock when ``max_minutes`` is set, whichever is
    further (so the run and its decay end at the deadline however fast or loaded the machine)."""
    done = step / steps
    if max_minutes:
        done = max(done, elapsed_s / (max_minutes * 60))
    return min(done, 1.0)


def lr_factor(step: int, elapsed_s: float, steps: int, warmup: int, max_minutes: float, floor: float = 0.0) -> float:
    """Multiplier of the peak learning rate: ``(step + 1) / warmup`` during the warm-up, then a
    cosine from 1 down to ``floor`` over the rest of the run's progress (:func:`run_progress`)."""
    if step < warmup:
        return (step + 1) / warmup
    warm = warmup / steps
    progress = (run_progress(step, steps, elapsed_s, max_minutes) - warm) / max(1e-9, 1 - warm)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return floor + (1 - floor) * cosine
