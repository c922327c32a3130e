"""hasten.accelerate: a policy inside diffusers' FluxPipeline / StableDiffusion3Pipeline (tiny random
components, prompt embeddings passed directly) and inside hasten's own sampler."""

import numpy as np
import pytest
import torch
from diffusers import (FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                       SD3Transformer2DModel, StableDiffusion3Pipeline)

import hasten
from hasten.errors import HastenError
from hasten.knobs import KnobState
from hasten.models.synthetic import random_generator
from hasten.policies import Policy, PolicyConfig

from tiny_pipelines import randomise_zero_layers, tiny_vae

STEPS = 8
SIZE = 32  # pixels; the tiny VAE halves it: 16x16 latents, 64 image tokens
TEXT_TOKENS, COND_DIM = 3, 16
# a policy that uses every knob often, so that decisions differ between images and steps
BUSY = {"step_skip": [0.4, 0.2, 0.1, 0.1, 0.1, 0.1], "cache_reuse": [0.4, 0.3, 0.3], "sparse_attention": [0.4, 0.3, 0.3]}


def make_pipe(family: str, guidance_embeds: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    if family == "flux":
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                             attention_head_dim=8, num_attention_heads=2,
                                             joint_attention_dim=COND_DIM, pooled_projection_dim=COND_DIM,
                                             axes_dims_rope=(2, 2, 4), guidance_embeds=guidance_embeds)
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), text_encoder=None,
                            tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                            transformer=randomise_zero_layers(transformer))
    else:
        transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=COND_DIM,
                                            caption_projection_dim=16, pooled_projection_dim=COND_DIM,
                                            pos_embed_max_size=16)
        pipe = StableDiffusion3Pipeline(transformer=randomise_zero_layers(transformer),
                                        scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(),
                                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                        text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(case: str, n: int = 2, seed: int = 0, **extra) -> dict:
    """Prompt embeddings given directly (no text encoders) and a seeded noise generator."""
    g = torch.Generator().manual_seed(1000 + seed)
    kwargs = dict(prompt_embeds=torch.randn(n, TEXT_TOKENS, COND_DIM, generator=g),
                  pooled_prompt_embeds=torch.randn(n, COND_DIM, generator=g), height=SIZE, width=SIZE,
                  num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(seed))
    negative = dict(negative_prompt_embeds=torch.randn(n, TEXT_TOKENS, COND_DIM, generator=g),
                    negative_pooled_prompt_embeds=torch.randn(n, COND_DIM, generator=g))
    if case == "flux-true-cfg":
        kwargs.update(negative, true_cfg_scale=2.0)
    elif case == "flux-dev":
        kwargs.update(guidance_scale=3.5)
    elif case == "sd3":
        kwargs.update(negative, guidance_scale=3.0)
    return {**kwargs, **extra}


CASES = ["flux", "flux-dev", "flux-true-cfg", "sd3"]


@pytest.fixture(scope="module")
def pipes():
    return {"flux": make_pipe("flux"), "flux-dev": make_pipe("flux", guidance_embeds=True),
            "flux-true-cfg": make_pipe("flux", seed=1), "sd3": make_pipe("sd3")}


def family(case: str) -> str:
    return "sd3" if case == "sd3" else "flux"


def busy_policy(case: str, seed: int = 0, **config) -> Policy:
    torch.manual_seed(seed)
    return Policy(PolicyConfig(family=family(case), num_steps=STEPS, init_probs=BUSY, **config))


def run(pipe, case, **extra):
    return pipe(**call_kwargs(case, **extra)).images


# ------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("case", CASES)
def test_budget_one_reproduces_the_plain_pipeline(pipes, case):
    pipe = pipes[case]
    plain = run(pipe, case)
    with hasten.accelerate(pipe, busy_policy(case), budget=1.0) as acc:
        out = run(pipe, case)
    assert (out - plain).abs().max() <= 1e-5
    assert acc.stats["model_calls"].tolist() == [STEPS, STEPS]
    np.testing.assert_allclose(acc.stats["flops_fraction"], 1.0)
    assert (acc.stats["decisions"] == 0).all()


@pytest.mark.parametrize("case", ["flux-true-cfg", "sd3"])
def test_a_policy_held_at_full_compute_reproduces_the_plain_pipeline_in_pixels(pipes, case):
    """The policy is asked at every step (budget 0.3) but may only choose level 0; the VAE decodes."""
    pipe = pipes[case]
    plain = run(pipe, case, output_type="np")
    policy = busy_policy(case, allowed_levels={"step_skip": [0], "cache_reuse": [0], "sparse_attention": [0]})
    with hasten.accelerate(pipe, policy, budget=0.3) as acc:
        out = run(pipe, case, output_type="np")
    assert out.shape == (2, SIZE, SIZE, 3)
    assert np.abs(out - plain).max() <= 1e-5
    np.testing.assert_allclose(acc.stats["flops_fraction"], 1.0)


# ------------------------------------------------------------------------------ acceleration
@pytest.mark.parametrize("case", CASES)
def test_the_policy_cuts_compute_and_changes_the_output(pipes, case):
    pipe = pipes[case]
    plain = run(pipe, case)
    with hasten.accelerate(pipe, busy_policy(case), budget=0.4) as acc:
        out = run(pipe, case)
    stats = acc.stats
    assert (out - plain).abs().max() > 1e-3
    assert stats["flops_fraction"].shape == (2,) and stats["model_calls"].shape == (2,)
    assert stats["decisions"].shape == (2, STEPS, 3)
    assert (stats["flops_fraction"] < 0.9).all() and (stats["flops_fraction"] > 0).all()
    made_call = stats["decisions"][..., 0] >= 0
    assert stats["model_calls"].tolist() == made_call.sum(axis=1).tolist()
    assert (stats["model_calls"] < STEPS).all()
    assert made_call[:, 0].all()  # every image computes the first step
    assert (stats["decisions"][:, 0, 1] == 0).all()  # ... with every block (nothing is cached yet)
    # per image: the two images did not get the same decisions
    assert (stats["decisions"][0] != stats["decisions"][1]).any()


@pytest.mark.parametrize("forecast", [False, True, "noise"])
def test_skipping_reuses_the_last_velocity_as_the_samplers_jump(pipes, forecast):
    """Skip 1 everywhere: half the model calls, and exactly the Euler loop that jumps two intervals
    (with ``forecast``: the skipped interval's velocity extrapolated from the last two calls; with
    ``"noise"``: the noise prediction x + (1 - s) v extrapolated, turned back into a velocity)."""
    case, pipe = "flux", pipes["flux"]
    policy = busy_policy(case, allowed_levels={"step_skip": [1], "cache_reuse": [0], "sparse_attention": [0]},
                         forecast=bool(forecast), forecast_space=forecast if forecast == "noise" else "velocity")
    first_block = pipe.transformer.transformer_blocks[0]
    calls = []
    handle = first_block.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with hasten.accelerate(pipe, policy, budget=0.5) as acc:
            out = run(pipe, case)
    finally:
        handle.remove()
    traced = 1  # the one batch-1 call that counts the FLOPs of this input shape
    assert len(calls) == STEPS // 2 + traced
    assert acc.stats["model_calls"].tolist() == [STEPS // 2] * 2
    np.testing.assert_allclose(acc.stats["flops_fraction"], 0.5)

    # the jump, written out: x <- x + (s[j+2] - s[j]) * v(x, s[j]) on the pipeline's own schedule, or
    # with the forecast x <- x + (s[j+1] - s[j]) * v + (s[j+2] - s[j+1]) * (v + (s[j+1] - s[j]) * slope)
    kwargs = call_kwargs(case)
    g = kwargs["generator"]
    latents, image_ids = pipe.prepare_latents(2, 4, SIZE, SIZE, torch.float32, "cpu", g)
    sigmas = np.linspace(1.0, 1 / STEPS, STEPS).tolist() + [0.0]
    x, before = latents, None
    with torch.no_grad():
        for j in range(0, STEPS, 2):
            v = pipe.transformer(hidden_states=x, timestep=torch.full((2,), sigmas[j]),
                                 encoder_hidden_states=kwargs["prompt_embeds"],
                                 pooled_projections=kwargs["pooled_prompt_embeds"], txt_ids=torch.zeros(TEXT_TOKENS, 3),
                                 img_ids=image_ids, return_dict=False)[0]
            if not forecast:
                x = x + (sigmas[min(j + 2, STEPS)] - sigmas[j]) * v
                continue
            q = v if forecast is True else x + (1 - sigmas[j]) * v  # what is extrapolated
            slope = torch.zeros_like(q) if before is None else (q - before) / (sigmas[j] - sigmas[j - 2])
            x = x + (sigmas[j + 1] - sigmas[j]) * v
            forecast_q = q + (sigmas[j + 1] - sigmas[j]) * slope
            forecast_v = forecast_q if forecast is True else (forecast_q - x) / (1 - sigmas[j + 1])
            x = x + (sigmas[j + 2] - sigmas[j + 1]) * forecast_v
            before = q
    assert (out - x).abs().max() <= 1e-5


@pytest.mark.parametrize("case", ["flux-true-cfg", "sd3"])
def test_both_guidance_branches_share_each_images_decisions(pipes, case, monkeypatch):
    calls = []
    original = KnobState.set_call

    def spy(self, cache, row_ids, cache_levels, keep, sigma=0.0):
        calls.append((id(cache), row_ids.tolist(), cache_levels.tolist(), keep.tolist()))
        return original(self, cache, row_ids, cache_levels, keep, sigma)

    monkeypatch.setattr(KnobState, "set_call", spy)
    pipe, n = pipes[case], 2
    with hasten.accelerate(pipe, busy_policy(case), budget=0.4) as acc:
        run(pipe, case, n=n)
    steps_with_calls = int((acc.stats["decisions"][..., 0] >= 0).any(axis=0).sum())
    if case == "sd3":  # one call per step on [uncond, cond] rows: cache rows n + i and i are image i
        assert len(calls) == steps_with_calls
        for _, ids, levels, keep in calls:
            by_id = {i: (level, k) for i, level, k in zip(ids, levels, keep)}
            assert sorted(by_id) == sorted({i % n for i in ids} | {i % n + n for i in ids})
            for i in range(n):
                if i in by_id:
                    assert by_id[i] == by_id[i + n]
    else:  # FluxPipeline's true CFG: a conditional then an unconditional call per step
        assert len(calls) == 2 * steps_with_calls
        for cond, uncond in zip(calls[0::2], calls[1::2]):
            assert cond[0] != uncond[0]  # each branch has its own residual cache
            assert cond[1:] == uncond[1:]  # same images, same cache and sparsity levels
    assert len({tuple(c[2]) + tuple(c[3]) for c in calls}) > 1  # the levels did vary


@pytest.mark.parametrize("case", ["flux-true-cfg", "sd3"])
def test_a_forecasting_policy_extrapolates_the_reused_residuals(pipes, case):
    """No step is skipped: what differs with ``forecast`` is the residual the reusing calls add."""
    pipe, out = pipes[case], {}
    for forecast in (False, True):
        policy = busy_policy(case, allowed_levels={"step_skip": [0]}, forecast=forecast)
        with hasten.accelerate(pipe, policy, budget=0.4) as acc:
            out[forecast] = run(pipe, case)
        assert (acc.stats["decisions"][..., 1] > 0).any()
    assert (out[True] - out[False]).abs().max() > 1e-4


@pytest.mark.parametrize("forecast", [False, True, "noise"])
@pytest.mark.parametrize("case", ["flux-true-cfg", "sd3"])
def test_an_image_gets_the_same_decisions_and_output_in_any_batch(pipes, case, forecast):
    pipe = pipes[case]
    kwargs = call_kwargs(case, n=3)
    shape = (3, 64, 16) if case != "sd3" else (3, 4, 16, 16)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    batch_kwargs = {**kwargs, "latents": latents}
    policy = busy_policy(case, forecast=bool(forecast), forecast_space=forecast if forecast == "noise" else "velocity")
    with hasten.accelerate(pipe, policy, budget=0.4, seeds=[10, 11, 12]) as acc:
        batch = pipe(**batch_kwargs).images
    batch_stats = acc.stats
    assert (batch_stats["decisions"][0] != batch_stats["decisions"][2]).any()
    alone_kwargs = {k: (v[2:] if isinstance(v, torch.Tensor) else v) for k, v in batch_kwargs.items()}
    with hasten.accelerate(pipe, policy, budget=0.4, seeds=[12]) as acc:
        alone = pipe(**alone_kwargs).images
    assert (batch[2] - alone[0]).abs().max() <= 1e-5
    np.testing.assert_array_equal(acc.stats["decisions"][0], batch_stats["decisions"][2])


# ------------------------------------------------------------------------------ restoring the pipeline
def snapshot(pipe):
    t = pipe.transformer
    return {
        "state_dict": {k: v.clone() for k, v in t.state_dict().items()},
        "processors": {name: m.processor for name, m in t.named_modules() if hasattr(m, "processor")},
        "hooks": {name: list(m._diffusers_hook.hooks) for name, m in t.named_modules()
                  if hasattr(m, "_diffusers_hook")},
        "forwards": {name: m.__dict__.get("forward") for name, m in t.named_modules()},
        "attributes": {name: sorted(m.__dict__) for name, m in t.named_modules()},
        "components": dict(pipe.components),
    }


def assert_same(before, after):
    assert before["state_dict"].keys() == after["state_dict"].keys()
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    assert before["processors"].keys() == after["processors"].keys()
    assert all(before["processors"][k] is after["processors"][k] for k in before["processors"])
    assert before["hooks"] == after["hooks"]
    assert all(not hooks for hooks in after["hooks"].values())
    assert before["forwards"] == after["forwards"]
    assert before["attributes"] == after["attributes"]
    assert before["components"].keys() == after["components"].keys()
    assert all(before["components"][k] is after["components"][k] for k in before["components"])


@pytest.mark.parametrize("case", ["flux", "sd3"])
@pytest.mark.parametrize("called_before", [False, True], ids=["fresh", "after-a-call"])
def test_leaving_the_context_restores_the_pipeline_exactly(case, called_before):
    pipe = make_pipe(family(case))
    if called_before:  # diffusers' cache_context leaves an (empty) HookRegistry on the transformer
        plain = run(pipe, case)
    before = snapshot(pipe)
    with hasten.accelerate(pipe, busy_policy(case), budget=0.4):
        inside = snapshot(pipe)
        run(pipe, case)
    assert "hasten_policy" in inside["hooks"][""]  # the test would see hooks left behind
    assert sum(1 for hooks in inside["hooks"].values() if "hasten_knobs" in hooks) == 4  # one per block
    assert_same(before, snapshot(pipe))
    out = run(pipe, case)
    if called_before:
        assert torch.equal(out, plain)

    before = snapshot(pipe)
    with pytest.raises(RuntimeError, match="inside"):  # an error inside the context restores too
        with hasten.accelerate(pipe, busy_policy(case), budget=0.4):
            run(pipe, case)
            raise RuntimeError("inside")
    assert_same(before, snapshot(pipe))
    assert torch.equal(run(pipe, case), out)


def test_stats_follow_each_pipeline_call(pipes):
    case, pipe = "sd3", pipes["sd3"]
    with hasten.accelerate(pipe, busy_policy(case), budget=0.4) as acc:
        assert acc.stats == {}
        run(pipe, case, n=2)
        first = acc.stats
        run(pipe, case, n=3, seed=1)
    assert acc.stats["flops_fraction"].shape == (3,) and acc.stats["decisions"].shape == (3, STEPS, 3)
    assert len(acc.history) == 2
    np.testing.assert_array_equal(acc.history[0]["decisions"], first["decisions"])
    assert acc.history[0]["flops_fraction"].shape == (2,)


# ------------------------------------------------------------------------------ hasten's own sampler
def test_generator_sample_uses_the_policy_inside_the_context():
    gen = random_generator("sd3", image_size=16, channels=4, num_layers=2, num_steps=6)
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(family="sd3", num_steps=6, init_probs=BUSY))
    expected, expected_stats = gen.sample([0, 1], [3, 4], decisions=policy.decide(0.4))
    gen.detach_knobs()
    with hasten.accelerate(gen, policy, budget=0.4) as acc:
        images, stats = gen.sample([0, 1], [3, 4])
    assert torch.equal(images, expected)
    np.testing.assert_array_equal(stats["decisions"], expected_stats["decisions"])
    assert (stats["flops_fraction"] < 1).all()
    assert acc.stats is stats
    assert "sample" not in gen.__dict__ and gen._knobs is None
    assert not any(hasattr(m, "_diffusers_hook") for m in gen.transformer.modules())
    _, after = gen.sample([0, 1], [3, 4])
    np.testing.assert_allclose(after["flops_fraction"], 1.0)


# ------------------------------------------------------------------------------ errors
def test_a_policy_for_another_family_is_refused(pipes):
    with pytest.raises(HastenError, match="trained for the 'sd3' generator family.*this generator is 'flux'"):
        hasten.accelerate(pipes["flux"], Policy(PolicyConfig(family="sd3")))
    with pytest.raises(HastenError, match="trained for the 'flux' generator family.*this generator is 'sd3'"):
        hasten.accelerate(pipes["sd3"], Policy(PolicyConfig(family="flux")))
    gen = random_generator("flux")
    with pytest.raises(HastenError, match="'sd3'.*'flux'"):
        hasten.accelerate(gen, Policy(PolicyConfig(family="sd3")))
    assert not hasattr(pipes["flux"].transformer, "_hasten_knobs")


def test_bad_uses_are_clear_errors(pipes):
    pipe, policy = pipes["sd3"], busy_policy("sd3")
    with pytest.raises(HastenError, match="expected a diffusers pipeline.*got SD3Transformer2DModel"):
        hasten.accelerate(pipe.transformer, policy)
    with pytest.raises(HastenError, match="budget=1.5: expected a FLOPs fraction"):
        hasten.accelerate(pipe, policy, budget=1.5)
    with pytest.raises(HastenError, match="expected a hasten Policy"):
        hasten.accelerate(pipe, {"family": "sd3"})
    with hasten.accelerate(pipe, policy):
        with pytest.raises(HastenError, match="already active"):
            with hasten.accelerate(pipe, policy):
                pass
        with pytest.raises(HastenError, match="skip-layer guidance"):
            run(pipe, "sd3", skip_guidance_layers=[1])
        with pytest.raises(HastenError, match="seeds has 1 entries but the pipeline call has 2 images"):
            with hasten.accelerate(pipes["flux"], busy_policy("flux"), seeds=[0]):
                run(pipes["flux"], "flux")
    assert not hasattr(pipe.transformer, "_hasten_knobs")
