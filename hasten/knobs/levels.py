"""The knobs and their levels: one :class:`Knob` per knob, :data:`KNOBS` in decision order, and
:func:`validate_decisions` for (step_skip, cache_reuse, sparse_attention) level arrays.

Example:
    >>> [knob.name for knob in KNOBS]
    ['step_skip', 'cache_reuse', 'sparse_attention']
    >>> validate_decisions([[1, 0, 2]]).tolist()
    [[1, 0, 2]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hasten.errors import HastenError


@dataclass(frozen=True)
class Knob:
    """One knob: its name and the values of its levels (level 0 = no acceleration)."""

    name: str
    levels: tuple
    meaning: str


STEP_SKIP = Knob("step_skip", (0, 1, 2, 3, 5, 7), "extra schedule intervals jumped after the model call")
CACHE_REUSE = Knob("cache_reuse", ("none", "deep_half", "all_but_first"),
                   "blocks whose residual is reused from the row's last full computation")
SPARSE_ATTENTION = Knob("sparse_attention", (1.0, 0.5, 0.25), "fraction of image key blocks kept")
KNOBS: tuple[Knob, ...] = (STEP_SKIP, CACHE_REUSE, SPARSE_ATTENTION)


def validate_decisions(decisions, rows: int | None = None) -> np.ndarray:
    """Check an integer array (..., 3) of (step_skip, cache_reuse, sparse_attention) levels.

    Returns it as int64; raises :class:`HastenError` naming the knob and the allowed levels.
    """
    array = np.asarray(decisions.detach().cpu() if isinstance(decisions, torch.Tensor) else decisions)
    if array.ndim == 0 or array.shape[-1] != len(KNOBS):
        raise HastenError(f"decisions of shape {tuple(array.shape)}: expected (..., {len(KNOBS)}) levels of "
                          f"({', '.join(k.name for k in KNOBS)})")
    if rows is not None and (array.ndim < 2 or array.shape[0] != rows):
        raise HastenError(f"decisions of shape {tuple(array.shape)}: expected ({rows}, ..., {len(KNOBS)}), "
                          "one row per sample")
    if array.dtype.kind not in "biuf":
        raise HastenError(f"decisions of dtype {array.dtype}: expected integer levels")
    for j, knob in enumerate(KNOBS):
        column = array[..., j]
        allowed = f"levels 0..{len(knob.levels) - 1} ({', '.join(map(str, knob.levels))})"
        if array.dtype.kind == "f" and not np.all(np.isfinite(column)):
            raise HastenError(f"{knob.name}: decisions contain NaN or inf; expected {allowed}")
        if np.any(column != np.round(column)) or column.min(initial=0) < 0 or column.max(initial=0) >= len(knob.levels):
            bad = column[(column != np.round(column)) | (column < 0) | (column >= len(knob.levels))].flat[0]
            raise HastenError(f"{knob.name}: level {bad} is out of range; expected {allowed}")
    return array.astype(np.int64)
