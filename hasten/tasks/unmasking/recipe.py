"""The recipe of ``embedded:dllm``: a ModernBERT masked LM trained as a masked-diffusion denoiser.

``hasten generator train --config experiments/dllm_generator.yaml --out runs/dllm`` runs it: fresh
``embedded:arith`` problems every step (:func:`hasten.tasks.unmasking.data.training_batch`), a share
``t ~ U(0, 1)`` of each canvas masked, cross-entropy on the masked positions (the masked-diffusion
objective of MDLM / LLaDA, unweighted). It checkpoints every ``checkpoint_every`` steps
(``RUN/checkpoint``, safetensors + JSON) and ``--resume`` continues from there; the model is exported
to ``RUN/dllm`` (:func:`hasten.tasks.unmasking.model.save_dllm`) with its full-schedule accuracy.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from hasten.checkpoint import (
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from hasten.embedded.schedule import lr_factor, run_progress
from hasten.tasks.unmasking import data
from hasten.tasks.unmasking.model import build_denoiser, denoiser_of, load_dllm, save_dllm

logger = logging.getLogger(__name__)


@dataclass
class DLLMRecipe:
    """Architecture and optimisation of the embedded diffusion LM (``recipe: dllm``)."""

    recipe: str = "dllm"
    #: "modernbert": a fresh ModernBertForMaskedLM of the sizes below; "arith-llama": embedded:arith's Llama
    #: (its weights, a <mask> embedding added) adapted to masked diffusion with full attention, as Dream adapts Qwen
    denoiser: str = "modernbert"
    hidden: int = 128  # model width (modernbert)
    layers: int = 4  # encoder layers (global attention)
    heads: int = 4
    intermediate: int = 256  # GLU width
    steps: int = 12000  # optimiser steps
    batch_size: int = 64  # problems per step (fresh every step)
    lr: float = 2e-3  # peak AdamW learning rate (warm-up, then cosine decay)
    warmup: int = 200
    weight_decay: float = 0.01
    max_minutes: float = 0.0  # wall-clock limit (0: none); the decay then ends at it
    checkpoint_every: int = 500
    eval_problems: int = 64  # held-out problems per difficulty for the exported accuracy (0: skip)
    seed: int = 0
    threads: int = 2

    def __post_init__(self):
        for name in ("hidden", "layers", "heads", "intermediate", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not a multiple of heads={self.heads}")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: expected a positive learning rate")
        if self.denoiser not in ("modernbert", "arith-llama"):
            raise ValueError(f"denoiser={self.denoiser!r}: expected 'modernbert' or 'arith-llama'")


def initial_denoiser(recipe: DLLMRecipe, tok):
    """The denoiser the recipe starts from (see :attr:`DLLMRecipe.denoiser`)."""
    if recipe.denoiser == "modernbert":
        return build_denoiser(recipe.hidden, recipe.layers, recipe.heads, recipe.intermediate, tok)
    from hasten.models.reasoner import load_reasoner

    model = load_reasoner("embedded:arith").model
    model.requires_grad_(True).train()
    embeddings = model.get_input_embeddings().weight.data
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():  # <mask> starts as the mean embedding (its id is the new last one)
        model.get_input_embeddings().weight[tok.mask_token_id] = embeddings.mean(dim=0)
    return model


def masked_loss(adapter, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the denoiser's canvas predictions (its own forward, full attention) at the masked positions."""
    logits = adapter.reference_logits(ids)
    start = data.PROMPT_WIDTH - adapter.shift
    pred = logits[:, start:start + data.CANVAS]
    target = labels[:, data.PROMPT_WIDTH:]
    return torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100)


def train_dllm(recipe: DLLMRecipe, run_dir: str, resume: bool = False, progress: bool = True) -> str:
    """Train (or resume) the recipe in ``run_dir``; returns the exported diffusion-LM folder."""
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    tok = data.tokenizer()
    model = initial_denoiser(recipe, tok)
    adapter = denoiser_of(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  betas=(0.9, 0.98))
    rng = np.random.default_rng(recipe.seed)
    ckpt = os.path.join(run_dir, "checkpoint")
    step, elapsed, losses = 0, 0.0, []
    if resume and os.path.isdir(ckpt):
        tensors, state = load_checkpoint(ckpt)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_flat(optimizer, tensors, state["optimizer"])
        step, elapsed, losses = state["step"], state["elapsed"], state["losses"]
        rng = np.random.default_rng([recipe.seed, step])
        logger.info("resumed %s at step %d (%.1f min)", ckpt, step, elapsed / 60)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, initial=step, desc="dllm train", dynamic_ncols=True)
    start = time.perf_counter() - elapsed
    model.train()
    while step < recipe.steps:
        ids, labels = data.training_batch(tok, rng, recipe.batch_size)
        loss = masked_loss(adapter, ids, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, time.perf_counter() - start, recipe.steps, recipe.warmup,
                                                recipe.max_minutes)
        optimizer.step()
        losses.append(round(loss.item(), 5))
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = run_progress(step, recipe.steps, time.perf_counter() - start, recipe.max_minutes) >= 1.0
        if step % recipe.checkpoint_every == 0 or done:
            tensors, meta = optimizer_to_flat(optimizer)
            tensors.update({f"model.{k}": v.clone() for k, v in model.state_dict().items()})  # tied weights: copies
            save_checkpoint(ckpt, tensors, {"step": step, "elapsed": time.perf_counter() - start, "losses": losses,
                                            "optimizer": meta, "recipe": asdict(recipe)})
            logger.info("step %d loss %.4f (%.1f min)", step, np.mean(losses[-200:]), (time.perf_counter() - start) / 60)
        if done:
            break
    if bar is not None:
        bar.close()
    summary = {"steps_done": step, "train_minutes": round((time.perf_counter() - start) / 60, 2),
               "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
               "parameters": sum(p.numel() for p in model.parameters())}
    out = os.path.join(run_dir, "dllm")
    model.eval()
    save_dllm(out, model, tok, recipe=asdict(recipe), training=summary)
    if recipe.eval_problems:
        from hasten.tasks.unmasking.peers import evaluate_full_schedule

        lm = load_dllm(out)
        summary["full_schedule"] = evaluate_full_schedule(lm, recipe.eval_problems)
        save_dllm(out, model, tok, recipe=asdict(recipe), training=summary)
    return out
