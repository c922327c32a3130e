"""A WanPipeline folder as a frozen generator (tiny random UMT5, transformer and VAE saved with
``save_pretrained``, no download): hasten's sampler against the pipeline's own output, a policy
acting the same in training and inside the pipeline, and a GRPO iteration on it."""

import os

import pytest
import torch

import hasten
from hasten.models.pipeline import PipelineGenerator
from hasten.trainers.grpo import GRPOTrainer, load_experiment

from tiny_families import assert_training_matches_the_pipeline, make_pipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red fox in the snow", "two blue cubes", "a lighthouse at night"]
STEPS, TOKENS, SIZE, FRAMES = 6, 8, 64, 9  # 64 px / the VAE's 8 = 8x8 latents, 9 frames = 3 latent frames
TINY = dict(resolution=SIZE, frames=FRAMES, dtype="float32", device="cpu", max_sequence_length=TOKENS)


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    pipe = make_pipe("wan", text=True)
    path = str(tmp_path_factory.mktemp("wan") / "pipeline")
    pipe.save_pretrained(path)
    return pipe, path


def _pipeline_latents(pipe, prompts, noise, guidance):
    return pipe(prompt=prompts, negative_prompt="", height=SIZE, width=SIZE, num_frames=FRAMES, latents=noise,
                num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent",
                max_sequence_length=TOKENS).frames


def test_full_compute_equals_the_wan_pipelines_own_output(wan):
    pipe, path = wan
    gen = hasten.load_generator(path, prompts=PROMPTS, **TINY)
    assert isinstance(gen, PipelineGenerator) and gen.family.name == "wan"
    assert gen.sample_shape == (4, 3, 8, 8) and gen.default_guidance == 5.0
    prompts, seeds = [PROMPTS[2], PROMPTS[0]], [11, 5]
    latents, _ = gen.sample(prompts, seeds, num_steps=STEPS, guidance=4.0)
    expected = _pipeline_latents(pipe, prompts, gen.noise(seeds), 4.0)
    assert (latents - expected).abs().max().item() < 1e-5
    assert (latents - gen.noise(seeds)).abs().max() > 0.5
    preview = gen.preview(latents)  # the VAE decodes the clips; a grid shows the middle frame
    assert preview.shape == (2, 3, SIZE, SIZE) and preview.abs().max() <= 1


def test_a_policy_acts_the_same_in_training_and_inside_the_wan_pipeline(wan):
    pipe, path = wan
    gen = hasten.load_generator(path, prompts=PROMPTS, **TINY)
    assert_training_matches_the_pipeline(gen, pipe, _pipeline_latents, "wan", PROMPTS, STEPS, 4.0, 1e-5)

def test_a_grpo_iteration_runs_on_a_tiny_wan_pipeline(wan, tmp_path):
    _, path = wan
    overrides = [f"generator={path}", f"generator_options.resolution={SIZE}", f"generator_options.frames={FRAMES}",
                 "generator_options.dtype=float32", "generator_options.device=cpu",
                 f"generator_options.max_sequence_length={TOKENS}", "generator_options.prompts=[a red fox, snow]",
                 f"num_steps={STEPS}", "grpo.iterations=1", "grpo.groups_per_iteration=2", "grpo.group_size=2",
                 "grpo.epochs=2", "train_pairs=2", "rewards.discriminator.channels=4", "logging.progress=false",
                 "rollouts.threads=1"]
    trainer = GRPOTrainer(load_experiment(None, overrides), str(tmp_path / "run"))
    assert trainer.generator.family.name == "wan" and trainer.guidance == 5.0
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train()
    after = trainer.policy.state_dict()
    assert [k for k in before if torch.equal(before[k], after[k])] == []
    assert trainer.policy.config.family == "wan"
    assert os.path.isfile(tmp_path / "run" / "policy" / "policy.safetensors")


def test_the_wan_experiment_file_loads_and_runs_on_a_tiny_wan_pipeline(wan, tmp_path, monkeypatch):
    """experiments/wan_t2v.yaml is for real weights on a GPU; here it is loaded as written, then run
    for one iteration with its generator swapped for the tiny WanPipeline folder."""
    _, path = wan
    monkeypatch.chdir(REPO)  # prompts_file is relative to where hasten runs
    config = load_experiment("experiments/wan_t2v.yaml")
    options = config.generator_options
    assert (options["resolution"], options["width"], options["frames"]) == (480, 832, 81)
    assert (config.num_steps, config.guidance, config.rewards["discriminator"]["channels"]) == (50, 5.0, 16)
    tiny = [f"generator={path}", f"generator_options.resolution={SIZE}", f"generator_options.width={SIZE}",
            f"generator_options.frames={FRAMES}", "generator_options.dtype=float32", "generator_options.device=cpu",
            f"generator_options.max_sequence_length={TOKENS}", f"num_steps={STEPS}", "grpo.iterations=1",
            "grpo.groups_per_iteration=2", "grpo.group_size=2", "grpo.epochs=1", "train_pairs=2",
            "rewards.discriminator.channels=4", "logging.progress=false", "rollouts.threads=1"]
    trainer = GRPOTrainer(load_experiment("experiments/wan_t2v.yaml", tiny), str(tmp_path / "wan_t2v"))
    assert trainer.generator.num_classes == 64 and trainer.generator.pipeline_class == "WanPipeline"
    trainer.train()
    assert os.path.isfile(tmp_path / "wan_t2v" / "policy" / "policy.safetensors")
