"""The acceleration knobs: exactness with knobs off, per-row independence, real skipping, detach."""

import numpy as np
import pytest
import torch

from hasten.errors import HastenError
from hasten.knobs import (KNOBS, attach_knobs, block_sparse_attention, detach_knobs,
                                     validate_decisions)
from hasten.models.synthetic import random_generator
from conftest import embedded_available

CONDS = [0, 1, 2, 3, 1]
SEEDS = [5, 6, 7, 8, 9]


@pytest.fixture(scope="module", params=["flux", "flux-guidance-distilled", "sd3"])
def generator(request):
    if request.param == "flux":
        return random_generator("flux", image_size=16, channels=3, num_layers=2, num_single_layers=2)
    if request.param == "flux-guidance-distilled":  # the FLUX.1-dev layout: guidance is an input
        return random_generator("flux", image_size=16, channels=4, num_layers=1, num_single_layers=3,
                                guidance_embeds=True)
    return random_generator("sd3", image_size=16, channels=4, num_layers=4)


def random_decisions(n, steps, seed=0):
    return np.random.default_rng(seed).integers(0, 3, size=(n, steps, len(KNOBS)))


def test_knobs_off_reproduce_the_reference_sampler(generator):
    reference, _ = generator.sample(CONDS, SEEDS)
    out, stats = generator.sample(CONDS, SEEDS, decisions=[0, 0, 0])
    assert (out - reference).abs().max() <= 1e-5
    assert stats["model_calls"].tolist() == [generator.default_steps] * len(SEEDS)
    np.testing.assert_allclose(stats["flops_fraction"], 1.0)


def test_mixed_decisions_in_a_batch_equal_rows_one_at_a_time(generator):
    decisions = random_decisions(len(SEEDS), generator.default_steps)
    batch, stats = generator.sample(CONDS, SEEDS, decisions=decisions)
    for i, (c, s) in enumerate(zip(CONDS, SEEDS)):
        alone, alone_stats = generator.sample([c], [s], decisions=decisions[i:i + 1])
        assert (batch[i] - alone[0]).abs().max() <= 1e-5, f"row {i}"
        assert alone_stats["flops_fraction"][0] == pytest.approx(stats["flops_fraction"][i])
    assert (stats["flops_fraction"] < 1).all()


def test_every_knob_changes_the_result_and_cuts_flops(generator):
    reference, _ = generator.sample(CONDS[:2], SEEDS[:2])
    for knob in range(len(KNOBS)):
        levels = [0, 0, 0]
        levels[knob] = 2
        out, stats = generator.sample(CONDS[:2], SEEDS[:2], decisions=levels)
        assert (out - reference).abs().max() > 1e-4, KNOBS[knob].name
        assert (stats["flops_fraction"] < 1).all(), KNOBS[knob].name


def test_step_skip_one_halves_the_model_calls(generator):
    _, stats = generator.sample(CONDS[:2], SEEDS[:2], num_steps=28, decisions=[1, 0, 0])
    assert stats["model_calls"].tolist() == [14, 14]
    np.testing.assert_allclose(stats["flops_fraction"], 0.5)
    _, stats = generator.sample(CONDS[:1], SEEDS[:1], num_steps=28, decisions=[2, 0, 0])
    assert stats["model_calls"].tolist() == [10]


@pytest.mark.parametrize("forecast", [False, "noise"])
def test_step_skip_levels_jump_their_intervals(generator, forecast):
    # levels 3, 4, 5 jump 3, 5, 7 intervals: 28 steps in 7, 5 and 4 calls, at the right positions
    for level, calls in ((3, 7), (4, 5), (5, 4)):
        _, stats = generator.sample(CONDS[:1], SEEDS[:1], num_steps=28, decisions=[level, 0, 0], forecast=forecast)
        assert stats["model_calls"].tolist() == [calls]
        made = (stats["decisions"][0, :, 0] >= 0).nonzero()[0].tolist()
        assert made == list(range(0, 28, KNOBS[0].levels[level] + 1))


def test_rows_that_reuse_the_cache_are_not_sent_through_skipped_blocks(generator):
    blocks = generator.family.blocks(generator.transformer)
    seen = [[] for _ in blocks]
    # the block's attention sees the rows the block really computes (the hook gathers them first)
    def record(i):
        return lambda m, args, kwargs: seen[i].append((kwargs.get("hidden_states", args[0] if args else None)).shape[0])

    handles = [b.attn.register_forward_pre_hook(record(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        rollout = generator.start(CONDS[:3], SEEDS[:3], num_steps=4)
        generator.step(rollout, np.zeros((3, 3), dtype=int))  # first call: everything computed
        for s in seen:
            s.clear()
        # row 0 computes all, row 1 reuses the deep half, row 2 reuses all but the first block
        spent = generator.step(rollout, np.array([[0, 0, 0], [0, 1, 0], [0, 2, 0]]))
    finally:
        for h in handles:
            h.remove()
    cfg = 1 if generator.distilled_guidance else 2  # rows per sample: both guidance branches
    half = generator.step_cost().reuse_from[1]
    expected = [3 * cfg if i == 0 else (2 * cfg if i < half else cfg) for i in range(len(blocks))]
    assert [s[0] for s in seen] == expected
    assert spent[0] == pytest.approx(1.0) and spent[2] < spent[1] < 1.0
    assert rollout.decisions[:, 1, 1].tolist() == [0, 1, 2]


def test_a_rows_first_call_computes_every_block(generator):
    rollout = generator.start(CONDS[:2], SEEDS[:2], num_steps=4)
    spent = generator.step(rollout, np.array([[0, 2, 0], [0, 1, 0]]))
    assert rollout.decisions[:, 0, 1].tolist() == [0, 0]
    np.testing.assert_allclose(spent.numpy(), 1.0)


def test_detach_leaves_the_model_exactly_as_before(generator):
    generator.detach_knobs()  # earlier tests left them attached (inert)
    x = generator.noise([3, 4])
    sigma = torch.tensor([0.7, 0.7])
    labels = torch.tensor([0, 1])
    before = generator.velocity(x, sigma, labels, 3.0)
    processors = [type(m.processor) for m in generator.transformer.modules() if hasattr(m, "processor")]
    generator.sample(CONDS, SEEDS, decisions=random_decisions(len(SEEDS), generator.default_steps, 1))
    generator.detach_knobs()
    after = generator.velocity(x, sigma, labels, 3.0)
    assert torch.equal(before, after)
    assert [type(m.processor) for m in generator.transformer.modules() if hasattr(m, "processor")] == processors
    assert not any(hasattr(m, "_diffusers_hook") for m in generator.transformer.modules())


def test_attaching_twice_is_an_error():
    gen = random_generator("flux")
    attach_knobs(gen.transformer)
    with pytest.raises(HastenError, match="already attached"):
        attach_knobs(gen.transformer)
    detach_knobs(gen.transformer)


@pytest.mark.parametrize("bad, message", [
    ([0, 3, 0], r"cache_reuse: level 3 is out of range; expected levels 0..2"),
    ([-1, 0, 0], r"step_skip: level -1 is out of range"),
    ([0, 0, float("nan")], r"sparse_attention: decisions contain NaN"),
    ([0, 0, 0.5], r"sparse_attention: level 0.5 is out of range"),
    ([0, 0], r"expected \(\.\.\., 3\) levels of \(step_skip, cache_reuse, sparse_attention\)"),
    (np.zeros((4, 3)), r"expected \(5, 6, 3\)|one row per sample|expected \(3,\), \(5, 3\)"),
])
def test_invalid_decisions_name_the_knob_and_the_allowed_levels(bad, message):
    gen = random_generator("flux")
    with pytest.raises(HastenError, match=message):
        gen.sample(CONDS, SEEDS, decisions=bad)


def test_step_checks_one_decision_row_per_sample():
    gen = random_generator("flux")
    rollout = gen.start(CONDS[:2], SEEDS[:2])
    with pytest.raises(HastenError, match="one row per sample"):
        gen.step(rollout, np.zeros((3, 3), dtype=int))
    assert validate_decisions([[0, 1, 2]]).dtype == np.int64


@pytest.mark.parametrize("text_first", [True, False])
def test_block_sparse_attention_is_dense_when_all_blocks_are_kept(text_first):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4 + 64, 8) for _ in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    # keep=0.999 takes the sparse path but keeps every block
    assert torch.allclose(block_sparse_attention(q, k, v, 4, text_first, 0.999), dense, atol=1e-5)
    sparse = block_sparse_attention(q, k, v, 4, text_first, 0.25)
    assert sparse.shape == dense.shape and not torch.allclose(sparse, dense, atol=1e-3)
    text = slice(0, 4) if text_first else slice(64, 68)
    assert torch.allclose(sparse[:, :, text], dense[:, :, text], atol=1e-6)  # text queries stay dense


def test_analytic_cost_follows_the_levels(generator):
    cost = generator.step_cost()
    assert cost.fraction(0, 1.0) == pytest.approx(1.0)
    assert cost.fraction(2, 1.0) < cost.fraction(1, 1.0) < 1.0
    assert cost.fraction(0, 0.25) < cost.fraction(0, 0.5) < 1.0
    assert cost.flops(2) == pytest.approx(cost.overhead + cost.block_flops(0))


@pytest.mark.skipif(not embedded_available(), reason="embedded generator not shipped in this checkout")
def test_embedded_generator_knobs_off_and_mixed_rows():
    from hasten.models import load_generator

    gen = load_generator("embedded:shapes")
    conds, seeds = ["red circle", "blue plus", "green square"], [0, 1, 2]
    reference, _ = gen.sample(conds, seeds, num_steps=8)
    out, _ = gen.sample(conds, seeds, num_steps=8, decisions=[0, 0, 0])
    assert (out - reference).abs().max() <= 1e-5
    decisions = random_decisions(3, 8, seed=3)
    batch, _ = gen.sample(conds, seeds, num_steps=8, decisions=decisions)
    for i in range(3):
        alone, _ = gen.sample(conds[i:i + 1], seeds[i:i + 1], num_steps=8, decisions=decisions[i:i + 1])
        # a batch of 3 and one of 1 round differently (~2e-5 over 8 steps on images in [-1, 1]);
        # rows leaking into each other would differ by ~1e-1
        assert (batch[i] - alone[0]).abs().max() <= 1e-4


# ------------------------------------------------------------------------------ forecast
def test_forecast_steps_through_skipped_intervals_with_the_extrapolated_velocity(generator):
    """Skip 1 everywhere, written out: the row computes v at even positions and steps through the
    odd ones with v + (s[j+1] - s[j]) * (v - v_before) / (s[j] - s[j-2])."""
    steps = 8
    out, stats = generator.sample(CONDS[:2], SEEDS[:2], num_steps=steps, decisions=[1, 0, 0], forecast=True)
    assert stats["model_calls"].tolist() == [steps // 2] * 2
    sigmas = generator.make_scheduler(steps).sigmas.cpu().double()
    x, labels = generator.noise(SEEDS[:2]), generator.encode(CONDS[:2])
    before = None
    for j in range(0, steps, 2):
        v = generator.velocity(x, sigmas[j].float().expand(2), labels, generator.default_guidance)
        slope = torch.zeros_like(v) if before is None else (v - before) / float(sigmas[j] - sigmas[j - 2])
        x = x + float(sigmas[j + 1] - sigmas[j]) * v
        x = x + float(sigmas[j + 2] - sigmas[j + 1]) * (v + float(sigmas[j + 1] - sigmas[j]) * slope)
        before = v
    assert (out - x.clamp(-1, 1)).abs().max() <= 1e-4


def test_a_noise_space_forecast_extrapolates_the_noise_prediction(generator):
    """Skip 1 everywhere with ``forecast="noise"``: the skipped step's velocity is the noise
    prediction q = x + (1 - s) v extrapolated to its noise level, at the sample reached so far."""
    steps = 8
    out, _ = generator.sample(CONDS[:2], SEEDS[:2], num_steps=steps, decisions=[1, 0, 0], forecast="noise")
    sigmas = generator.make_scheduler(steps).sigmas.cpu().double().tolist()
    x, labels = generator.noise(SEEDS[:2]), generator.encode(CONDS[:2])
    before = None
    for j in range(0, steps, 2):
        v = generator.velocity(x, torch.tensor(sigmas[j]).float().expand(2), labels, generator.default_guidance)
        q = x + (1 - sigmas[j]) * v
        slope = torch.zeros_like(q) if before is None else (q - before) / (sigmas[j] - sigmas[j - 2])
        x = x + (sigmas[j + 1] - sigmas[j]) * v
        x = x + (sigmas[j + 2] - sigmas[j + 1]) * ((q + (sigmas[j + 1] - sigmas[j]) * slope - x) / (1 - sigmas[j + 1]))
        before = q
    assert (out - x.clamp(-1, 1)).abs().max() <= 1e-4
    velocity, _ = generator.sample(CONDS[:2], SEEDS[:2], num_steps=steps, decisions=[1, 0, 0], forecast="velocity")
    assert (out - velocity).abs().max() > 1e-4
    with pytest.raises(HastenError, match="forecast='cubic'"):
        generator.sample(CONDS[:2], SEEDS[:2], num_steps=steps, decisions=[1, 0, 0], forecast="cubic")


def test_forecast_changes_only_skipping_or_reusing_rows_and_stays_per_row(generator):
    computing = random_decisions(len(SEEDS), generator.default_steps, seed=1)
    computing[..., :2] = 0  # sparse attention only: nothing is skipped or reused, nothing forecast
    plain, _ = generator.sample(CONDS, SEEDS, decisions=computing)
    forecast, _ = generator.sample(CONDS, SEEDS, decisions=computing, forecast=True)
    assert (plain - forecast).abs().max() <= 1e-6
    reusing = computing.copy()
    reusing[:, 3::2, 1] = 2  # full computations in between: the residual has a slope
    plain, _ = generator.sample(CONDS, SEEDS, decisions=reusing)
    forecast, _ = generator.sample(CONDS, SEEDS, decisions=reusing, forecast=True)
    assert (plain - forecast).abs().max() > 1e-4  # the reused residuals are extrapolated
    decisions = random_decisions(len(SEEDS), generator.default_steps, seed=2)
    batch, _ = generator.sample(CONDS, SEEDS, decisions=decisions, forecast=True)
    reused, _ = generator.sample(CONDS, SEEDS, decisions=decisions)
    assert (batch - reused).abs().max() > 1e-4
    for i in (0, 3):
        alone, _ = generator.sample(CONDS[i:i + 1], SEEDS[i:i + 1], decisions=decisions[i:i + 1], forecast=True)
        assert (batch[i] - alone[0]).abs().max() <= 1e-5, f"row {i}"


@pytest.mark.skipif(not embedded_available(), reason="embedded generator not shipped in this checkout")
def test_forecast_is_closer_to_full_compute_on_the_embedded_generator():
    """The point of the forecast: at the same model calls, closer to the 28-step sample (measured:
    skip 1 everywhere on 32 held-out pairs, 31.9 dB reusing the velocity, 35.5 dB forecasting it)."""
    from hasten.models import load_generator
    from hasten.metrics import psnr

    gen = load_generator("embedded:shapes")
    conds, seeds = [0, 5, 10, 15], [1000000, 1000001, 1000002, 1000003]
    reference, _ = gen.sample(conds, seeds)
    reused, _ = gen.sample(conds, seeds, decisions=[1, 0, 0])
    forecast, _ = gen.sample(conds, seeds, decisions=[1, 0, 0], forecast=True)
    assert float(psnr(forecast, reference).mean()) > float(psnr(reused, reference).mean()) + 1.5
    # cache reuse every other step (measured on 32 pairs: 34.2 dB reusing the residual, 37.3 forecasting it)
    alternate = np.zeros((len(seeds), 28, 3), dtype=np.int64)
    alternate[:, 3::2, 1] = 2
    reused, _ = gen.sample(conds, seeds, decisions=alternate)
    forecast, _ = gen.sample(conds, seeds, decisions=alternate, forecast=True)
    assert float(psnr(forecast, reference).mean()) > float(psnr(reused, reference).mean()) + 1.5
    # 3 full steps, then skip 2 (measured on 32 pairs: 33.1 dB forecasting the velocity, 35.8 dB
    # forecasting the noise prediction)
    warm = np.zeros((len(seeds), 28, 3), dtype=np.int64)
    warm[:, 3:, 0] = 2
    velocity, _ = gen.sample(conds, seeds, decisions=warm, forecast="velocity")
    noise, _ = gen.sample(conds, seeds, decisions=warm, forecast="noise")
    assert float(psnr(noise, reference).mean()) > float(psnr(velocity, reference).mean()) + 1.0


def test_the_residual_cache_forecasts_to_first_order_in_sigma():
    from hasten.knobs import RowCache

    ids = torch.tensor([0, 2])
    for forecast in (False, True):
        cache = RowCache(3, forecast=forecast)
        cache.store(1, ids, torch.tensor([[1.0], [4.0]]), torch.tensor([1.0, 1.0]))
        cache.store(1, ids, torch.tensor([[2.0], [2.0]]), torch.tensor([0.5, 0.5]))
        got = cache.residual(1, ids, torch.tensor([0.25, 0.0]))
        expected = [[2.5], [0.0]] if forecast else [[2.0], [2.0]]  # slopes -2 and 4 per unit sigma
        torch.testing.assert_close(got, torch.tensor(expected))
    cache.store(1, torch.tensor([1]), torch.tensor([[7.0]]), torch.tensor([0.5]))  # one computation: no slope
    torch.testing.assert_close(cache.residual(1, torch.tensor([1]), torch.tensor([0.1])), torch.tensor([[7.0]]))
