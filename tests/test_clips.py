"""embedded:clips' data set and generator recipe (a tiny config, a few steps, built here)."""

import json
import os

import numpy as np
import pytest
import torch

import hasten
from hasten.cli import main
from hasten.embedded.clips import data
from hasten.embedded.clips.recipe import ClipsGeneratorConfig, train_generator

from test_bad_inputs import fails

TINY = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=32, batch_size=2, max_minutes=0,
            checkpoint_every=1, log_every=1)


def test_clips_are_deterministic_and_their_motion_shows():
    clips, labels = data.make_batch(seed=3, batch_size=64, labels=np.arange(64))
    again, _ = data.make_batch(seed=3, batch_size=64, labels=np.arange(64))
    assert clips.shape == (64, 3, data.FRAMES, 32, 32) and np.array_equal(clips, again)
    assert clips.min() >= -1 and clips.max() <= 1 and data.NUM_CLASSES == 64
    motion, shape, colour = data.split_label(labels)
    assert data.CLASS_NAMES[int(labels[37])] == f"{data.MOTIONS[motion[37]]} {list(data.COLOURS)[colour[37]]} " \
                                               f"{data.SHAPES[shape[37]]}"
    change = np.abs(clips[:, :, -1] - clips[:, :, 0]).mean(axis=(1, 2, 3))
    for m in (0, 2, 3):  # sliding, growing, recolouring: the last frame differs from the first
        assert (change[motion == m] > 0.02).all(), data.MOTIONS[m]


def test_the_clips_recipe_trains_exports_and_resumes(tmp_path):
    run = str(tmp_path / "run")
    out = train_generator(ClipsGeneratorConfig(steps=2, **TINY), run, progress=False)
    gen = hasten.load_generator(out)
    assert gen.family.name == "wan" and gen.sample_shape == (3, 8, 32, 32) and gen.num_classes == 64
    assert gen.image_tokens() == 8 * 8 * 8 and gen.meta["train_steps"] == 2
    clips, stats = gen.sample(["sliding red circle", "growing blue plus"], [0, 1], num_steps=4,
                              decisions=np.array([[1, 2, 2], [0, 1, 1]]))
    assert clips.shape == (2, 3, 8, 32, 32) and bool((stats["flops_fraction"] < 1).all())
    again = train_generator(ClipsGeneratorConfig(steps=2, **TINY), run, resume=True, progress=False)
    assert again == out  # the run is complete: resuming trains no further and exports the same model
    with pytest.raises(hasten.HastenError, match="another config"):
        train_generator(ClipsGeneratorConfig(steps=3, **TINY), run, resume=True, progress=False)


def test_hasten_generator_train_picks_the_recipe_from_the_config(tmp_path, capsys):
    sets = [f"--set={k}={v}" for k, v in {**TINY, "steps": 1}.items()]
    assert main(["generator", "train", "--config", "experiments/clips_generator.yaml", *sets,
                 "--out", str(tmp_path / "clips"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "clips" / "model" / "hasten_generator.json").read_text())
    assert meta["family"] == "wan" and meta["frames"] == 8 and meta["train_config"]["recipe"] == "clips"
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: movies\n")
    fails(capsys, ["generator", "train", "--config", bad, "--out", tmp_path / "x"], "bad.yaml", "recipe='movies'",
          "clips", "shapes")
    assert not os.path.exists(tmp_path / "x")


def test_hasten_sample_writes_clips_as_an_animated_gif_grid(tmp_path, capsys):
    from PIL import Image

    out = train_generator(ClipsGeneratorConfig(steps=1, **TINY), str(tmp_path / "run"), progress=False)
    gif = tmp_path / "clips.gif"
    assert main(["sample", "--generator", out, "--classes", "0,17", "--n", "2", "--steps", "3", "--quiet",
                 "--out", str(gif)]) == 0
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == data.FRAMES
    strip = tmp_path / "clips.png"
    assert main(["sample", "--generator", out, "--classes", "0", "--n", "1", "--steps", "3", "--quiet",
                 "--out", str(strip)]) == 0
    with Image.open(strip) as image:  # one row: the clip's 8 frames side by side
        assert image.width > 7 * image.height
    capsys.readouterr()


def test_video_metrics_per_frame_and_over_time():
    from hasten.metrics import psnr, ssim, temporal_error

    clips, _ = data.make_batch(seed=5, batch_size=2)
    clips = torch.from_numpy(clips)
    frozen = clips[:, :, :1].expand_as(clips)  # the first frame held: right picture, no motion
    assert psnr(clips, clips).tolist() == [100.0, 100.0] and ssim(clips, clips).min() > 0.999
    assert float(temporal_error(clips, clips).max()) == 0.0
    assert bool((temporal_error(frozen, clips) > 0).all()) and bool((psnr(frozen, clips) < 100).all())


def test_the_video_main_job_runs_on_a_tiny_clips_generator(tmp_path, monkeypatch):
    """experiments/video_quickstart.yaml as written, its generator swapped for a tiny clips one."""
    from hasten.trainers.grpo import GRPOTrainer, load_experiment

    out = train_generator(ClipsGeneratorConfig(steps=1, **TINY), str(tmp_path / "gen"), progress=False)
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = load_experiment("experiments/video_quickstart.yaml")
    assert config.generator == "embedded:clips" and config.grpo.max_minutes == 20
    config = load_experiment("experiments/video_quickstart.yaml", [
        f"generator={out}", "num_steps=6", "train_pairs=4", "grpo.iterations=2", "grpo.groups_per_iteration=2",
        "grpo.group_size=2", "grpo.epochs=2", "logging.progress=false", "logging.sample_every=1",
        "rollouts.threads=1"])
    trainer = GRPOTrainer(config, str(tmp_path / "run"))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train()
    unchanged = [k for k, v in trainer.policy.state_dict().items() if torch.equal(before[k], v)]
    assert unchanged and all("sparse_attention" in k for k in unchanged)  # (that knob is held at level 0)
    assert os.path.isfile(tmp_path / "run" / "policy" / "policy.safetensors")
    assert trainer.references.get([0], [int(trainer.pairs[0, 1])]).shape[1:] == (3, 8, 32, 32)


def test_hasten_compare_on_clips_reports_per_frame_psnr_and_temporal_error(tmp_path):
    from hasten.bench.compare import compare
    from hasten.bench.compare_report import markdown

    out = train_generator(ClipsGeneratorConfig(steps=1, **TINY), str(tmp_path / "gen"), progress=False)
    from hasten.embedded.clips.classifier import ClipsClassifier

    gen = hasten.load_generator(out)
    gen.default_steps = 6
    classifier = str(tmp_path / "classifier")
    ClipsClassifier(width=4, feature_dim=8).save_pretrained(classifier)  # untrained: only the plumbing
    result = compare(gen, None, classifier=classifier, n=8, uniform_steps=[3], methods="uniform,firstblockcache,dbcache",
                     timing_samples=1, timing_repeats=1, timing_batches=[1], progress=False)
    assert all("temporal_error" in r for r in result["methods"])
    assert all(r["class_accuracy"] is not None and r["frechet_distance"] is not None for r in result["methods"])
    uniform = next(r for r in result["methods"] if r["family"] == "uniform steps")
    assert uniform["temporal_error"] > 0 and uniform["psnr_db"] < 100
    table = markdown(result)
    assert "PSNR to full (dB) per frame" in table and "temporal error" in table


def _tiny_clips_generator(tmp_path):
    out = train_generator(ClipsGeneratorConfig(steps=1, **TINY), str(tmp_path / "gen"), progress=False)
    return hasten.load_generator(out)


def test_the_denoising_env_on_clips_passes_check_env(tmp_path):
    from gymnasium.utils.env_checker import check_env

    import gymnasium

    import hasten.envs  # noqa: F401  (registers the envs)

    env = gymnasium.make("hasten/Denoising-v0", disable_env_checker=True, generator=_tiny_clips_generator(tmp_path),
                         num_steps=4)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.observation_space.contains(obs)


@pytest.mark.parametrize("forecast", [False, "noise"])
def test_sampling_with_a_policy_equals_the_envs_rollout_on_clips(tmp_path, forecast):
    """The policy plugged into the frozen clips model (hasten.accelerate) makes the env's decisions
    and gives the env's clips, bit for bit."""
    from hasten.envs.denoising import DenoisingVectorEnv
    from hasten.policies import Policy, PolicyConfig

    gen = _tiny_clips_generator(tmp_path)
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(family="wan", num_steps=6, forecast=bool(forecast),
                                 forecast_space=forecast or "velocity",
                                 init_probs={"step_skip": [0.4, 0.3, 0.3, 0, 0, 0], "cache_reuse": [0.3, 0.3, 0.4]}))
    labels, seeds = [3, 40, 17], [5, 6, 7]
    env = DenoisingVectorEnv(num_envs=3, generator=gen, num_steps=6, budget=0.4, forecast=forecast)
    obs, _ = env.reset(options={"conditions": labels, "seeds": seeds})
    while not env.all_done():
        actions, _ = policy.act(torch.from_numpy(obs), greedy=True)
        obs, *_ = env.step(actions.numpy())
    with hasten.accelerate(gen, policy, budget=0.4, greedy=True) as acc:
        clips, stats = gen.sample(labels, seeds)
    assert clips.shape == (3, 3, 8, 32, 32) and (stats["flops_fraction"] < 1).all()
    assert torch.equal(clips, env.images())
    np.testing.assert_array_equal(stats["decisions"], env.rollout.decisions.numpy())
    assert acc.stats is stats


def test_embedded_clips_ships_with_its_classifier_and_the_recipe_that_reproduces_it():
    import yaml

    from hasten.models.registry import evaluation_classifier

    gen = hasten.load_generator("embedded:clips")
    assert gen.family.name == "wan" and gen.sample_shape == (3, 8, 32, 32) and gen.num_classes == 64
    assert gen.default_steps == 28 and gen.meta["class_names"] == list(data.CLASS_NAMES)
    recipe = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "experiments", "clips_generator.yaml")))
    trained = gen.meta["train_config"]
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in trained.items() if k in recipe} == recipe
    assert gen.meta["train_seconds"] <= 90 * 60
    classifier = evaluation_classifier(gen)
    clips, _ = gen.sample(["sliding red circle"], [0], num_steps=2)
    from hasten.embedded.shapes.classifier import classify

    preds, feats = classify(classifier, clips)
    assert preds.shape == (1,) and feats.shape[0] == 1


def test_every_library_cache_saves_compute_on_wan(tmp_path):
    """diffusers' default attention patterns miss Wan's attn1 / attn2: without hasten's patterns
    TaylorSeer and FasterCache hook nothing on Wan, and SeaCache needs the clip as (C, F, H, W)."""
    from hasten.bench.peers import default_peers
    from hasten.knobs.cost import ExecutedFlops

    gen = _tiny_clips_generator(tmp_path)
    steps = 16
    full, _ = gen.sample([0], [0], num_steps=steps)
    with ExecutedFlops() as counter:
        gen.sample([0], [0], num_steps=steps)
    full_flops = counter.flops
    for family, settings in default_peers(steps).items():
        peer = settings[-1]  # the most aggressive setting
        with peer.applied(gen, steps), ExecutedFlops() as counter:
            clips = peer.sample(gen, [0], [0], num_steps=steps)
        assert counter.flops < 0.9 * full_flops, family
        assert 0 < float((clips - full).abs().max()) < 1.0, family
