import numpy as np
import torch

from hasten.embedded.shapes.classifier import (ClassifierTrainConfig, ShapesClassifier, classify,
                                          frechet_distance, train_classifier)


def test_frechet_distance_hand_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert abs(frechet_distance(a, a)) < 1e-6
    # Same covariance, means 2 apart along one axis -> distance ~ 4.
    b = a + np.array([2.0, 0, 0])
    assert abs(frechet_distance(a, b) - 4.0) < 1e-6
    # Scaled by 2: trace term = 3 * (1 + 4 - 2 * 2) = 3.
    assert abs(frechet_distance(a, 2 * a) - 3.0) < 0.1


def test_short_training_learns_and_round_trips(tmp_path):
    config = ClassifierTrainConfig(steps=30, batch_size=32, width=4, feature_dim=8, lr=5e-3)
    result = train_classifier(config, str(tmp_path / "cls"), progress=False)
    assert result["accuracy"] > 1.5 / 16  # above chance after 30 steps
    model = ShapesClassifier.from_pretrained(str(tmp_path / "cls"))
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    preds, feats = classify(model, x)
    assert preds.shape == (5,) and feats.shape == (5, 8)
