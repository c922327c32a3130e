"""The three acceleration knobs, applied per row on a frozen diffusers DiT.

- Step-Skip (sampler level, see :mod:`hasten.models.adapter`): a row jumps over ``k`` further
  schedule intervals (0, 1, 2, 3, 5 or 7) with its current or forecast model output.
- Cache-Reuse: a row runs only its leading blocks and adds the residual of the remaining blocks
  cached at its last full computation (levels: all blocks / reuse the deeper half / reuse all but
  the first block).
- Sparse-Attention: inside computed blocks, each image query block attends to the text tokens and
  to the top ``keep`` fraction of image key blocks, ranked by pooled ``q . k``; keys are gathered,
  so FLOPs and time really drop.

Rows that skip a block are not sent through it: a block hook gathers the computing rows, calls the
block on them and scatters the result back. Everything attaches through diffusers' own machinery
(``HookRegistry`` hooks on the blocks, wrapped attention processors) and :func:`detach_knobs`
restores the transformer exactly.

Example:
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
    ...                                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
    ...                                pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    >>> state = attach_knobs(model)
    >>> state.num_blocks, state.reuse_from
    (2, (2, 1, 1))
    >>> detach_knobs(model)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from diffusers.hooks import HookRegistry, ModelHook
from torch.overrides import TorchFunctionMode

from hasten.errors import HastenError
from hasten.models.families import DiTFamily, family_of

HOOK_NAME = "hasten_knobs"


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
#: step_skip level -> schedule intervals jumped after the call (3, 5 and 7 were added after the first
#: policies: with the noise-space forecast a few calls far apart beat uniform steps by 5-7 dB)
SKIP_INTERVALS = torch.tensor(STEP_SKIP.levels)


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


#: what a forecasting sampler extrapolates over skipped steps (see :class:`OutputForecast`)
FORECAST_SPACES = ("velocity", "noise")


def forecast_space(forecast) -> str | None:
    """A sampler's ``forecast`` argument as a space: False/None -> None (plain reuse), True ->
    ``"velocity"`` (what policies trained before the choice existed used), or the space itself."""
    if forecast is None or forecast is False:
        return None
    if forecast is True:
        return "velocity"
    if forecast in FORECAST_SPACES:
        return forecast
    raise HastenError(f"forecast={forecast!r}: expected False, True or one of {', '.join(FORECAST_SPACES)}")


class OutputForecast:
    """Each row's last model output, the noise level it was computed at and its change per unit
    noise level since the row's call before: what a skipped step uses instead of a model call.

    :meth:`at` extrapolates to first order in the noise level (TaylorSeer's forecast of a model's
    output, with divided differences in sigma rather than in step counts) or, with
    ``first_order=False``, returns the last output again (plain reuse; no slope is kept).

    ``space="noise"`` (for a flow-matching velocity ``v = noise - x0``, given the sample ``x`` of
    each call) extrapolates the model's noise prediction ``x + (1 - sigma) v`` instead of ``v``
    and turns the forecast back into a velocity at the sample it is used on. Early in sampling the
    noise prediction changes least, and with several steps skipped the velocity then follows the
    sample as the reference sampler's does; on the embedded generator this gains 1-3 dB PSNR at
    2-3x over extrapolating the velocity (at order 0 both are the same Euler step).

    Example:
        >>> f = OutputForecast(1)
        >>> f.update(torch.tensor([0]), torch.tensor([1.0]), torch.tensor([[2.0]]))
        >>> f.update(torch.tensor([0]), torch.tensor([0.5]), torch.tensor([[1.0]]))
        >>> f.at(torch.tensor([0]), torch.tensor([0.25]))
        tensor([[0.5000]])
    """

    def __init__(self, rows: int, first_order: bool = True, space: str = "velocity"):
        if space not in FORECAST_SPACES:
            raise HastenError(f"forecast space {space!r}: expected one of {', '.join(FORECAST_SPACES)}")
        self.rows = rows
        self.first_order = first_order
        self.space = space
        self.all_rows = torch.arange(rows)
        # each row's last two outputs and their noise levels; the slope is only worked out for the
        # rows that forecast (most calls only store, and at batch 1 every tensor op shows in the time)
        self.output: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None
        self.sigma = torch.zeros(rows, dtype=torch.float64)
        self.previous_sigma = torch.zeros(rows, dtype=torch.float64)
        self.seen = torch.zeros(rows, dtype=torch.bool)
        self.previous_seen = torch.zeros(rows, dtype=torch.bool)

    def update(self, ids: torch.Tensor, sigma: torch.Tensor, output: torch.Tensor,
               x: torch.Tensor | None = None) -> None:
        """Rows ``ids`` computed ``output`` (len(ids), ...) at noise levels ``sigma`` (len(ids),),
        on samples ``x`` (needed in the noise space)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(ids.shape)
        output = self._stored(output.detach(), sigma, x)
        if self.output is None:
            self.output = output.new_zeros((self.rows, *output.shape[1:]))
            self.previous = torch.zeros_like(self.output) if self.first_order else None
        if self.first_order:
            self.previous_sigma[ids] = self.sigma[ids]
            self.previous_seen[ids] = self.seen[ids]
        if torch.equal(ids, self.all_rows):  # every row, in order: swap tensors instead of copying rows
            if self.first_order:
                self.previous = self.output
            self.output = output if self.space == "noise" else output.clone()  # (noise: already a new tensor)
        else:
            if self.first_order:
                self.previous[ids] = self.output[ids]
            self.output[ids] = output
        self.sigma[ids] = sigma
        self.seen[ids] = True

    def at(self, ids: torch.Tensor, sigma, x: torch.Tensor | None = None) -> torch.Tensor:
        """The rows' output forecast at noise levels ``sigma`` (their last output at order 0), as a
        velocity at samples ``x`` in the noise space."""
        if self.output is None or not bool(self.seen[ids].all()):
            raise HastenError("a row forecasts its model output before its first model call")
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(ids.shape)
        output = self.output[ids]
        if self.first_order:
            # the change per unit noise level between the last two calls (none before a second one)
            last = self.sigma[ids]
            before = self.previous_seen[ids] & (last != self.previous_sigma[ids])
            step = torch.where(before, last - self.previous_sigma[ids], torch.ones_like(last))
            scale = torch.where(before, (sigma - last) / step, torch.zeros_like(last))
            output = output + self._column(scale, output) * (output - self.previous[ids])
        if self.space == "velocity":
            return output
        x = self._sample(x)
        return ((output - x.float()) / self._column(1.0 - sigma, output)).to(x.dtype)

    def forget(self, ids: torch.Tensor) -> None:
        self.seen[ids] = False

    def _stored(self, output: torch.Tensor, sigma: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        if self.space == "velocity":
            return output
        x = self._sample(x, output)
        output = output.float()  # in the model's dtype, (noise - x) / (1 - sigma) amplifies rounding early on
        return x.float() + self._column(1.0 - sigma, output) * output

    def _sample(self, x: torch.Tensor | None, like: torch.Tensor | None = None) -> torch.Tensor:
        if x is None:
            raise HastenError("a noise-space forecast needs the sample each output belongs to (x)")
        if like is not None and x.shape != like.shape:
            raise HastenError(f"a noise-space forecast needs samples shaped like the model's outputs; got "
                              f"{tuple(x.shape)} for outputs {tuple(like.shape)}")
        return x

    @staticmethod
    def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(rows,) -> (rows, 1, ...) broadcastable against ``like``, on its device (and dtype, for numbers)."""
        dtype = values.dtype if values.dtype == torch.bool else like.dtype
        return values.to(like.device, dtype).view(-1, *([1] * (like.ndim - 1)))


class RowCache:
    """Per-row cached residuals of the cache-reuse knob, one tensor per reuse boundary.

    Owned by a rollout, so several rollouts can share one attached transformer.
    """

    def __init__(self, max_rows: int, forecast: bool = False):
        self.max_rows = max_rows
        self.all_rows = torch.arange(max_rows)
        self.forecast = bool(forecast)  # reuse the residual extrapolated to the call's noise level (first order)
        self.residuals: dict[int, OutputForecast] = {}
        self.filled = torch.zeros(max_rows, dtype=torch.bool)
        # The first block's output at each row's last full computation, and the relative L1 change
        # of that output at the row's latest call (the signal of TeaCache / FBCache).
        self.first_output: torch.Tensor | None = None
        self.change = torch.zeros(max_rows, dtype=torch.float32)

    def forget(self, ids: torch.Tensor) -> None:
        """Drop what is cached for rows ``ids`` (their next call computes every block)."""
        self.filled[ids] = False
        self.change[ids] = 0.0

    def record_first_block(self, ids: torch.Tensor, output: torch.Tensor, full: torch.Tensor) -> None:
        """Relative change of block 0's output ``(rows, tokens, dim)`` since each row's last full call."""
        output = output.detach().float()
        if self.first_output is None:
            self.first_output = output.new_zeros((self.max_rows, *output.shape[1:]))
        whole = torch.equal(ids, self.all_rows)  # every row, in order: no gathers
        previous = self.first_output if whole else self.first_output[ids]
        change = (output - previous).abs().mean(dim=(1, 2)) / previous.abs().mean(dim=(1, 2)).clamp_min(1e-6)
        self.change[ids] = torch.where(self.filled[ids], change.cpu(), torch.zeros_like(change.cpu()))
        if whole and bool(full.all()):
            self.first_output = output.clone()
        elif bool(full.any()):
            self.first_output[ids[full]] = output[full.to(output.device)]

    def store(self, boundary: int, ids: torch.Tensor, residual: torch.Tensor, sigma: torch.Tensor) -> None:
        """The residual of the blocks from ``boundary`` on, of full rows ``ids`` at noise levels ``sigma``."""
        if boundary not in self.residuals:
            self.residuals[boundary] = OutputForecast(self.max_rows, first_order=self.forecast)
        self.residuals[boundary].update(ids, sigma, residual)

    def residual(self, boundary: int, ids: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The cached residual of rows ``ids`` (forecast at ``sigma`` with ``forecast``)."""
        return self.residuals[boundary].at(ids, sigma)


class KnobState:
    """State shared by the hooks of one attached transformer.

    Before each knob-driven transformer call the sampler gives the ids of the rows in the call (CFG
    branches are distinct rows), their rollout's :class:`RowCache` and each row's cache-reuse and
    sparse-attention levels; :meth:`clear_call` afterwards makes the hooks inert again.
    """

    def __init__(self, family: DiTFamily, num_blocks: int):
        self.family = family
        self.num_blocks = num_blocks
        # first block whose residual is reused, per cache level; num_blocks = compute everything
        self.reuse_from = (num_blocks, max(1, num_blocks // 2), 1)
        self.boundaries = sorted(set(self.reuse_from) - {num_blocks})
        self.cache: RowCache | None = None
        self.row_ids: torch.Tensor | None = None
        self.start: torch.Tensor | None = None  # (rows,) first reused block per row of the call
        self.keep: torch.Tensor | None = None  # (rows,) kept fraction of key blocks
        self.sigma: torch.Tensor | None = None  # (rows,) noise level of the call
        self.keep_now: torch.Tensor | None = None  # keep of the rows inside the current block call
        self.text_len = 0
        self.workspace = Workspace()
        self._boundary_inputs: dict[int, torch.Tensor] = {}
        self.registrations: list[HookRegistration] = []  # the block hooks, for detach_knobs

    def set_call(self, cache: RowCache, row_ids: torch.Tensor, cache_levels: torch.Tensor,
                 keep: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Prepare the next transformer call; returns the effective cache levels.

        ``sigma``: the noise level of the call (a number or one per row), where a forecasting
        cache extrapolates its residuals to. A row without a cached residual yet (its first call)
        computes every block.
        """
        if row_ids.numel() and int(row_ids.max()) >= cache.max_rows:
            raise HastenError(f"row id {int(row_ids.max())} outside the rollout's cache of {cache.max_rows} rows")
        cache_levels = torch.where(cache.filled[row_ids], cache_levels, torch.zeros_like(cache_levels))
        self.cache = cache
        self.row_ids = row_ids
        self.start = torch.tensor(self.reuse_from)[cache_levels]
        self.keep = keep.float()
        self.sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(row_ids.shape).clone()
        self._boundary_inputs.clear()
        return cache_levels

    def clear_call(self) -> None:
        self.cache = self.row_ids = self.start = self.keep = self.keep_now = self.sigma = None
        self._boundary_inputs.clear()


class KnobBlockHook(ModelHook):
    """A diffusers ``ModelHook`` on block ``index``: runs only the rows that compute this block."""

    def __init__(self, index: int, state: KnobState):
        super().__init__()
        self.index = index
        self.state = state

    def new_forward(self, module, *args, **kwargs):
        state, i = self.state, self.index
        original = self.fn_ref.original_forward
        if args:
            raise HastenError(f"block {i}: expected keyword arguments (hidden_states=..., ...), "
                              "as diffusers' FluxTransformer2DModel and SD3Transformer2DModel call blocks")
        if state.start is None:  # not inside a knob-driven call: behave as the plain block
            return original(*args, **kwargs)
        hidden, context = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        state.text_len = context.shape[1]
        full = state.start == state.num_blocks
        if i in state.boundaries and bool(full.any()):
            state._boundary_inputs[i] = hidden if bool(full.all()) else hidden[full]
        compute = state.start > i
        if bool(compute.all()):
            state.keep_now = state.keep
            context, hidden = original(**kwargs)
        elif bool(compute.any()):
            rows = compute.nonzero().squeeze(1)
            sub = dict(kwargs)
            for key in ("hidden_states", "encoder_hidden_states", "temb"):
                sub[key] = kwargs[key][rows]
            state.keep_now = state.keep[rows]
            sub_context, sub_hidden = original(**sub)
            rows = rows.to(hidden.device)
            hidden = hidden.index_copy(0, rows, sub_hidden)
            context = None if sub_context is None else context.index_copy(0, rows, sub_context)
        state.keep_now = None
        if i == 0:  # every row computes block 0 (no cache level reuses it)
            state.cache.record_first_block(state.row_ids, hidden, full)
        if i == state.num_blocks - 1:
            hidden = self._finish(hidden, full)
        return context, hidden

    def _finish(self, hidden, full):
        """Last block: cache the residuals of full rows; add cached residuals to reusing rows."""
        state, cache = self.state, self.state.cache
        ids = state.row_ids
        if bool(full.any()):
            every = bool(full.all())  # then no mask copies
            rows, done, sigma = (ids, hidden, state.sigma) if every else (ids[full], hidden[full], state.sigma[full])
            for b in state.boundaries:
                cache.store(b, rows, done - state._boundary_inputs[b], sigma)
            cache.filled[rows] = True
        reuse = ~full
        if bool(reuse.any()):
            hidden = hidden.clone()
            for b in state.boundaries:
                rows = (state.start == b).nonzero().squeeze(1)
                if rows.numel():
                    hidden[rows] = hidden[rows] + cache.residual(b, ids[rows], state.sigma[rows])
        return hidden


# ------------------------------------------------------------------------------ sparse attention
QUERY_BLOCKS_PER_KEY_BLOCK = 4


@dataclass(frozen=True)
class SparseLayout:
    """Block geometry of sparse attention over ``image_tokens`` image tokens.

    Key blocks of ``key_block`` tokens (64 at large token counts, smaller so that there are at
    least 8); query blocks of ``query_block`` = up to 4 key blocks (larger query blocks keep the
    attention kernel efficient; the selection stays at key-block granularity).

    Example:
        >>> SparseLayout.for_tokens(4096)
        SparseLayout(image_tokens=4096, key_block=64, query_block=256)
        >>> SparseLayout.for_tokens(256).kept_blocks(0.25)
        2
    """

    image_tokens: int
    key_block: int
    query_block: int

    @classmethod
    def for_tokens(cls, image_tokens: int) -> "SparseLayout":
        size = 64
        while size > 8 and image_tokens // size < 8:
            size //= 2
        while size > 1 and image_tokens % size:
            size //= 2
        query = size
        key_blocks = image_tokens // size
        # a query block spans at most 4 key blocks, and at most a quarter of them (so that keep=0.25
        # is still a choice), and there are at least 2 query blocks
        while (query * 2 <= size * QUERY_BLOCKS_PER_KEY_BLOCK and (query * 2) // size <= key_blocks // 4
               and image_tokens % (query * 2) == 0 and image_tokens // (query * 2) >= 2):
            query *= 2
        return cls(image_tokens, size, query)

    @property
    def key_blocks(self) -> int:
        return self.image_tokens // self.key_block

    @property
    def query_blocks(self) -> int:
        return self.image_tokens // self.query_block

    def kept_blocks(self, keep: float) -> int:
        """Key blocks each query block attends to at ``keep``."""
        return max(self.query_block // self.key_block, min(self.key_blocks, int(round(keep * self.key_blocks))))


class Workspace:
    """Reusable flat buffers for gathered keys and values (fresh large allocations page-fault and
    would cost more than the gather itself)."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


def block_sparse_attention(q, k, v, text_len: int, text_first: bool, keep: float,
                           workspace: Workspace | None = None):
    """Attention in which each image query block sees the text tokens and its top image key blocks.

    Args:
        q, k, v: (B, H, N, d) with N = text_len + image tokens, text first or last.
        keep: fraction of image key blocks kept per query block (1.0 = dense attention).
        workspace: reusable buffers for the gathered keys/values.

    Text queries stay dense (they are few). Key blocks are ranked per query block by the dot
    product of mean-pooled query and key blocks; the key blocks covering the query block itself are
    always kept. The kept keys (and the text keys) are gathered into one contiguous buffer per query
    block, so the attention costs about ``keep`` of the dense image-image part.
    """
    if keep >= 1.0:
        return F.scaled_dot_product_attention(q, k, v)
    b, h, n, d = q.shape
    ni = n - text_len
    layout = SparseLayout.for_tokens(ni)
    bk, bq, nk, nq = layout.key_block, layout.query_block, layout.key_blocks, layout.query_blocks
    m = layout.kept_blocks(keep)
    start = text_len if text_first else 0
    text_start = 0 if text_first else ni
    bh = b * h
    q_image = q[:, :, start:start + ni].reshape(bh, nq, bq, d)
    k_pooled = k[:, :, start:start + ni].reshape(bh, nk, bk, d).mean(2)
    score = q_image.mean(2) @ k_pooled.transpose(-1, -2)  # (bh, nq, nk)
    own = torch.arange(nk, device=q.device) // (bq // bk) == torch.arange(nq, device=q.device)[:, None]
    score.masked_fill_(own, math.inf)
    chosen = score.topk(m, dim=-1).indices  # (bh, nq, m)
    # token indices into the flattened (bh * N) keys: the text tokens, then the kept blocks' tokens
    tokens = (chosen[..., None] * bk + torch.arange(bk, device=q.device)).flatten(-2) + start
    if text_len:
        text_tokens = torch.arange(text_start, text_start + text_len, device=q.device)
        tokens = torch.cat([text_tokens.expand(bh, nq, text_len), tokens], dim=-1)
    s = tokens.shape[-1]
    flat = (tokens + (torch.arange(bh, device=q.device) * n)[:, None, None]).reshape(-1)
    workspace = workspace or Workspace()
    k_sel = workspace.get("key", (bh * nq * s, d), k)
    v_sel = workspace.get("value", (bh * nq * s, d), v)
    torch.index_select(k.reshape(bh * n, d), 0, flat, out=k_sel)
    torch.index_select(v.reshape(bh * n, d), 0, flat, out=v_sel)
    out_image = F.scaled_dot_product_attention(q_image.reshape(bh * nq, 1, bq, d), k_sel.view(bh * nq, 1, s, d),
                                               v_sel.view(bh * nq, 1, s, d)).view(b, h, ni, d)
    if not text_len:
        return out_image
    out_text = F.scaled_dot_product_attention(q[:, :, text_start:text_start + text_len], k, v)
    parts = [out_text, out_image] if text_first else [out_image, out_text]
    return torch.cat(parts, dim=2)


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def sdpa_arguments(args, kwargs) -> dict:
    """The arguments of an ``F.scaled_dot_product_attention`` call by name, however it was called."""
    return {**dict(zip(_SDPA_ARGS, args)), **kwargs}


class _SparseSDPA(TorchFunctionMode):
    """Replaces ``F.scaled_dot_product_attention`` inside one processor call by the per-row sparse one."""

    def __init__(self, state: KnobState, keep: torch.Tensor):
        super().__init__()
        self.state = state
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        call = sdpa_arguments(args, kwargs)
        q, k, v = call.pop("query"), call.pop("key"), call.pop("value")
        extra = {key: value for key, value in call.items() if value is not None and value is not False
                 and not (isinstance(value, float) and value == 0.0)}
        if set(extra) - {"scale"} or extra.get("scale", q.shape[-1] ** -0.5) != q.shape[-1] ** -0.5:
            raise HastenError("sparse attention: the attention processor passed a mask or dropout; "
                              "only plain joint attention is supported")
        out = torch.empty_like(q)
        for value in torch.unique(self.keep).tolist():
            rows = (self.keep == value).nonzero().squeeze(1)
            out[rows] = block_sparse_attention(q[rows], k[rows], v[rows], self.state.text_len,
                                               self.state.family.text_first, value, self.state.workspace)
        return out


class SparseAttentionProcessor:
    """Wraps a block's own attention processor; with sparsity requested, its attention is sparse.

    The wrapped processor does every projection, norm and rotary embedding as before; only its call
    to ``F.scaled_dot_product_attention`` is replaced, per row, by :func:`block_sparse_attention`.
    """

    def __init__(self, inner, state: KnobState):
        self.inner = inner
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        extra = dict(kwargs)
        if encoder_hidden_states is not None:
            extra["encoder_hidden_states"] = encoder_hidden_states
        if attention_mask is not None:
            extra["attention_mask"] = attention_mask
        if image_rotary_emb is not None:
            extra["image_rotary_emb"] = image_rotary_emb
        keep = self.state.keep_now
        if keep is None or bool((keep >= 1.0).all()):
            return self.inner(attn, hidden_states, **extra)
        with _SparseSDPA(self.state, keep):
            return self.inner(attn, hidden_states, **extra)


# ------------------------------------------------------------------------------ attach / detach
def _attention_modules(block: nn.Module) -> list[nn.Module]:
    """The block's joint (text + image) attention; an image-only ``attn2`` (SD3.5) stays dense."""
    attn = getattr(block, "attn", None)
    return [attn] if attn is not None and hasattr(attn, "processor") else []


_MISSING = object()


@dataclass
class HookRegistration:
    """A diffusers ``ModelHook`` registered by hasten, and what its module looked like before."""

    module: nn.Module
    name: str
    had_registry: bool  # the module already had a ``HookRegistry`` (diffusers adds one in ``cache_context``)
    forward: object  # the module's own ``forward`` instance attribute before, or ``_MISSING``


def register_model_hook(module: nn.Module, hook: ModelHook, name: str) -> HookRegistration:
    """Register ``hook`` as ``name`` in ``module``'s diffusers ``HookRegistry``; see :func:`remove_model_hook`."""
    registration = HookRegistration(module, name, hasattr(module, "_diffusers_hook"),
                                    module.__dict__.get("forward", _MISSING))
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    return registration


def remove_model_hook(registration: HookRegistration) -> None:
    """Remove a hook of :func:`register_model_hook`.

    When no other hook remains, the module is left exactly as before: diffusers' ``remove_hook``
    would leave the class's ``forward`` behind as an instance attribute, and a registry created
    for this hook is deleted.
    """
    module = registration.module
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    registry.remove_hook(registration.name, recurse=False)
    if registry.hooks:
        return
    if registration.forward is _MISSING:
        module.__dict__.pop("forward", None)
    else:
        module.forward = registration.forward
    if not registration.had_registry:
        del module._diffusers_hook


def _invalidate_registry_cache(transformer: nn.Module) -> None:
    """A transformer's ``HookRegistry`` caches the registries of its blocks; adding or removing
    block hooks makes that list stale."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()


def attach_knobs(transformer: nn.Module) -> KnobState:
    """Attach the cache-reuse and sparse-attention knobs; returns the shared :class:`KnobState`.

    The hooks are inert (the plain block runs) unless a call was prepared with
    :meth:`KnobState.set_call`.
    """
    if getattr(transformer, "_hasten_knobs", None) is not None:
        raise HastenError("knobs are already attached to this transformer; detach_knobs() first")
    family = family_of(transformer)
    blocks = family.blocks(transformer)
    state = KnobState(family, len(blocks))
    for i, block in enumerate(blocks):
        state.registrations.append(register_model_hook(block, KnobBlockHook(i, state), HOOK_NAME))
        for attn in _attention_modules(block):
            attn.processor = SparseAttentionProcessor(attn.processor, state)
    transformer._hasten_knobs = state
    _invalidate_registry_cache(transformer)
    return state


def detach_knobs(transformer: nn.Module) -> None:
    """Remove every hook and processor wrapper :func:`attach_knobs` added (the transformer is then
    exactly as before: same forwards, registries and attention processors)."""
    state = getattr(transformer, "_hasten_knobs", None)
    if state is None:
        return
    for registration in state.registrations:
        remove_model_hook(registration)
    for block in state.family.blocks(transformer):
        for attn in _attention_modules(block):
            if isinstance(attn.processor, SparseAttentionProcessor):
                attn.processor = attn.processor.inner
    del transformer._hasten_knobs
    _invalidate_registry_cache(transformer)


@contextlib.contextmanager
def knobs_attached(transformer: nn.Module):
    """``with knobs_attached(model) as state: ...`` — attached inside, exactly as before after."""
    state = attach_knobs(transformer)
    try:
        yield state
    finally:
        detach_knobs(transformer)
