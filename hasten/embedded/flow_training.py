"""The training loop of hasten's rectified-flow generator recipes (``embedded:shapes``,
``embedded:clips``): AdamW with warm-up and a cosine decay that ends at the step or wall-clock
limit, an EMA of the weights (what ships), label dropout for classifier-free guidance,
logit-normal noise levels (SD3), TensorBoard scalars, safetensors checkpoints that ``--resume``
continues exactly, and the export of the EMA model. A recipe gives its models, its loss, its data
stream and its export (:class:`FlowRecipe`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from hasten.checkpoint import load_checkpoint, optimizer_from_flat, optimizer_to_flat, save_checkpoint
from hasten.embedded.schedule import lr_factor, run_progress
from hasten.errors import HastenError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlowRecipe:
    """What one generator recipe adds to the loop.

    Attributes:
        build: ``config -> (transformer, class encoder)``, fresh and seeded by ``config.seed``.
        loss: ``(transformer, encoder, data, labels, sigmas, noise) -> scalar`` velocity regression.
        batches: ``(seed, batch_size, start) -> iterator of (data, labels)`` numpy batches.
        export: ``(transformer, encoder, config, out, train_seconds, train_steps) -> None``.
        name: the progress bar's label.
    """

    build: Callable
    loss: Callable
    batches: Callable
    export: Callable
    name: str = "generator"


def progress_at(config, step: int, elapsed_s: float) -> float:
    """Share of the run done (see :func:`hasten.embedded.schedule.run_progress`)."""
    return run_progress(step, config.steps, elapsed_s, config.max_minutes)


def lr_at(config, step: int, elapsed_s: float = 0.0) -> float:
    return config.lr * lr_factor(step, elapsed_s, config.steps, config.warmup_steps, config.max_minutes,
                                 floor=config.lr_min_ratio)


def _state_tensors(transformer, encoder, ema_t, ema_e, optimizer, gen: torch.Generator):
    tensors = {f"model.transformer.{k}": v for k, v in transformer.state_dict().items()}
    tensors.update({f"model.encoder.{k}": v for k, v in encoder.state_dict().items()})
    tensors.update({f"ema.transformer.{k}": v for k, v in ema_t.state_dict().items()})
    tensors.update({f"ema.encoder.{k}": v for k, v in ema_e.state_dict().items()})
    optim_tensors, optim_meta = optimizer_to_flat(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch_generator"] = gen.get_state()
    return tensors, optim_meta


def _load_prefixed(module, tensors, prefix):
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def train_flow_generator(config, run_dir: str, recipe: FlowRecipe, resume: bool = False,
                         progress: bool = True) -> str:
    """Train (or resume) a rectified-flow generator recipe in ``run_dir``; returns the exported model
    folder. ``config`` is the recipe's dataclass (the fields of the loop: seed, steps, max_minutes,
    batch_size, lr, warmup_steps, lr_min_ratio, weight_decay, grad_clip, ema_decay, label_dropout,
    checkpoint_every, log_every, threads, and whatever ``recipe.build`` reads)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from hasten.io import write_json_atomic

    if config.threads:
        torch.set_num_threads(config.threads)
    ckpt_dir = os.path.join(run_dir, "checkpoint")
    transformer, encoder = recipe.build(config)
    ema_t, ema_e = copy.deepcopy(transformer), copy.deepcopy(encoder)
    for p in list(ema_t.parameters()) + list(ema_e.parameters()):
        p.requires_grad_(False)
    params = list(transformer.parameters()) + list(encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(config.seed + 1)
    start, elapsed = 0, 0.0
    if resume:
        tensors, state = load_checkpoint(ckpt_dir)
        if state.get("config") != asdict(config):
            raise HastenError(f"{ckpt_dir}: the checkpoint was made with another config; resume "
                              "with the same --config and --set values")
        _load_prefixed(transformer, tensors, "model.transformer.")
        _load_prefixed(encoder, tensors, "model.encoder.")
        _load_prefixed(ema_t, tensors, "ema.transformer.")
        _load_prefixed(ema_e, tensors, "ema.encoder.")
        optimizer_from_flat(optimizer, tensors, state["optimizer"])
        gen.set_state(tensors["rng.torch_generator"])
        start, elapsed = state["step"], state["elapsed_s"]
        logger.info("resumed %s at step %d", ckpt_dir, start)
    elif os.path.exists(ckpt_dir):
        raise HastenError(f"{run_dir}: already holds a run; pass --resume to continue it or choose "
                          "another --out")
    os.makedirs(run_dir, exist_ok=True)
    write_json_atomic(os.path.join(run_dir, "config.json"), asdict(config))

    writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start)
    if start == 0:
        writer.add_text("config", "```\n" + "\n".join(f"{k}: {v}" for k, v in asdict(config).items())
                        + "\n```")
    data = recipe.batches(config.seed, config.batch_size, start=start)
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc=recipe.name,
               dynamic_ncols=True)
    t_last = time.perf_counter()
    running = None

    def save(step):
        tensors, optim_meta = _state_tensors(transformer, encoder, ema_t, ema_e, optimizer, gen)
        save_checkpoint(ckpt_dir, tensors, {"step": step, "elapsed_s": elapsed,
                                            "config": asdict(config), "optimizer": optim_meta})

    complete = progress_at(config, start, elapsed) >= 1.0
    done_steps = start
    for step in range(start, start if complete else config.steps):
        images_np, labels_np = next(data)
        images, labels = torch.from_numpy(images_np), torch.from_numpy(labels_np)
        drop = torch.rand(labels.shape, generator=gen) < config.label_dropout
        labels = torch.where(drop, torch.full_like(labels, encoder.null_class), labels)
        sigmas = torch.sigmoid(torch.randn(labels.shape, generator=gen))  # logit-normal (SD3)
        noise = torch.randn(images.shape, generator=gen)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, step, elapsed)
        loss = recipe.loss(transformer, encoder, images, labels, sigmas, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        # EMA with warm-up (decay grows with the step count) so short runs still average sensibly.
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for src, dst in ((transformer, ema_t), (encoder, ema_e)):
                for p_src, p_dst in zip(src.parameters(), dst.parameters()):
                    p_dst.lerp_(p_src, 1 - decay)
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % config.log_every == 0:
            writer.add_scalar("losses/flow", value, step + 1)
            writer.add_scalar("losses/flow_smoothed", running, step + 1)
            writer.add_scalar("charts/lr", optimizer.param_groups[0]["lr"], step + 1)
            writer.add_scalar("charts/grad_norm", float(grad_norm), step + 1)
            writer.add_scalar("timing_s/elapsed", elapsed, step + 1)
        done_steps = step + 1
        finished = progress_at(config, done_steps, elapsed) >= 1.0
        if (step + 1) % config.checkpoint_every == 0 or finished:
            save(step + 1)
        if finished:
            if step + 1 < config.steps:
                logger.info("stopping at step %d: max_minutes=%s reached", step + 1, config.max_minutes)
            break
    bar.close()
    writer.close()
    if complete:
        logger.info("run already complete at step %d", start)
    out = os.path.join(run_dir, "model")
    recipe.export(ema_t, ema_e, config, out, train_seconds=elapsed, train_steps=done_steps)
    return out




def export_flow_generator(transformer, encoder, config, out: str, train_seconds: float, train_steps: int | None,
                          meta: dict) -> None:
    """Write a generator folder (diffusers ``save_pretrained`` layout) that ``load_generator`` reads:
    the transformer, the class encoder, the Euler scheduler at ``config.shift`` and
    ``hasten_generator.json`` (``meta`` plus the training record)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from hasten import __version__
    from hasten.io import atomic_directory, write_json_atomic

    with atomic_directory(out) as tmp:
        transformer.save_pretrained(os.path.join(tmp, "transformer"), safe_serialization=True)
        encoder.save_pretrained(os.path.join(tmp, "class_encoder"))
        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.shift).save_pretrained(
            os.path.join(tmp, "scheduler"))
        write_json_atomic(os.path.join(tmp, "hasten_generator.json"), {
            **meta,
            "num_steps": config.num_steps,
            "guidance_scale": config.guidance_scale,
            "hasten_version": __version__,
            "train_seconds": round(train_seconds, 1),
            "train_steps": config.steps if train_steps is None else train_steps,
            "train_threads": torch.get_num_threads(),
            "train_config": asdict(config),
        })
    logger.info("exported generator to %s (%.0f s of training)", out, train_seconds)
