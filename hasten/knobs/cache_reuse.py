"""Cache-Reuse: a row runs only its leading blocks and adds the residual of the remaining blocks
cached at its last full computation.

:class:`RowCache` holds each rollout's per-row residuals; :class:`KnobBlockHook`, a diffusers
``ModelHook`` on every block, sends only the computing rows through a block and, after the last
one, stores or adds the cached residuals.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from diffusers.hooks import ModelHook

from hasten.errors import HastenError
from hasten.knobs.forecast import OutputForecast

if TYPE_CHECKING:  # (hooks imports this module)
    from hasten.knobs.hooks import KnobState


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


class KnobBlockHook(ModelHook):
    """A diffusers ``ModelHook`` on block ``index``: runs only the rows that compute this block.

    Blocks of every family are driven the same way: the call's arguments are bound to their names
    (Wan calls its blocks positionally), every tensor argument with one row per sample is split by
    row (the rest, such as rotary embeddings, is shared), and a block may return its hidden states
    alone (Wan, FLUX.2's single-stream blocks) or as ``(encoder_hidden_states, hidden_states)``.
    """

    def __init__(self, index: int, state: KnobState):
        super().__init__()
        self.index = index
        self.state = state
        self.pair: bool | None = None  # the block returns (context, hidden); learnt at its first call
        self._signature = None

    def _bind(self, original, args, kwargs) -> dict:
        if self._signature is None:
            self._signature = inspect.signature(original)
        return dict(self._signature.bind(*args, **kwargs).arguments)

    def _call(self, original, kwargs):
        out = original(**kwargs)
        self.pair = isinstance(out, tuple)
        return out if self.pair else (None, out)

    def new_forward(self, module, *args, **kwargs):
        state, i = self.state, self.index
        original = self.fn_ref.original_forward
        if state.start is None:  # not inside a knob-driven call: behave as the plain block
            return original(*args, **kwargs)
        if args:
            kwargs = self._bind(original, args, kwargs)
        if "hidden_states" not in kwargs:
            raise HastenError(f"block {i} ({type(module).__name__}): called without hidden_states; hasten's knobs "
                              "drive blocks whose forward takes hidden_states (and encoder_hidden_states)")
        hidden, context = kwargs["hidden_states"], kwargs.get("encoder_hidden_states")
        if not state.family.joint_attention:
            state.text_len = 0
        elif context is not None:  # FLUX.2's single-stream blocks get [text; image] as hidden states
            state.text_len = context.shape[1]
        batch = hidden.shape[0]
        full = state.start == state.num_blocks
        if i in state.boundaries and bool(full.any()):
            every = bool(full.all())
            state._boundary_inputs[i] = tuple(None if t is None else (t if every else t[full])
                                              for t in (context, hidden))
        compute = state.start > i
        if bool(compute.all()):
            state.keep_now = state.keep
            context, hidden = self._call(original, kwargs)
        elif bool(compute.any()):
            rows = compute.nonzero().squeeze(1)
            sub = {key: value[rows.to(value.device)] if _per_row(value, batch) else value
                   for key, value in kwargs.items()}
            state.keep_now = state.keep[rows]
            sub_context, sub_hidden = self._call(original, sub)
            rows = rows.to(hidden.device)
            if sub_hidden.shape[1:] != hidden.shape[1:]:
                raise HastenError(f"block {i} ({type(module).__name__}): its output tokens differ from its input's; "
                                  "cache-reuse needs blocks that map hidden states to hidden states")
            hidden = hidden.index_copy(0, rows, sub_hidden)
            context = None if sub_context is None else context.index_copy(0, rows, sub_context)
        state.keep_now = None
        if i == 0:  # every row computes block 0 (no cache level reuses it)
            state.cache.record_first_block(state.row_ids, hidden, full)
        if i == state.num_blocks - 1:
            hidden = self._finish(hidden, full)
        return (context, hidden) if self.pair or (self.pair is None and context is not None) else hidden

    def _finish(self, hidden, full):
        """Last block: cache the residuals of full rows; add cached residuals to reusing rows."""
        state, cache = self.state, self.state.cache
        ids = state.row_ids
        if bool(full.any()):
            every = bool(full.all())  # then no mask copies
            rows, done, sigma = (ids, hidden, state.sigma) if every else (ids[full], hidden[full], state.sigma[full])
            for b in state.boundaries:
                cache.store(b, rows, done - _joint(state._boundary_inputs[b], done), sigma)
            cache.filled[rows] = True
        reuse = ~full
        if bool(reuse.any()):
            hidden = hidden.clone()
            for b in state.boundaries:
                rows = (state.start == b).nonzero().squeeze(1)
                if rows.numel():
                    hidden[rows] = hidden[rows] + cache.residual(b, ids[rows], state.sigma[rows])
        return hidden


def _per_row(value, batch: int) -> bool:
    """A block argument with one row per sample of the call (split by row; the rest is shared)."""
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch


def _joint(boundary: tuple, output: torch.Tensor) -> torch.Tensor:
    """A boundary block's input in the layout of the last block's output: its hidden states, or
    [text; image] where the model joined the streams in between (FLUX.2's single-stream blocks)."""
    context, hidden = boundary
    if output.shape[1] == hidden.shape[1] or context is None:
        return hidden
    return torch.cat([context, hidden], dim=1)
