"""A QwenImagePipeline folder as a frozen generator (tiny random Qwen2.5-VL text encoder, byte-level
tokenizer, transformer and VAE saved with ``save_pretrained``, no download): hasten's sampler against
the pipeline's own output (true CFG with its norm rescaling, prompts of different lengths padded and
masked), a policy acting the same in training and inside the pipeline, the experiment file."""

import os

import pytest
import torch

import hasten
from hasten.models.flux_pixel import pack, unpack
from hasten.models.pipeline import PipelineGenerator
from hasten.trainers.grpo import GRPOTrainer, load_experiment

from tiny_families import assert_training_matches_the_pipeline, make_qwen_with_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red fox in the snow", "cubes", "a lighthouse at night on a rocky cliff"]  # different lengths
STEPS, SIZE = 6, 128  # 128 px / the VAE's 8 = 16x16 latents, 2x2 packed: 64 tokens
TINY = dict(resolution=SIZE, dtype="float32", device="cpu", negative_prompt=" ")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    pipe = make_qwen_with_text()
    path = str(tmp_path_factory.mktemp("qwen") / "pipeline")
    pipe.save_pretrained(path)
    return pipe, path


def _pipeline_latents(pipe, prompts, noise, guidance):
    out = pipe(prompt=prompts, negative_prompt=[" "] * len(prompts), true_cfg_scale=guidance, height=SIZE,
               width=SIZE, latents=pack(noise), num_inference_steps=STEPS, output_type="latent").images
    return unpack(out, SIZE // 8, SIZE // 8)


def test_full_compute_equals_the_qwen_pipelines_own_output(qwen):
    pipe, path = qwen
    gen = hasten.load_generator(path, prompts=PROMPTS, **TINY)
    assert isinstance(gen, PipelineGenerator) and gen.family.name == "qwen-image"
    assert gen.sample_shape == (4, 16, 16) and gen.default_guidance == 4.0
    assert gen.class_encoder.mask is not None  # the prompts differ in length: padded and masked
    for prompts, seeds in (([PROMPTS[2], PROMPTS[0]], [11, 5]), ([PROMPTS[1]], [3])):
        latents, _ = gen.sample(prompts, seeds, num_steps=STEPS, guidance=4.0)
        expected = _pipeline_latents(pipe, prompts, gen.noise(seeds), 4.0)
        assert (latents - expected).abs().max().item() < 1e-4
    assert (latents - gen.noise(seeds)).abs().max() > 0.5
    preview = gen.preview(latents)  # the VAE decodes one-frame clips
    assert preview.shape == (1, 3, SIZE, SIZE) and preview.abs().max() <= 1


def test_a_policy_acts_the_same_in_training_and_inside_the_qwen_pipeline(qwen):
    pipe, path = qwen
    gen = hasten.load_generator(path, prompts=PROMPTS, **TINY)
    assert_training_matches_the_pipeline(gen, pipe, _pipeline_latents, "qwen-image", PROMPTS, STEPS, 4.0, 1e-4)

def test_the_qwen_experiment_file_loads_and_runs_on_a_tiny_qwen_pipeline(qwen, tmp_path, monkeypatch):
    _, path = qwen
    monkeypatch.chdir(REPO)
    config = load_experiment("experiments/qwen_image.yaml")
    assert config.generator_options["resolution"] == 1328 and config.guidance == 4.0
    tiny = [f"generator={path}", f"generator_options.resolution={SIZE}", "generator_options.dtype=float32",
            "generator_options.device=cpu", "generator_options.max_sequence_length=0", f"num_steps={STEPS}",
            "grpo.iterations=1", "grpo.groups_per_iteration=2", "grpo.group_size=2", "grpo.epochs=2",
            "train_pairs=2", "rewards.discriminator.channels=4", "logging.progress=false", "rollouts.threads=1"]
    trainer = GRPOTrainer(load_experiment("experiments/qwen_image.yaml", tiny), str(tmp_path / "qwen_image"))
    assert trainer.generator.num_classes == 64 and trainer.generator.pipeline_class == "QwenImagePipeline"
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train()
    assert [k for k, v in trainer.policy.state_dict().items() if torch.equal(before[k], v)] == []
    assert os.path.isfile(tmp_path / "qwen_image" / "policy" / "policy.safetensors")
