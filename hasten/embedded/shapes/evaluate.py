"""``hasten generator eval``: how good the frozen generator is, and how much cutting steps costs.

Metrics (all from the evaluation classifier, never from a training reward):
- class accuracy of generated samples (does a "red circle" sample look like a red circle);
- Frechet distance between classifier features of generated and fresh real images;
- the classifier's own accuracy on fresh real images (how far to trust the two above);
- seconds per sample;
- for each reduced step count: PSNR to the default-step sample of the same class and noise,
  and class accuracy (the uniform-step-reduction baseline every accelerator must beat).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
import torch

from hasten.embedded.shapes.classifier import ShapesClassifier, classify, frechet_distance, real_accuracy
from hasten.io import machine_description
from hasten.metrics import psnr  # noqa: F401  (re-exported: hasten.embedded.shapes.evaluate.psnr)

logger = logging.getLogger(__name__)


def _finite_mean(values: torch.Tensor, cap: float = 100.0) -> float:
    """Mean with +inf (identical images) capped, so one exact match does not make the mean inf."""
    return float(values.clamp(max=cap).mean())


def factor_accuracy(predicted, target, class_names, factors) -> dict[str, float]:
    """Accuracy of each word of the class name ("sliding" / "red" / "circle"): which factor a
    generator gets right when it misses the class."""
    words = [name.split() for name in class_names]
    return {factor: float(np.mean([words[int(p)][i] == words[int(t)][i] for p, t in zip(predicted, target)]))
            for i, factor in enumerate(factors)}


def evaluate_generator(generator, classifier: ShapesClassifier, n: int = 512, num_steps: int | None = None,
                       guidance: float | None = None, reduced_steps: tuple[int, ...] = (),
                       seed: int = 0, batch_size: int = 64, progress: bool = True) -> dict:
    """Evaluate ``generator`` on ``n`` (class, seed) pairs: classes cycle, seeds are seed..seed+n-1.

    Returns a JSON-able dict (see the module docstring for the metrics).
    """
    num_steps = generator.default_steps if num_steps is None else num_steps
    guidance = generator.default_guidance if guidance is None else guidance
    labels = [i % generator.num_classes for i in range(n)]
    seeds = [seed + i for i in range(n)]
    images, stats = generator.sample(labels, seeds, num_steps=num_steps, guidance=guidance,
                                     batch_size=batch_size, progress=progress)
    preds, feats = classify(classifier, images)
    target = torch.tensor(labels)
    real_images, _ = classifier.dataset.make_batch(seed + 10_000_019, n)  # shapes, or clips
    _, real_feats = classify(classifier, torch.from_numpy(real_images))
    result = {
        "n": n,
        "num_steps": num_steps,
        "guidance_scale": guidance,
        "class_accuracy": float((preds == target).float().mean()),
        "factor_accuracy": factor_accuracy(preds, target, generator.class_names, classifier.dataset.FACTORS),
        "frechet_distance": frechet_distance(feats.numpy().astype(np.float64),
                                             real_feats.numpy().astype(np.float64)),
        "classifier_real_accuracy": real_accuracy(classifier, max(n, 1024), dataset=classifier.dataset),
        "seconds_per_sample": stats["seconds"] / n,
        "batch_size": batch_size,
        "reduced_steps": [],
    }
    for steps in reduced_steps:
        fast, fast_stats = generator.sample(labels, seeds, num_steps=steps, guidance=guidance,
                                            batch_size=batch_size, progress=progress)
        fast_preds, fast_feats = classify(classifier, fast)
        values = psnr(fast, images)  # clips: per-frame PSNR
        result["reduced_steps"].append({
            "num_steps": steps,
            "fraction": steps / num_steps,
            "psnr_db": _finite_mean(values),
            "psnr_db_median": float(values.median()),
            "class_accuracy": float((fast_preds == target).float().mean()),
            "frechet_distance": frechet_distance(fast_feats.numpy().astype(np.float64),
                                                 real_feats.numpy().astype(np.float64)),
            "seconds_per_sample": fast_stats["seconds"] / n,
        })
    result["machine"] = machine_description()
    result["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    result["generator"] = generator.path
    return result


def markdown_table(result: dict) -> str:
    """The eval result as a markdown table (rows: default steps, then each reduced step count)."""
    lines = [
        f"n = {result['n']} (class, noise) pairs, guidance {result['guidance_scale']}, "
        f"{result['machine']}, {result['date']}. Classifier accuracy on fresh real images: "
        f"{result['classifier_real_accuracy']:.4f}." +
        ("" if "factor_accuracy" not in result else " Accuracy of each word of the class at the default steps: " +
         ", ".join(f"{k} {v:.4f}" for k, v in result["factor_accuracy"].items()) + "."),
        "",
        "| steps | fraction of default | PSNR to default-step sample (dB) | class accuracy | "
        "Frechet distance (classifier features) | s / sample |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {result['num_steps']} | 1 | reference | {result['class_accuracy']:.4f} | "
        f"{result['frechet_distance']:.2f} | {result['seconds_per_sample']:.3f} |",
    ]
    for row in result["reduced_steps"]:
        lines.append(
            f"| {row['num_steps']} | {row['fraction']:.3f} | {row['psnr_db']:.2f} | "
            f"{row['class_accuracy']:.4f} | {row['frechet_distance']:.2f} | {row['seconds_per_sample']:.3f} |")
    return "\n".join(lines) + "\n"

