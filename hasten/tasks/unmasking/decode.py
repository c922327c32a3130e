"""Batched unmasking of canvases by a frozen diffusion LM, one decision per row and step.

:class:`CanvasDecoder` holds a batch of rows (prompt + canvas), the denoiser's latest prediction for
each (argmax token, confidence, entropy per canvas position) and what each row has spent (denoiser
calls, FLOPs). One :meth:`CanvasDecoder.step` commits, per row, the masked positions a rule picks
from that prediction (always at least the most confident one), then calls the denoiser again, per row
either on every position (``reuse=False``: refresh the key/value cache) or only on the positions still
masked and those committed since their keys were computed (``reuse=True``: dKV-cache reuse). Rows are
independent: a row decodes the same in any batch.

The commit rules of the peers and of the policy's ``commit`` knob are functions of the prediction
(:func:`threshold_commit`, :func:`entropy_bound_commit`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from hasten.tasks.unmasking.model import DiffusionLM, KVCache


class CanvasDecoder:
    """The rows of ``problems`` decoded by ``lm`` from an all-``<mask>`` canvas (the first call is made here)."""

    def __init__(self, lm: DiffusionLM, problems):
        self.lm, self.problems = lm, list(problems)
        self.n = len(self.problems)
        self.ids = lm.start(self.problems)
        p, c = lm.prompt_width, lm.canvas
        self.masked = torch.zeros(self.n, p + c, dtype=torch.bool, device=self.ids.device)
        self.masked[:, p:] = True
        self.fresh = torch.ones_like(self.masked)  # keys/values in the cache computed with the current token
        self.cache: KVCache | None = None
        self.calls = np.zeros(self.n, dtype=np.int64)
        self.flops = np.zeros(self.n, dtype=np.float64)
        self.steps = np.zeros(self.n, dtype=np.int64)
        self.since_refresh = np.zeros(self.n, dtype=np.int64)
        self.seconds = 0.0
        self.state: dict = {}  # what a stateful rule keeps for this batch (transformers' stopper's history)
        self._call(np.ones(self.n, dtype=bool), np.zeros(self.n, dtype=bool))

    # ------------------------------------------------------------------------- state
    @property
    def done(self) -> np.ndarray:
        """(n,) rows whose canvas holds no ``<mask>``."""
        return ~self.masked.any(dim=1).cpu().numpy()

    @property
    def canvas_masked(self) -> torch.Tensor:
        return self.masked[:, self.lm.prompt_width:]

    def decoded_fraction(self) -> np.ndarray:
        return 1.0 - self.canvas_masked.float().mean(dim=1).cpu().numpy()

    @property
    def cost_fraction(self) -> np.ndarray:
        """(n,) FLOPs spent as a fraction of the full schedule's."""
        return self.flops / self.lm.full_schedule_flops

    @property
    def call_fraction(self) -> np.ndarray:
        return self.calls / self.lm.canvas

    def answers(self) -> list:
        return self.lm.answers(self.ids)

    def correct(self) -> np.ndarray:
        """(n,) whether each row's answer is its problem's (False for rows given as prompt text)."""
        return np.array([a is not None and a == getattr(p, "answer", object()) for a, p in
                         zip(self.answers(), self.problems)], dtype=bool)

    # ------------------------------------------------------------------------- one step
    def step(self, commit: torch.Tensor, reuse) -> None:
        """Commit the predicted tokens at ``commit`` (n, canvas) bool (masked positions only; the most
        confident masked position of every unfinished row is always committed), then call the denoiser
        on the unfinished rows: ``reuse`` (n,) bool picks the cached call per row."""
        live = torch.from_numpy(~self.done).to(self.ids.device)
        if not live.any():
            return
        p = self.lm.prompt_width
        masked = self.canvas_masked
        best = torch.where(masked, self.conf, torch.full_like(self.conf, -1.0)).argmax(dim=1)
        commit = commit.to(masked.device) & masked
        commit[torch.arange(self.n, device=masked.device), best] |= masked.any(dim=1) & ~commit.any(dim=1)
        commit &= live[:, None]
        canvas = self.ids[:, p:]
        self.ids[:, p:] = torch.where(commit, self.pred, canvas)
        self.masked[:, p:] &= ~commit
        self.fresh[:, p:] &= ~commit
        self.steps[live.cpu().numpy()] += 1
        still = ~self.done
        reuse = np.asarray(reuse, dtype=bool) & still & (self.cache is not None)
        self._call(still & ~reuse, still & reuse)

    def _call(self, full_rows: np.ndarray, reuse_rows: np.ndarray) -> None:
        t0 = time.perf_counter()
        lm, p, n_pos = self.lm, self.lm.prompt_width, self.lm.length
        if full_rows.any():
            rows = torch.from_numpy(np.flatnonzero(full_rows)).to(self.ids.device)
            logits, cache = lm.full(self.ids[rows])
            if self.cache is None:
                self.cache = cache
                self.logits = lm.canvas_logits(logits).clone()
            else:
                self.cache.put_rows(rows, cache)
                self.logits[rows] = lm.canvas_logits(logits)
            self.fresh[rows] = True
            self.flops[full_rows] += lm.call_flops(n_pos)
            self.since_refresh[full_rows] = 0
        if reuse_rows.any():
            rows = torch.from_numpy(np.flatnonzero(reuse_rows)).to(self.ids.device)
            # recompute the positions whose token changed since their keys were computed, and those whose
            # output predicts a masked position (the masked ones, or the one before each with a shifted head)
            need = ~self.fresh[rows] | self.masked[rows]
            if lm.shift:
                need[:, :-lm.shift] |= self.masked[rows][:, lm.shift:]
            counts = need.sum(dim=1)
            width = int(counts.max())
            # each row's active positions first (stable order), padded with its first active position
            order = torch.sort((~need).to(torch.int8), dim=1, stable=True).indices[:, :width]
            pad = torch.arange(width, device=need.device)[None, :] >= counts[:, None]
            active = torch.where(pad, order[:, :1], order)
            logits, cache = lm.cached(self.ids[rows], active, self.cache.rows(rows))
            self.cache.put_rows(rows, cache)
            # each active position's logits predict position + shift; those outside the canvas go to a spare column
            target = active + lm.shift - p
            target = torch.where((target >= 0) & (target < lm.canvas), target, torch.full_like(target, lm.canvas))
            canvas_logits = torch.cat([self.logits[rows], self.logits[rows][:, :1]], dim=1)
            canvas_logits.scatter_(1, target[..., None].expand(-1, -1, logits.shape[-1]), logits)
            self.logits[rows] = canvas_logits[:, :lm.canvas]
            self.fresh[rows] |= need
            self.flops[reuse_rows] += counts.cpu().numpy() * lm.token_flops(n_pos)
            self.since_refresh[reuse_rows] += 1
        called = full_rows | reuse_rows
        self.calls[called] += 1
        self._predict()
        self.seconds += time.perf_counter() - t0

    def _predict(self) -> None:
        logits = self.logits.float()
        logits[..., self.lm.mask_id] = -math.inf  # the denoiser never predicts <mask>
        probs = logits.softmax(dim=-1)
        self.conf, self.pred = probs.max(dim=-1)
        self.entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=-1)
        self.probs_eos = probs[..., self.lm.tokenizer.eos_token_id]


# ----------------------------------------------------------------------------- commit rules
def threshold_commit(decoder: CanvasDecoder, threshold, k=1) -> torch.Tensor:
    """(n, canvas) the masked positions whose confidence is >= ``threshold`` (per row; ``inf``: none),
    and at least each row's ``k`` most confident ones (Fast-dLLM's rule; ``k`` alone: fixed tokens per step)."""
    masked = decoder.canvas_masked
    conf = torch.where(masked, decoder.conf, torch.full_like(decoder.conf, -1.0))
    threshold = torch.as_tensor(np.broadcast_to(np.asarray(threshold, dtype=np.float32), (decoder.n,)).copy(),
                                device=conf.device)
    k = torch.as_tensor(np.broadcast_to(np.asarray(k, dtype=np.int64), (decoder.n,)).copy(), device=conf.device)
    ranks = torch.argsort(torch.argsort(conf, dim=1, descending=True), dim=1)
    return masked & ((conf >= threshold[:, None]) | (ranks < k[:, None]))


def entropy_bound_commit(decoder: CanvasDecoder, bound: float) -> torch.Tensor:
    """(n, canvas) transformers' entropy-bound rule (DiffusionGemma's ``EntropyBoundSampler``, Ben-Hamu et
    al. 2025): the masked positions of lowest entropy while their summed entropy minus the largest is <= ``bound``."""
    masked = decoder.canvas_masked
    entropy = torch.where(masked, decoder.entropy, torch.full_like(decoder.entropy, math.inf))
    sorted_entropy, order = torch.sort(entropy, dim=-1)
    finite = torch.where(torch.isinf(sorted_entropy), torch.zeros_like(sorted_entropy), sorted_entropy)
    selected = (finite.cumsum(dim=-1) - finite <= bound) & ~torch.isinf(sorted_entropy)
    return torch.zeros_like(masked).scatter(1, order, selected) & masked


def run_rule(lm: DiffusionLM, problems, commit_rule, reuse_rule=None, max_steps: int | None = None) -> CanvasDecoder:
    """Decode ``problems`` to the end with ``commit_rule(decoder) -> (n, canvas)`` and, per step,
    ``reuse_rule(decoder) -> (n,) bool`` (default: never reuse); returns the finished decoder."""
    decoder = CanvasDecoder(lm, problems)
    limit = max_steps or lm.canvas
    while not decoder.done.all():
        reuse = np.zeros(decoder.n, dtype=bool) if reuse_rule is None else reuse_rule(decoder)
        commit = commit_rule(decoder)
        if decoder.steps.max() + 1 >= limit:  # the last allowed step commits everything
            commit = decoder.canvas_masked.clone()
        decoder.step(commit, reuse)
    return decoder
