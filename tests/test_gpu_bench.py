"""The GPU benchmark's CPU dry run (tiny configs, seconds) and the half-precision paths it relies on:
every family's knobs, the forecast and a policy with the frozen model in bf16 / fp16 and the head in
float32, and generator folders loaded with a device and dtype."""

import json

import numpy as np
import pytest
import torch

import hasten
from hasten.bench.gpu import MODELS, build
from hasten.cli import main
from hasten.errors import HastenError
from hasten.models.families import FAMILIES
from hasten.models.synthetic import random_generator

from test_bad_inputs import fails


def test_the_gpu_script_dry_runs_on_the_cpu_in_seconds(tmp_path):
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--device", "cpu", "--tiny", "--dtype", "bfloat16", "--repeats", "1",
                 "--batches", "1,2", "--json", str(out), "--markdown", str(md), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["tiny"] and result["dtype"] == "bfloat16" and [m["model"] for m in result["models"]] == list(MODELS)
    for model in result["models"]:
        assert len(model["levels"]) == 9 and model["levels"][0]["time_fraction"] == 1.0
        assert model["mixed_batch"]["rows"] == 2 and len(model["attention"]) == 2
        assert set(result["checks"][model["model"]]) >= {"all_but_first_within_35pct", "no_level_slower_than_full"}
    flux = result["models"][0]
    methods = {(r["method"].split(" (")[0], r["batch"]) for r in flux["methods"]}
    assert {("full compute", 1), ("hasten policy", 2), ("FirstBlockCache", 1), ("TaylorSeer", 2),
            ("DBCache", 1)} <= methods
    assert "TINY configs: a dry run" in md.read_text()


def test_the_gpu_script_says_when_there_is_no_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    fails(capsys, ["bench", "gpu", "--device", "cuda"], "--device cuda: CUDA is not available", "--device cpu --tiny")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_knob_runs_with_the_model_in_half_precision(family, dtype):
    name = next(n for n, (big, _) in MODELS.items() if big["family"] == family) if family in (
        "flux", "wan", "qwen-image") else None
    if name is None:  # the two families without a GPU-bench model, built the same way
        with torch.device("cpu"):
            gen = random_generator(family, image_size=16, channels=4, num_layers=2, num_single_layers=2)
        gen.transformer.to(dtype)
    else:
        gen = build(name, torch.device("cpu"), dtype, tiny=True)
    assert gen.dtype == dtype and next(gen.class_encoder.parameters()).dtype == torch.float32
    ref, _ = gen.sample([0, 1], [0, 1], num_steps=6)
    same, _ = gen.sample([0, 1], [0, 1], num_steps=6, decisions=[0, 0, 0])
    assert ref.dtype == torch.float32 and torch.equal(ref, same)  # the Euler state stays float32
    levels = np.array([[1, 1, 1], [2, 2, 2]])
    for forecast in (False, "noise"):
        out, stats = gen.sample([0, 1], [0, 1], num_steps=6, decisions=levels, forecast=forecast)
        assert torch.isfinite(out).all() and bool((stats["flops_fraction"] < 1).all())


def test_a_generator_folder_loads_on_a_device_in_a_dtype_and_a_float32_policy_drives_it():
    gen = hasten.load_generator("embedded:shapes", device="cpu", dtype="bfloat16")
    assert gen.dtype == torch.bfloat16 and gen.device.type == "cpu"
    policy = hasten.Policy.from_pretrained("embedded:shapes-budgets")
    assert next(policy.parameters()).dtype == torch.float32
    full32, _ = hasten.load_generator("embedded:shapes").sample(["red circle"], [0], num_steps=28)
    with hasten.accelerate(gen, policy, budget=0.35) as acc:
        images, stats = gen.sample(["red circle"], [0])
    assert stats["flops_fraction"][0] < 0.6 and acc.stats["model_calls"][0] < 28
    assert hasten.metrics.psnr(images, full32).item() > 20  # bf16 + acceleration, still the same picture
    with pytest.raises(HastenError, match="generator_options: dtype='half': expected one of"):
        hasten.load_generator("embedded:shapes", dtype="half")
    with pytest.raises(HastenError, match="takes only device and dtype"):
        hasten.load_generator("embedded:shapes", resolution=64)


def test_the_real_size_configs_are_the_checkpoints_architectures():
    """Built on the meta device (no memory): FLUX.1-dev 12B, Wan 2.1 1.3B, Qwen-Image 20B parameters."""
    from hasten.models.families import get_family

    expected = {"flux1-dev": (11.9, 57), "wan2.1-1.3b": (1.4, 30), "qwen-image": (20.4, 60)}
    for name, (big, _) in MODELS.items():
        config = dict(big)
        family = get_family(config.pop("family"))
        with torch.device("meta"):
            transformer = family.random(**{k: v for k, v in config.items() if k not in (
                "text_tokens", "num_steps", "guidance", "frames", "image_width")})
        billions = sum(p.numel() for p in transformer.parameters()) / 1e9
        assert (round(billions, 1), len(family.blocks(transformer))) == expected[name], name
