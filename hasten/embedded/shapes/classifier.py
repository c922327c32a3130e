"""The evaluation classifier of the shapes classes: class accuracy and Frechet-distance features.

Trained on real procedural data only, by ``hasten generator train-classifier``, and shipped next
to the embedded generator (``classifier/``). It is used only to *evaluate* samples (the role of
Inception in FID); it is never a training reward, so a policy cannot be tuned against it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from hasten.embedded.shapes import data as shapes_data
from hasten.io import load_safetensors_into, read_json, save_module

logger = logging.getLogger(__name__)


@dataclass
class ClassifierTrainConfig:
    """The classifier recipe."""

    seed: int = 1234  # weights and data stream (a stream distinct from the generator's)
    steps: int = 1500  # optimiser steps
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak AdamW learning rate (cosine decay)
    width: int = 32  # channels of the first conv stage (doubled twice)
    feature_dim: int = 128  # dimension of the features used for the Frechet distance
    threads: int = 0  # torch threads (0 = torch's default)

    def __post_init__(self):
        for name in ("steps", "batch_size", "width", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")


class ShapesClassifier(nn.Module):
    """A small CNN: (B, 3, 32, 32) in [-1, 1] -> logits (B, classes); ``features`` -> (B, F).

    ``dataset``: the procedural data set it recognises (what real-sample references are drawn from).
    """

    dataset = shapes_data

    def __init__(self, num_classes: int = shapes_data.NUM_CLASSES, width: int = 32,
                 feature_dim: int = 128):
        super().__init__()
        self.config = {"num_classes": num_classes, "width": width, "feature_dim": feature_dim}

        def stage(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2))

        self.body = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width))
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.body(images))  # (B, F)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def save_pretrained(self, path: str, extra: dict | None = None) -> None:
        save_module(self, path, {**self.config, **(extra or {})})

    @classmethod
    def from_pretrained(cls, path: str) -> "ShapesClassifier":
        config = read_json(os.path.join(path, "config.json"))
        model = cls(**{k: config[k] for k in ("num_classes", "width", "feature_dim") if k in config})
        load_safetensors_into(model, os.path.join(path, "model.safetensors"))
        return model.eval()


@torch.no_grad()
def classify(model: ShapesClassifier, images: torch.Tensor, batch_size: int = 256):
    """Returns (predicted labels (N,), features (N, F)) for images in [-1, 1]."""
    preds, feats = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.float())
        feats.append(f)
        preds.append(model.head(f).argmax(-1))
    return torch.cat(preds), torch.cat(feats)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, FID)."""
    from scipy import linalg

    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a = np.cov(feats_a, rowvar=False)
    cov_b = np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def load_classifier(path: str) -> ShapesClassifier:
    """An evaluation classifier folder: the shapes classifier, or the clips one (config ``data: clips``)."""
    if read_json(os.path.join(path, "config.json")).get("data") == "clips":
        from hasten.embedded.clips.classifier import ClipsClassifier

        return ClipsClassifier.from_pretrained(path)
    return ShapesClassifier.from_pretrained(path)


def real_accuracy(model: ShapesClassifier, n: int, seed: int = 777_000, dataset=shapes_data) -> float:
    """Accuracy on ``n`` fresh real images (clips, for ``dataset=clips data``; a seed never used in training)."""
    images, labels = dataset.make_batch(seed, n)
    preds, _ = classify(model, torch.from_numpy(images))
    return float((preds.numpy() == labels).mean())


def train_classifier(config: ClassifierTrainConfig, out: str, progress: bool = True, model_class=None,
                     dataset=shapes_data) -> dict:
    """Train the evaluation classifier on fresh procedural batches and save it to ``out``
    (``model_class`` / ``dataset``: the clips classifier and data set reuse this loop)."""
    from tqdm.auto import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = (model_class or ShapesClassifier)(width=config.width, feature_dim=config.feature_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps)
    data = dataset.batches(config.seed, config.batch_size)
    start = time.perf_counter()
    bar = tqdm(range(config.steps), disable=not progress, desc="classifier", dynamic_ncols=True)
    model.train()
    for _ in bar:
        images, labels = next(data)
        logits = model(torch.from_numpy(images))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    seconds = time.perf_counter() - start
    accuracy = real_accuracy(model, 4096, dataset=dataset)
    model.save_pretrained(out, extra={"train_config": asdict(config), "train_seconds": round(seconds, 1),
                                      "real_accuracy_4096": accuracy,
                                      "recipe": "hasten generator train-classifier"})
    logger.info("classifier: accuracy %.4f on 4096 fresh real images, %.0f s", accuracy, seconds)
    return {"accuracy": accuracy, "train_seconds": seconds, "path": out}
