"""``hasten reasoner train``: the small causal LM of ``embedded:arith`` (a ``transformers`` Llama).

Trained with next-token cross-entropy on the chain and answer (not on the problem text), on fresh
procedural problems every step (:func:`hasten.embedded.arith.data.training_batch`): full chains, and
chains cut at a random line followed by the answer. Exported as a reasoner folder
(:mod:`hasten.models.reasoner`): ``model/`` (``save_pretrained``, safetensors), ``tokenizer/``
(``vocab.json``) and ``hasten_reasoner.json`` with the recipe and seed beside them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.embedded.schedule import lr_factor, run_progress

logger = logging.getLogger(__name__)


@dataclass
class ReasonerRecipe:
    """Architecture and optimisation of the embedded reasoning LM."""

    hidden: int = 128  # model width
    layers: int = 4  # decoder layers
    heads: int = 4  # attention heads
    intermediate: int = 512  # MLP width
    steps: int = 3000  # optimiser steps
    batch_size: int = 64  # problems per step (fresh every step)
    lr: float = 3e-3  # peak AdamW learning rate (cosine decay, warm-up)
    warmup: int = 100  # linear warm-up steps
    weight_decay: float = 0.01
    cut_prob: float = 0.4  # share of chains cut at a random line before the answer
    max_minutes: float = 0.0  # wall-clock limit (0: none); the learning-rate decay then ends at it
    seed: int = 0
    threads: int = 2  # torch threads

    def __post_init__(self):
        for name in ("hidden", "layers", "heads", "intermediate", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not a multiple of heads={self.heads}")
        if not 0 <= self.cut_prob <= 1:
            raise ValueError(f"cut_prob={self.cut_prob}: expected a probability in [0, 1]")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: expected a positive learning rate")


def build_model(recipe: ReasonerRecipe, vocab_size: int, tokenizer=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
                         num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                         num_key_value_heads=recipe.heads, max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=getattr(tokenizer, "pad_token_id", 0),
                         bos_token_id=getattr(tokenizer, "bos_token_id", 1),
                         eos_token_id=getattr(tokenizer, "eos_token_id", 2))
    return LlamaForCausalLM(config)


def train_reasoner(recipe: ReasonerRecipe, out: str, log_dir: str | None = None, progress: bool = True,
                   eval_every: int = 250) -> dict:
    """Train the LM and export the reasoner folder ``out``; returns the training summary."""
    from hasten.embedded.arith.data import CharTokenizer, training_batch
    from hasten.models.reasoner import save_reasoner

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    tokenizer = CharTokenizer()
    model = build_model(recipe, len(tokenizer), tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  betas=(0.9, 0.98))

    def lr_at(step, elapsed):
        return lr_factor(step, elapsed, recipe.steps, recipe.warmup, recipe.max_minutes)

    rng = np.random.default_rng(recipe.seed)
    writer = None
    if log_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, desc="reasoner train", dynamic_ncols=True)
    start, losses, step = time.perf_counter(), [], 0
    model.train()
    for step in range(recipe.steps):
        ids, labels = training_batch(tokenizer, rng, recipe.batch_size, recipe.cut_prob)
        mask = (ids != tokenizer.pad_token_id).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_at(step, time.perf_counter() - start)
        optimizer.step()
        losses.append(loss.item())
        if writer is not None:
            writer.add_scalar("loss/train", loss.item(), step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if eval_every and (step + 1) % eval_every == 0:
            logger.info("step %d loss %.4f (%.1f min)", step + 1, np.mean(losses[-eval_every:]),
                        (time.perf_counter() - start) / 60)
        if run_progress(step + 1, recipe.steps, time.perf_counter() - start, recipe.max_minutes) >= 1.0:
            if step + 1 < recipe.steps:
                logger.info("stopping at step %d: max_minutes=%s reached", step + 1, recipe.max_minutes)
            break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    minutes = (time.perf_counter() - start) / 60
    summary = {"steps_done": step + 1, "train_minutes": round(minutes, 2),
               "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
               "parameters": sum(p.numel() for p in model.parameters())}
    model.eval()
    save_reasoner(out, model, tokenizer, recipe=asdict(recipe), training=summary)
    return summary


def recipe_from_file(path: str | None, overrides: dict) -> ReasonerRecipe:
    from hasten.config import from_dict, load_document

    data = load_document(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return from_dict(ReasonerRecipe, data, source=path or "reasoner recipe")
    except (TypeError, ValueError) as e:
        raise HastenError(str(e)) from e


def write_summary(path: str, summary: dict) -> None:
    from hasten.io import write_json_atomic

    write_json_atomic(path, summary)



def evaluate_reasoner(reasoner, n: int = 64, seed: int = 1_000_000, batch_size: int = 64,
                      progress: bool = True) -> dict:
    """Accuracy by difficulty with the full chain and with no chain (answer forced at once), mean
    reasoning tokens and seconds per problem; ``n`` held-out problems per difficulty."""
    from hasten.models.reasoner import run_chains

    conditions = reasoner.conditions
    problems = reasoner.problems(np.repeat(conditions, n), np.tile(np.arange(seed, seed + n), len(conditions)))
    difficulty = np.repeat(conditions, n)
    result = {"reasoner": reasoner.name, "n_per_difficulty": n, "first_seed": seed, "by_difficulty": {}}
    for mode, decide in (("full_chain", None), ("no_chain", lambda decoder, rows: np.ones(decoder.n, bool))):
        t0 = time.perf_counter()
        out = run_chains(reasoner, problems, decide, batch_size=batch_size)
        seconds = time.perf_counter() - t0
        result[mode] = {"accuracy": float(out["correct"].mean()), "think_tokens": float(out["think_tokens"].mean()),
                        "seconds_per_problem": seconds / len(problems),
                        "natural_ends": float((out["stopped_by"] == "natural").mean())}
        for d in conditions:
            rows = difficulty == d
            result["by_difficulty"].setdefault(str(d), {})[mode] = {
                "accuracy": float(out["correct"][rows].mean()), "think_tokens": float(out["think_tokens"][rows].mean())}
        if progress:
            logger.info("%s: accuracy %.3f, %.1f reasoning tokens", mode, result[mode]["accuracy"],
                        result[mode]["think_tokens"])
    return result


def eval_markdown(result: dict) -> str:
    lines = [f"### {result['reasoner']}: {result['n_per_difficulty']} held-out problems per difficulty", "",
             "| operations | accuracy, full chain | reasoning tokens | accuracy, no chain |", "|---|---|---|---|"]
    for d, row in result["by_difficulty"].items():
        lines.append(f"| {d} | {row['full_chain']['accuracy']:.3f} | {row['full_chain']['think_tokens']:.1f} | "
                     f"{row['no_chain']['accuracy']:.3f} |")
    f, z = result["full_chain"], result["no_chain"]
    lines.append(f"| all | {f['accuracy']:.3f} | {f['think_tokens']:.1f} | {z['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"
