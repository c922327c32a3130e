"""Analytic FLOPs of one model call, per row, as a function of the knob levels.

The counts come from the model's own layer shapes: one traced forward at batch 1 records, per
transformer block, the FLOPs of every linear layer and the shape of every attention call (and the
FLOPs outside the blocks: embedders, final norm and projection). From those, the cost of a call
with any cache-reuse level and sparse-attention keep ratio is arithmetic, no timing involved.
:mod:`hasten.bench.knobs` checks these fractions against measured time.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> import torch
    >>> model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
    ...                                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
    ...                                pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    >>> cost = StepCost.trace(model, image_size=8, channels=1, text_tokens=2, token_dim=16, pooled_dim=16)
    >>> round(cost.fraction(cache_level=0, keep=1.0), 3)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hasten.models.families import family_of
from hasten.knobs import SparseLayout, _attention_modules, sdpa_arguments


@dataclass
class StepCost:
    """FLOPs per row of one model call (one CFG branch).

    Attributes:
        overhead: FLOPs outside the transformer blocks.
        linear: per block, FLOPs of its linear layers.
        attention: per block, (heads, queries, keys, head_dim, sparse) of each attention call;
            ``sparse`` marks the calls of the attention modules sparse attention acts on (a text
            cross-attention, Wan's ``attn2``, stays dense).
        text_len: text tokens inside joint attention (they stay dense under sparse attention; 0
            for a family whose sparsified attention sees image/video tokens only).
        reuse_from: first reused block for each cache-reuse level (see ``KnobState``).
    """

    overhead: float
    linear: list[float]
    attention: list[list[tuple[int, int, int, int, bool]]]
    text_len: int
    reuse_from: tuple[int, ...] = field(default=())

    def __post_init__(self):
        n = len(self.linear)
        if not self.reuse_from:
            self.reuse_from = (n, max(1, n // 2), 1)

    @classmethod
    @torch.no_grad()
    def trace(cls, transformer, image_size: int, channels: int, text_tokens: int, token_dim: int,
              pooled_dim: int, frames: int = 0, width: int | None = None) -> "StepCost":
        """Count the FLOPs of one batch-1 forward of ``transformer`` at this resolution (``image_size``
        x ``width``, square by default, and ``frames`` latent frames for a video family)."""
        family = family_of(transformer)
        weight = next(transformer.parameters())
        like = dict(device=weight.device, dtype=weight.dtype)  # e.g. a bf16 FLUX.1-dev on a GPU
        size = (image_size, image_size if width is None else width)
        shape = (1, channels, frames, *size) if frames else (1, channels, *size)
        x, sigma = torch.zeros(shape, **like), torch.full((1,), 0.5, **like)
        tokens, pooled = torch.zeros(1, text_tokens, token_dim, **like), torch.zeros(1, pooled_dim, **like)
        return cls.trace_call(transformer, lambda: family.velocity(transformer, x, sigma, tokens, pooled), text_tokens)

    @classmethod
    @torch.no_grad()
    def trace_call(cls, transformer, call: Callable[[], object], text_tokens: int) -> "StepCost":
        """Count the FLOPs of ``call()``, one batch-1 forward of ``transformer`` with any inputs
        (how :func:`hasten.accelerate` costs a pipeline's own calls)."""
        family = family_of(transformer)
        blocks = family.blocks(transformer)
        counter = _FlopCounter(len(blocks))
        handles = []
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(lambda m, a, i=i: counter.enter(i)))
            handles.append(block.register_forward_hook(lambda m, a, o: counter.leave()))
            for attn in _attention_modules(block, family):
                handles.append(attn.register_forward_pre_hook(lambda m, a: counter.sparse_scope(True)))
                handles.append(attn.register_forward_hook(lambda m, a, o: counter.sparse_scope(False)))
        try:
            with counter:
                call()
        finally:
            for h in handles:
                h.remove()
        return cls(overhead=counter.overhead, linear=counter.linear, attention=counter.attention,
                   text_len=text_tokens if family.joint_attention else 0)

    def attention_flops(self, block: int, keep: float = 1.0) -> float:
        """FLOPs of block ``block``'s attention (QK^T and AV) with ``keep`` of the image key blocks."""
        total = 0.0
        for heads, n, keys, d, sparse in self.attention[block]:
            if keep >= 1.0 or not sparse:
                total += 4.0 * heads * n * keys * d
                continue
            layout = SparseLayout.for_tokens(n - self.text_len)
            t, ni = self.text_len + layout.tail, layout.tiled_tokens  # dense: the text and the untiled tail
            kept = layout.kept_blocks(keep) * layout.key_block
            total += 4.0 * heads * d * (t * n + ni * (t + kept))
            total += 2.0 * heads * d * layout.query_blocks * layout.key_blocks  # block scores
        return total

    def block_flops(self, block: int, keep: float = 1.0) -> float:
        return self.linear[block] + self.attention_flops(block, keep)

    def full(self) -> float:
        """FLOPs of a plain model call."""
        return self.overhead + sum(self.block_flops(i) for i in range(len(self.linear)))

    def flops(self, cache_level: int = 0, keep: float = 1.0) -> float:
        """FLOPs of one call that computes the blocks before ``reuse_from[cache_level]`` at ``keep``."""
        computed = self.reuse_from[cache_level]
        return self.overhead + sum(self.block_flops(i, keep) for i in range(computed))

    def fraction(self, cache_level: int = 0, keep: float = 1.0) -> float:
        """:meth:`flops` as a fraction of a plain call."""
        return self.flops(cache_level, keep) / self.full()

    def fractions(self, cache_levels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(rows,) float64 :meth:`fraction` of each row's (cache level, keep)."""
        return torch.tensor([self.fraction(int(c), float(k)) for c, k in zip(cache_levels, keep)],
                            dtype=torch.float64)


class _FlopCounter(TorchFunctionMode):
    """Counts linear/conv FLOPs and records attention shapes, attributed to the current block."""

    def __init__(self, num_blocks: int):
        super().__init__()
        self.block: int | None = None
        self.overhead = 0.0
        self.linear = [0.0] * num_blocks
        self.attention: list[list[tuple[int, int, int, int, bool]]] = [[] for _ in range(num_blocks)]
        self.in_sparse = False  # inside an attention module that sparse attention acts on

    def enter(self, i):
        self.block = i

    def leave(self):
        self.block = None

    def sparse_scope(self, inside: bool):
        self.in_sparse = inside

    def _add(self, flops: float):
        if self.block is None:
            self.overhead += flops
        else:
            self.linear[self.block] += flops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _LAYERS:
            self._add(layer_flops(func, args, kwargs, out))
        elif func is F.scaled_dot_product_attention:
            call = sdpa_arguments(args, kwargs)
            q, k = call["query"], call["key"]
            heads = math.prod(q.shape[1:-2])
            if self.block is None:
                self.overhead += 4.0 * heads * q.shape[-2] * k.shape[-2] * q.shape[-1]
            else:
                self.attention[self.block].append((heads, q.shape[-2], k.shape[-2], q.shape[-1], self.in_sparse))
        return out


class ExecutedFlops(TorchFunctionMode):
    """Counts the FLOPs that really execute inside ``with counter:`` (linear, conv, attention, matmul).

    Method-agnostic: whatever hooks a cache library puts on the model (block skips, attention
    reuse, forecasts), only the layers that actually run are counted, so a training-free
    accelerator and a hasten policy are costed the same way. Elementwise work (norms,
    activations, a forecast's polynomial) is not counted, for every method alike. Conventions
    are :class:`StepCost`'s: a linear layer 2 * rows * in * out, attention 4 * heads * queries *
    keys * head_dim (QK^T and AV), so a full call counts ``StepCost.full()`` per row.

    Example:
        >>> import torch
        >>> with ExecutedFlops() as counter:
        ...     _ = torch.nn.functional.linear(torch.zeros(3, 4), torch.zeros(5, 4))
        >>> counter.flops
        120.0
    """

    def __init__(self):
        super().__init__()
        self.flops = 0.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _LAYERS:
            self.flops += layer_flops(func, args, kwargs, out)
        elif func is F.scaled_dot_product_attention:
            call = sdpa_arguments(args, kwargs)
            q, k = call["query"], call["key"]
            self.flops += 4.0 * math.prod(q.shape[:-1]) * k.shape[-2] * q.shape[-1]
        elif func in _MATMULS and isinstance(out, torch.Tensor) and len(args) >= 2:
            a = args[0]
            self.flops += 2.0 * out.numel() * (a.shape[-1] if a.dim() else 1)
        return out


def layer_flops(func, args, kwargs, out) -> float:
    """FLOPs of one ``F.linear`` (2 * rows * in * out) or ``F.conv2d`` / ``F.conv3d`` (2 * outputs * in * kernel) call."""
    w = args[1] if len(args) > 1 else kwargs["weight"]
    if func is F.linear:
        x = args[0] if args else kwargs["input"]
        return 2.0 * (x.numel() // w.shape[1]) * w.shape[0] * w.shape[1]
    return 2.0 * out.numel() * math.prod(w.shape[1:])


_LAYERS = (F.linear, F.conv2d, F.conv3d)
_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.mm)


def measure_time_fractions(generator, rows: int = 1, repeats: int = 7) -> list[list[float]]:
    """Measured time of one knob-driven model call, by (cache-reuse level, sparse-attention level),
    relative to a full call, with ``rows`` samples per call (median of interleaved repeats).

    What a cost in wall-clock is built from: at small batches, fixed per-call work (embedders,
    RoPE, output layers, hook bookkeeping) makes partial calls cost more time than FLOPs.
    """
    import statistics
    import time

    import numpy as np

    def sync():  # GPU kernels run asynchronously: time them to completion
        if generator.device.type == "cuda":
            torch.cuda.synchronize(generator.device)

    rollout = generator.start([0] * rows, list(range(rows)))
    generator.step(rollout, np.zeros((rows, 3), dtype=np.int64))  # the first call fills the cache
    levels = [(c, s) for c in range(3) for s in range(3)]
    times: dict[tuple[int, int], list[float]] = {level: [] for level in levels}
    for repeat in range(repeats + 1):  # the first round warms up
        for c, s in levels:
            rollout.index[:] = 1
            sync()
            start = time.perf_counter()
            generator.step(rollout, np.tile(np.array([0, c, s]), (rows, 1)))
            sync()
            if repeat:
                times[(c, s)].append(time.perf_counter() - start)
    full = statistics.median(times[(0, 0)])
    return [[statistics.median(times[(c, s)]) / full for s in range(3)] for c in range(3)]


def time_spent(decisions, table, num_steps: int):
    """(B,) estimated time spent, as a fraction of the full-compute trajectory, from applied levels.

    Args:
        decisions: (B, num_steps, 3) applied (skip, cache, sparse) levels, -1 where no call was made.
        table: (3, 3) time fractions by (cache level, sparse level), from :func:`measure_time_fractions`.
    """
    import numpy as np

    decisions = np.asarray(decisions)
    calls = decisions[..., 0] >= 0
    per_call = np.asarray(table, dtype=np.float64)[decisions[..., 1].clip(0), decisions[..., 2].clip(0)]
    return (per_call * calls).sum(axis=1) / num_steps
