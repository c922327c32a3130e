"""Sparse-Attention: inside computed blocks, each image query block attends to the text tokens and
to the top ``keep`` fraction of image key blocks, ranked by pooled ``q . k``; keys are gathered,
so FLOPs and time really drop.

:func:`block_sparse_attention` is the attention itself (block geometry: :class:`SparseLayout`);
:class:`SparseAttentionProcessor` wraps a block's attention processor and swaps, per row, its
``F.scaled_dot_product_attention`` call for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from hasten.errors import HastenError

if TYPE_CHECKING:  # (hooks imports this module)
    from hasten.knobs.hooks import KnobState

QUERY_BLOCKS_PER_KEY_BLOCK = 4


@dataclass(frozen=True)
class SparseLayout:
    """Block geometry of sparse attention over ``image_tokens`` image tokens.

    Key blocks of ``key_block`` tokens (64 at large token counts, smaller so that there are at
    least 8); query blocks of ``query_block`` = up to 4 key blocks (larger query blocks keep the
    attention kernel efficient; the selection stays at key-block granularity). Where the query
    blocks do not tile the tokens (Wan's 13 x 30 x 52 = 20280 video tokens), the last ``tail``
    tokens (fewer than one query block) stay dense, as the text does.

    Example:
        >>> SparseLayout.for_tokens(4096)
        SparseLayout(image_tokens=4096, key_block=64, query_block=256)
        >>> SparseLayout.for_tokens(256).kept_blocks(0.25)
        2
        >>> layout = SparseLayout.for_tokens(5070)
        >>> layout.key_block, layout.query_block, layout.tiled_tokens, layout.tail
        (64, 256, 4864, 206)
    """

    image_tokens: int
    key_block: int
    query_block: int

    @classmethod
    def for_tokens(cls, image_tokens: int) -> "SparseLayout":
        size = 64
        while size > 8 and image_tokens // size < 8:
            size //= 2
        size = min(size, max(1, image_tokens // 2))
        query = size
        key_blocks = image_tokens // size
        # a query block spans at most 4 key blocks, and at most a quarter of them (so that keep=0.25
        # is still a choice), and there are at least 2 query blocks
        while (query * 2 <= size * QUERY_BLOCKS_PER_KEY_BLOCK and (query * 2) // size <= key_blocks // 4
               and image_tokens // (query * 2) >= 2):
            query *= 2
        return cls(image_tokens, size, query)

    @property
    def tiled_tokens(self) -> int:
        """The image tokens the query blocks tile (the rest, :attr:`tail`, stays dense)."""
        return self.image_tokens // self.query_block * self.query_block

    @property
    def tail(self) -> int:
        return self.image_tokens - self.tiled_tokens

    @property
    def key_blocks(self) -> int:
        return self.tiled_tokens // self.key_block

    @property
    def query_blocks(self) -> int:
        return self.tiled_tokens // self.query_block

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
                           workspace: Workspace | None = None, key_mask: torch.Tensor | None = None):
    """Attention in which each image query block sees the text tokens and its top image key blocks.

    Args:
        q, k, v: (B, H, N, d) with N = text_len + image tokens, text first or last.
        keep: fraction of image key blocks kept per query block (1.0 = dense attention).
        workspace: reusable buffers for the gathered keys/values.
        key_mask: (B, N) bool, False for keys no query may see (Qwen-Image's padded text tokens).

    Text queries stay dense (they are few), and so do the last image tokens when the query blocks
    do not tile the image (``SparseLayout.tail``, fewer than one query block): every query sees
    them as it sees the text. Key blocks are ranked per query block by the dot product of
    mean-pooled query and key blocks; the key blocks covering the query block itself are always
    kept. The kept keys (and the always-seen ones) are gathered into one contiguous buffer per query
    block, so the attention costs about ``keep`` of the dense image-image part.
    """
    dense_mask = None if key_mask is None else key_mask[:, None, None, :]
    if keep >= 1.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask)
    b, h, n, d = q.shape
    ni = n - text_len
    layout = SparseLayout.for_tokens(ni)
    bk, bq, nk, nq = layout.key_block, layout.query_block, layout.key_blocks, layout.query_blocks
    tiled = layout.tiled_tokens
    m = layout.kept_blocks(keep)
    start = text_len if text_first else 0
    # the always-seen tokens: the text and the untiled image tail
    tail = torch.arange(start + tiled, start + ni, device=q.device)
    text = torch.arange(0, text_len, device=q.device) + (0 if text_first else ni)
    always = torch.cat([text, tail])
    bh = b * h
    q_image = q[:, :, start:start + tiled].reshape(bh, nq, bq, d)
    k_pooled = k[:, :, start:start + tiled].reshape(bh, nk, bk, d).mean(2)
    score = q_image.mean(2) @ k_pooled.transpose(-1, -2)  # (bh, nq, nk)
    own = torch.arange(nk, device=q.device) // (bq // bk) == torch.arange(nq, device=q.device)[:, None]
    score.masked_fill_(own, math.inf)
    chosen = score.topk(m, dim=-1).indices  # (bh, nq, m)
    # token indices into the flattened (bh * N) keys: the always-seen tokens, then the kept blocks'
    tokens = (chosen[..., None] * bk + torch.arange(bk, device=q.device)).flatten(-2) + start
    if always.numel():
        tokens = torch.cat([always.expand(bh, nq, always.numel()), tokens], dim=-1)
    s = tokens.shape[-1]
    flat = (tokens + (torch.arange(bh, device=q.device) * n)[:, None, None]).reshape(-1)
    workspace = workspace or Workspace()
    k_sel = workspace.get("key", (bh * nq * s, d), k)
    v_sel = workspace.get("value", (bh * nq * s, d), v)
    torch.index_select(k.reshape(bh * n, d), 0, flat, out=k_sel)
    torch.index_select(v.reshape(bh * n, d), 0, flat, out=v_sel)
    mask_sel = None
    if key_mask is not None:  # the kept keys' mask, gathered like the keys
        rows = key_mask[:, None, :].expand(b, h, n).reshape(bh * n)
        mask_sel = rows[flat].view(bh * nq, 1, 1, s)
    out_image = F.scaled_dot_product_attention(q_image.reshape(bh * nq, 1, bq, d), k_sel.view(bh * nq, 1, s, d),
                                               v_sel.view(bh * nq, 1, s, d), attn_mask=mask_sel).view(b, h, tiled, d)
    if not always.numel():
        return out_image
    out = q.new_empty(b, h, n, d)
    out[:, :, start:start + tiled] = out_image
    out[:, :, always] = F.scaled_dot_product_attention(q[:, :, always], k, v, attn_mask=dense_mask)
    return out


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
        mask = call.pop("attn_mask", None)
        extra = {key: value for key, value in call.items() if value is not None and value is not False
                 and not (isinstance(value, float) and value == 0.0)}
        if set(extra) - {"scale"} or extra.get("scale", q.shape[-1] ** -0.5) != q.shape[-1] ** -0.5:
            raise HastenError("sparse attention: the attention processor passed dropout or a custom scale; "
                              "only plain (joint) attention is supported")
        key_mask = _key_mask(mask, q.shape[0], k.shape[-2])
        out = torch.empty_like(q)
        for value in torch.unique(self.keep).tolist():
            rows = (self.keep == value).nonzero().squeeze(1)
            out[rows] = block_sparse_attention(q[rows], k[rows], v[rows], self.state.text_len,
                                               self.state.family.text_first, value, self.state.workspace,
                                               None if key_mask is None else key_mask[rows.to(key_mask.device)])
        return out


def _key_mask(mask, batch: int, keys: int) -> torch.Tensor | None:
    """An SDPA ``attn_mask`` that only masks keys ((B, 1, 1, N) bool, as Qwen-Image pads text) -> (B, N)."""
    if mask is None:
        return None
    if mask.dtype != torch.bool or mask.shape[-1] != keys or mask.numel() != batch * keys:
        raise HastenError(f"sparse attention: an attention mask of shape {tuple(mask.shape)} ({mask.dtype}); "
                          f"only a boolean key-padding mask ({batch}, 1, 1, {keys}) is supported")
    return mask.reshape(batch, keys)


class SparseAttentionProcessor:
    """Wraps a block's own attention processor; with sparsity requested, its attention is sparse.

    The wrapped processor does every projection, norm and rotary embedding as before; only its call
    to ``F.scaled_dot_product_attention`` is replaced, per row, by :func:`block_sparse_attention`.
    Made by :func:`sparse_processor`, whose subclass per processor class shows the inner
    processor's signature (diffusers' attention modules pass a processor only the keyword
    arguments its ``__call__`` names).
    """

    def __init__(self, inner, state: KnobState):
        self.inner = inner
        self.state = state

    def __call__(self, attn, *args, **kwargs):
        keep = self.state.keep_now
        if keep is None or bool((keep >= 1.0).all()):
            return self.inner(attn, *args, **kwargs)
        with _SparseSDPA(self.state, keep):
            return self.inner(attn, *args, **kwargs)


_WRAPPERS: dict[type, type] = {}


def sparse_processor(inner, state: KnobState) -> SparseAttentionProcessor:
    """A :class:`SparseAttentionProcessor` around ``inner`` whose ``__call__`` has ``inner``'s signature."""
    cls = type(inner)
    if cls not in _WRAPPERS:
        def __call__(self, attn, *args, **kwargs):
            return SparseAttentionProcessor.__call__(self, attn, *args, **kwargs)

        __call__.__wrapped__ = cls.__call__  # what inspect.signature reports
        _WRAPPERS[cls] = type(f"Sparse{cls.__name__}", (SparseAttentionProcessor,), {"__call__": __call__})
    return _WRAPPERS[cls](inner, state)


def _attention_modules(block: nn.Module, family) -> list[nn.Module]:
    """The block's attention modules that see the image tokens (``family.attention``: the joint
    attention ``attn`` of Flux / SD3 / Qwen-Image / FLUX.2, Wan's self-attention ``attn1``); an
    image-only ``attn2`` (SD3.5) or a text cross-attention (Wan's ``attn2``) stays dense."""
    found = [getattr(block, name, None) for name in family.attention]
    return [attn for attn in found if attn is not None and hasattr(attn, "processor")]
