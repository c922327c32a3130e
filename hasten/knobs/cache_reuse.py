"""Cache-Reuse: a row runs only its leading blocks and adds the residual of the remaining blocks
cached at its last full computation.

:class:`RowCache` holds each rollout's per-row residuals; :class:`KnobBlockHook`, a diffusers
``ModelHook`` on every block, sends only the computing rows through a block and, after the last
one, stores or adds the cached residuals.
"""

from __future__ import annotations

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
