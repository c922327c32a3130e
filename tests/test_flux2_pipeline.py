"""A Flux2Pipeline folder as a frozen generator (tiny random Mistral-3 text encoder, a byte tokenizer
with a chat template, guidance-distilled transformer and VAE saved with ``save_pretrained``, no
download): hasten's sampler against the pipeline's own output (its empirical schedule shift, the
guidance as an input), a policy acting the same in training and inside the pipeline, the experiment file."""

import os

import pytest
import torch

import hasten
from hasten.models.pipeline import PipelineGenerator
from hasten.trainers.grpo import GRPOTrainer, load_experiment

from tiny_families import assert_training_matches_the_pipeline, make_flux2_with_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red fox in the snow", "two blue cubes", "a lighthouse at night"]
STEPS, SIZE, TOKENS = 6, 32, 24  # 32 px / the tiny VAE's 2 / FLUX.2's 2x2 patches = 8x8 tokens of 16 channels
TINY = dict(resolution=SIZE, dtype="float32", device="cpu", max_sequence_length=TOKENS)


@pytest.fixture(scope="module")
def flux2(tmp_path_factory):
    pipe = make_flux2_with_text()
    path = str(tmp_path_factory.mktemp("flux2") / "pipeline")
    pipe.save_pretrained(path)
    return pipe, path


def _pipeline_latents(pipe, prompts, noise, guidance):
    out = pipe(prompt=prompts, height=SIZE, width=SIZE, latents=noise, num_inference_steps=STEPS,
               guidance_scale=guidance, output_type="latent", max_sequence_length=TOKENS).images
    return out.permute(0, 2, 1).reshape(noise.shape)  # Flux2Pipeline._pack_latents, undone


def test_full_compute_equals_the_flux2_pipelines_own_output(flux2):
    pipe, path = flux2
    gen = hasten.load_generator(path, prompts=PROMPTS, **TINY)
    assert isinstance(gen, PipelineGenerator) and gen.family.name == "flux2"
    assert gen.sample_shape == (16, 8, 8) and gen.default_guidance == 4.0 and gen.distilled_guidance
    prompts, seeds = [PROMPTS[2], PROMPTS[0]], [11, 5]
    latents, _ = gen.sample(prompts, seeds, num_steps=STEPS, guidance=3.0)
    expected = _pipeline_latents(pipe, prompts, gen.noise(seeds), 3.0)
    assert (latents - expected).abs().max().item() < 1e-4
    assert (latents - gen.noise(seeds)).abs().max() > 0.5
    preview = gen.preview(latents)  # batch-norm statistics undone, patches unfolded, decoded
    assert preview.shape == (2, 3, SIZE, SIZE) and preview.abs().max() <= 1


def test_a_policy_acts_the_same_in_training_and_inside_the_flux2_pipeline(flux2):
    pipe, path = flux2
    gen = hasten.load_generator(path, prompts=PROMPTS, **TINY)
    assert_training_matches_the_pipeline(gen, pipe, _pipeline_latents, "flux2", PROMPTS, STEPS, 4.0, 1e-4)

def test_the_flux2_experiment_file_loads_and_runs_on_a_tiny_flux2_pipeline(flux2, tmp_path, monkeypatch):
    _, path = flux2
    monkeypatch.chdir(REPO)
    config = load_experiment("experiments/flux2.yaml")
    assert config.generator_options["resolution"] == 1024 and config.guidance == 4.0
    tiny = [f"generator={path}", f"generator_options.resolution={SIZE}", "generator_options.dtype=float32",
            "generator_options.device=cpu", f"generator_options.max_sequence_length={TOKENS}", f"num_steps={STEPS}",
            "grpo.iterations=1", "grpo.groups_per_iteration=2", "grpo.group_size=2", "grpo.epochs=2",
            "train_pairs=2", "rewards.discriminator.channels=16", "logging.progress=false", "rollouts.threads=1"]
    trainer = GRPOTrainer(load_experiment("experiments/flux2.yaml", tiny), str(tmp_path / "flux2"))
    assert trainer.generator.num_classes == 64 and trainer.generator.pipeline_class == "Flux2Pipeline"
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train()
    assert [k for k, v in trainer.policy.state_dict().items() if torch.equal(before[k], v)] == []
    assert os.path.isfile(tmp_path / "flux2" / "policy" / "policy.safetensors")
