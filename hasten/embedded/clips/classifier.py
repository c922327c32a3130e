"""The evaluation classifier of the clips classes (motion x shape x colour): class accuracy and
Frechet-distance features of video samples.

Trained on real procedural clips only (``hasten generator train-classifier --config
experiments/clips_classifier.yaml``) and shipped next to ``embedded:clips``; used only to evaluate
samples, never as a reward. A (2+1)D CNN: 2D convolutions per frame, then temporal convolutions,
so that it must see the motion (a rotating circle and a sliding one differ only over time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hasten.embedded.clips import data as clips_data
from hasten.embedded.shapes.classifier import ClassifierTrainConfig, ShapesClassifier, train_classifier


@dataclass
class ClipsClassifierConfig(ClassifierTrainConfig):
    """The clips classifier recipe (the shapes recipe's fields, smaller batches of clips)."""

    recipe: str = "clips"
    steps: int = 1200
    batch_size: int = 32
    width: int = 16


class ClipsClassifier(ShapesClassifier):
    """(B, 3, F, 32, 32) clips in [-1, 1] -> logits (B, 64); ``features`` -> (B, feature_dim)."""

    dataset = clips_data

    def __init__(self, num_classes: int = clips_data.NUM_CLASSES, width: int = 16, feature_dim: int = 128):
        nn.Module.__init__(self)
        self.config = {"num_classes": num_classes, "width": width, "feature_dim": feature_dim, "data": "clips"}

        def stage(cin, cout):  # per frame in space, then across frames
            return nn.Sequential(
                nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(cout), nn.ReLU(),
                nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0)), nn.BatchNorm3d(cout), nn.ReLU(),
                nn.MaxPool3d((1, 2, 2)))

        self.body = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width),
                                  nn.Conv3d(4 * width, 4 * width, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)),
                                  nn.ReLU())
        frames = (clips_data.FRAMES + 1) // 2
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * frames * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)


def train_clips_classifier(config: ClipsClassifierConfig, out: str, progress: bool = True) -> dict:
    """Train the clips evaluation classifier on fresh procedural clips and save it to ``out``."""
    return train_classifier(config, out, progress, model_class=ClipsClassifier, dataset=clips_data)

