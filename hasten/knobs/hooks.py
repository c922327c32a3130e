"""Attaching the knobs to a transformer: the :class:`KnobState` its hooks share,
:func:`attach_knobs` / :func:`detach_knobs` / :func:`knobs_attached`, and the diffusers
``HookRegistry`` helpers (:func:`register_model_hook`, :func:`remove_model_hook`) that leave a
module exactly as before once removed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from diffusers.hooks import HookRegistry, ModelHook

from hasten.errors import HastenError
from hasten.knobs.cache_reuse import KnobBlockHook, RowCache
from hasten.knobs.sparse_attention import SparseAttentionProcessor, Workspace, _attention_modules, sparse_processor
from hasten.models.families import DiTFamily, family_of

HOOK_NAME = "hasten_knobs"


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
        for attn in _attention_modules(block, family):
            attn.processor = sparse_processor(attn.processor, state)
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
        for attn in _attention_modules(block, state.family):
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
