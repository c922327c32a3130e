"""The training-free decoding rules ``hasten compare --task unmasking`` measures the learned head against.

Every peer is a (commit rule, reuse rule) pair run by :func:`~hasten.tasks.unmasking.decode.run_rule`:

- the full schedule: one token per denoiser call, the most confident (LLaDA's low-confidence remasking);
- fixed ``k`` tokens per call;
- Fast-dLLM's confidence threshold (Wu et al. 2025): every masked token whose confidence is >= ``t``;
- transformers' DiffusionGemma sampler: the entropy-bound rule with its stable-and-confident adaptive stop;
- dKV-Cache-style reuse (Ma et al. 2025) on top of a rule: cached calls, a full refresh every ``r`` calls.
"""

from __future__ import annotations

import numpy as np
import torch

from hasten.tasks.unmasking.decode import (
    CanvasDecoder,
    entropy_bound_commit,
    run_rule,
    threshold_commit,
)

INF = float("inf")


def full_schedule(decoder: CanvasDecoder) -> torch.Tensor:
    return threshold_commit(decoder, INF, 1)


def fixed_k(k: int):
    return lambda decoder: threshold_commit(decoder, INF, k)


def confidence_threshold(t: float):
    return lambda decoder: threshold_commit(decoder, t, 1)


def refresh_every(r: int):
    """dKV-Cache's schedule: reuse the cache except on every ``r``-th call (a full refresh)."""
    return lambda decoder: decoder.since_refresh + 1 < r


def entropy_bound_with_stop(bound: float, stability: int = 1, confidence: float = 0.005):
    """transformers' DiffusionGemma sampling: the entropy-bound rule, and its ``StableAndConfidentStopper``
    (the argmax canvas unchanged for ``stability`` calls and mean entropy < ``confidence``) committing the rest."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        StableAndConfidentStoppingCriteria,
    )

    def rule(decoder: CanvasDecoder) -> torch.Tensor:
        stopper = decoder.state.setdefault("stopper", StableAndConfidentStoppingCriteria(stability, confidence))
        commit = entropy_bound_commit(decoder, bound)
        masked = decoder.canvas_masked
        canvas = decoder.ids[:, decoder.lm.prompt_width:]
        argmax_canvas = torch.where(masked, decoder.pred, canvas)
        stop = stopper(argmax_canvas, decoder.logits.float())
        return commit | (masked & stop[:, None])

    return rule


def evaluate_full_schedule(lm, n: int = 64, seed: int = 1_000_000, batch_size: int = 128) -> dict:
    """Accuracy of the full schedule on ``n`` held-out problems per difficulty (seeds from ``seed``)."""
    conditions = np.repeat(lm.conditions, n)
    seeds = np.tile(np.arange(seed, seed + n), len(lm.conditions))
    correct = []
    for start in range(0, len(conditions), batch_size):
        problems = lm.problems(conditions[start:start + batch_size], seeds[start:start + batch_size])
        correct.append(run_rule(lm, problems, full_schedule).correct())
    correct = np.concatenate(correct)
    return {"accuracy": float(correct.mean()), "n_per_difficulty": n, "first_seed": seed,
            "by_difficulty": {str(d): float(correct[conditions == d].mean()) for d in lm.conditions}}
