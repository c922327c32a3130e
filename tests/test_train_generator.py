import os

import pytest
import torch
from safetensors.torch import load_file

from hasten.errors import HastenError
from hasten.models import load_generator
from hasten.embedded.shapes import recipe as tg
from hasten.embedded.shapes.recipe import GeneratorTrainConfig, train_generator

from conftest import TINY

SHORT = dict(TINY, batch_size=8, lr=3e-3, warmup_steps=0, log_every=1, checkpoint_every=3)


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_exports_a_loadable_generator(tmp_path):
    run = str(tmp_path / "run")
    out = train_generator(GeneratorTrainConfig(steps=40, **SHORT), run, progress=False)
    losses = scalars(run, "losses/flow")
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8
    gen = load_generator(out)
    assert gen.meta["train_config"]["steps"] == 40 and gen.meta["recipe"] == "hasten generator train"
    images, _ = gen.sample([0, 1], [0, 1], num_steps=2)
    assert torch.isfinite(images).all()


def test_killed_run_resumes_exactly(tmp_path, monkeypatch):
    config = GeneratorTrainConfig(steps=6, **SHORT)
    straight = train_generator(config, str(tmp_path / "a"), progress=False)

    real_batches = tg.shapes_data.batches

    def dying_batches(seed, batch_size, start=0):
        for i, batch in enumerate(real_batches(seed, batch_size, start)):
            if start + i == 4:  # killed while computing step 5, after the checkpoint at step 3
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(tg.shapes_data, "batches", dying_batches)
    with pytest.raises(KeyboardInterrupt):
        train_generator(config, str(tmp_path / "b"), progress=False)
    monkeypatch.setattr(tg.shapes_data, "batches", real_batches)
    with pytest.raises(HastenError, match="already holds a run; pass --resume"):
        train_generator(config, str(tmp_path / "b"), progress=False)
    resumed = train_generator(config, str(tmp_path / "b"), resume=True, progress=False)

    weights = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(os.path.join(straight, weights)), load_file(os.path.join(resumed, weights))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_resume_with_another_config_is_refused(tmp_path):
    run = str(tmp_path / "run")
    train_generator(GeneratorTrainConfig(steps=3, **SHORT), run, progress=False)
    with pytest.raises(HastenError, match="another config"):
        train_generator(GeneratorTrainConfig(steps=4, **SHORT), run, resume=True, progress=False)


def test_max_minutes_ends_the_run_and_its_decay_at_the_deadline(tmp_path):
    config = GeneratorTrainConfig(steps=50, max_minutes=1e-6, **SHORT)
    assert tg._lr_at(config, 10, elapsed_s=0.0) > tg._lr_at(config, 10, elapsed_s=1.0) == pytest.approx(
        config.lr * config.lr_min_ratio)
    run = str(tmp_path / "run")
    out = train_generator(config, run, progress=False)
    gen = load_generator(out)
    assert gen.meta["train_steps"] == 1 and gen.meta["train_config"]["max_minutes"] == 1e-6
    # resuming a run that reached its deadline trains no further and exports the same model
    again = train_generator(config, run, resume=True, progress=False)
    assert load_generator(again).meta["train_steps"] == 1
    with pytest.raises(ValueError, match="max_minutes"):
        GeneratorTrainConfig(max_minutes=-1)
