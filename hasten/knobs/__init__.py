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

The code lives in one module per concept: :mod:`.levels` (the knobs and their levels),
:mod:`.step_skip`, :mod:`.forecast`, :mod:`.cache_reuse`, :mod:`.sparse_attention`, :mod:`.hooks`
(attach / detach) and :mod:`.cost` (their FLOPs and time); every name is re-exported here.

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

from hasten.knobs.levels import CACHE_REUSE, KNOBS, SPARSE_ATTENTION, STEP_SKIP, Knob, validate_decisions
from hasten.knobs.step_skip import SKIP_INTERVALS
from hasten.knobs.forecast import FORECAST_SPACES, OutputForecast, forecast_space
from hasten.knobs.cache_reuse import KnobBlockHook, RowCache
from hasten.knobs.sparse_attention import (QUERY_BLOCKS_PER_KEY_BLOCK, SparseAttentionProcessor, SparseLayout,
                                           Workspace, _SDPA_ARGS, _SparseSDPA, _attention_modules,
                                           block_sparse_attention, sdpa_arguments, sparse_processor)
from hasten.knobs.hooks import (HOOK_NAME, HookRegistration, KnobState, _MISSING, _invalidate_registry_cache,
                                attach_knobs, detach_knobs, knobs_attached, register_model_hook,
                                remove_model_hook)

__all__ = [
    "CACHE_REUSE", "FORECAST_SPACES", "HOOK_NAME", "KNOBS", "QUERY_BLOCKS_PER_KEY_BLOCK", "SKIP_INTERVALS",
    "SPARSE_ATTENTION", "STEP_SKIP", "HookRegistration", "Knob", "KnobBlockHook", "KnobState", "OutputForecast",
    "RowCache", "SparseAttentionProcessor", "SparseLayout", "Workspace", "attach_knobs", "block_sparse_attention",
    "detach_knobs", "forecast_space", "knobs_attached", "register_model_hook", "remove_model_hook",
    "sdpa_arguments", "validate_decisions",
]
