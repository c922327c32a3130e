"""Every registered DiT family on a tiny random config built here (no download): the knobs at level 0
reproduce the reference sampler exactly, a mixed-decision batch equals its rows run alone, FLOPs
drop with every level, detaching restores the transformer, and hasten.accelerate inside the
family's own diffusers pipeline (Wan, Qwen-Image, FLUX.2) restores it bit for bit."""

import dataclasses
import types

import numpy as np
import pytest
import torch

import hasten
from hasten.errors import HastenError
from hasten.knobs import SparseAttentionProcessor, attach_knobs, detach_knobs
from hasten.models.families import FAMILIES, family_of, get_family
from hasten.models.synthetic import random_generator
from hasten.policies import Policy, PolicyConfig

import tiny_families
from tiny_families import STEPS, call_kwargs, make_pipe, run

BUSY = {"step_skip": [0.4, 0.2, 0.1, 0.1, 0.1, 0.1], "cache_reuse": [0.4, 0.3, 0.3], "sparse_attention": [0.4, 0.3, 0.3]}
MIXED = np.array([[0, 0, 0], [1, 1, 1], [0, 2, 2], [2, 0, 1]])


def tiny(family: str, **extra):
    """4 blocks (2 + 2 for the two-stream families), 8x8 latents (Wan: 3 frames of 8x8)."""
    blocks = dict(num_layers=2, num_single_layers=2) if family in ("flux", "flux2") else dict(num_layers=4)
    return random_generator(family, image_size=16 if family != "wan" else 8, channels=4, **blocks, **extra)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def gen(request):
    return tiny(request.param)


def test_level_zero_reproduces_the_reference_sampler_exactly(gen):
    ref, _ = gen.sample([0, 1], seeds=[0, 1])
    knobs, stats = gen.sample([0, 1], seeds=[0, 1], decisions=np.zeros(3, dtype=int))
    assert ref.shape == (2, *gen.sample_shape)
    assert torch.equal(ref, knobs)
    np.testing.assert_allclose(stats["flops_fraction"], 1.0)


def test_a_mixed_batch_equals_its_rows_run_alone(gen):
    conditions, seeds = [0, 1, 2, 3], [4, 5, 6, 7]
    mixed, stats = gen.sample(conditions, seeds, decisions=MIXED)
    alone = torch.cat([gen.sample([c], [s], decisions=MIXED[i:i + 1])[0]
                       for i, (c, s) in enumerate(zip(conditions, seeds))])
    assert (mixed - alone).abs().max() <= 1e-5
    ref, _ = gen.sample(conditions, seeds)
    changed = (mixed - ref).flatten(1).abs().amax(1)
    assert changed[0] <= 1e-5 and bool((changed[1:] > 1e-4).all())  # (batch composition: float noise only)
    assert stats["flops_fraction"][0] == 1.0 and bool((stats["flops_fraction"][1:] < 1.0).all())


def test_flops_drop_with_every_level(gen):
    cost = gen.step_cost()
    cache = [cost.fraction(c, 1.0) for c in range(3)]
    sparse = [cost.fraction(0, keep) for keep in (1.0, 0.5, 0.25)]
    assert cache[0] == 1.0 and cache[1] < 1.0 and cache[2] <= cache[1]
    assert sparse[0] == 1.0 and sparse[2] < sparse[1] < 1.0
    skips = [gen.sample([0], [0], decisions=[k, 0, 0])[1]["flops_fraction"][0] for k in range(3)]
    assert skips[0] == 1.0 and skips[2] < skips[1] < 1.0


def test_only_the_image_attention_is_sparsified_and_detach_restores(gen):
    transformer = gen.transformer
    gen.detach_knobs()  # (the sampler keeps them attached between calls)
    before = {name: m.processor for name, m in transformer.named_modules() if hasattr(m, "processor")}
    forwards = {name: m.__dict__.get("forward") for name, m in transformer.named_modules()}
    state = attach_knobs(transformer)
    try:
        wrapped = {name for name, m in transformer.named_modules()
                   if isinstance(getattr(m, "processor", None), SparseAttentionProcessor)}
        assert len(wrapped) == state.num_blocks  # one image attention per block
        assert all(name.rsplit(".", 1)[-1] in gen.family.attention for name in wrapped)
    finally:
        detach_knobs(transformer)
    assert {name: m.processor for name, m in transformer.named_modules() if hasattr(m, "processor")} == before
    assert {name: m.__dict__.get("forward") for name, m in transformer.named_modules()} == forwards
    assert not any(hasattr(m, "_diffusers_hook") for m in transformer.modules())


def test_wan_text_stays_out_of_its_sparse_self_attention():
    gen = tiny("wan")
    cost = gen.step_cost()
    assert cost.text_len == 0  # self-attention over video tokens; text enters through attn2
    sparse, dense = [call for call in cost.attention[0] if call[4]], [call for call in cost.attention[0] if not call[4]]
    assert len(sparse) == 1 and sparse[0][1] == sparse[0][2] == gen.image_tokens() == 3 * 4 * 4
    assert len(dense) == 1 and dense[0][2] == 2  # the cross-attention keys are the text tokens


def test_every_family_builds_and_names_its_knobs():
    for name, family in FAMILIES.items():
        assert get_family(name) is family
        assert family.velocity is not None and family.random is not None
        assert set(family.knobs) == {"step_skip", "cache_reuse", "sparse_attention"}


# ------------------------------------------------------------------------------ inside the pipelines
@pytest.fixture(scope="module", params=tiny_families.FAMILIES)
def pipe(request):
    return request.param, make_pipe(request.param)


def busy(family: str, seed: int = 0, **config) -> Policy:
    torch.manual_seed(seed)
    return Policy(PolicyConfig(family=family, num_steps=STEPS, init_probs=BUSY, **config))


def _snapshot(transformer):
    return ({name: m.processor for name, m in transformer.named_modules() if hasattr(m, "processor")},
            {name: m.__dict__.get("forward") for name, m in transformer.named_modules()},
            {k: v.clone() for k, v in transformer.state_dict().items()})


def test_accelerate_at_full_budget_is_the_pipeline_and_leaving_restores_it_exactly(pipe):
    family, p = pipe
    plain = run(p, family)
    before = _snapshot(p.transformer)
    with hasten.accelerate(p, busy(family), budget=1.0) as acc:
        same = run(p, family)
    assert torch.equal(same, plain)
    assert acc.stats["model_calls"].tolist() == [STEPS, STEPS]
    with hasten.accelerate(p, busy(family), budget=0.4):
        run(p, family)
    after = _snapshot(p.transformer)
    assert after[0] == before[0] and after[1] == before[1]
    assert all(torch.equal(after[2][k], v) for k, v in before[2].items())
    assert not any(hasattr(m, "_diffusers_hook") for m in p.transformer.modules()
                   if m is not p.transformer) and torch.equal(run(p, family), plain)


@pytest.mark.parametrize("cfg", [True, False])
def test_the_policy_cuts_compute_per_image_with_cfg_on_and_off(pipe, cfg):
    family, p = pipe
    plain = run(p, family, cfg=cfg)
    with hasten.accelerate(p, busy(family), budget=0.4) as acc:
        out = run(p, family, cfg=cfg)
    stats = acc.stats
    assert stats["decisions"].shape == (2, STEPS, 3)
    assert bool((stats["flops_fraction"] < 1.0).all()) and bool((stats["model_calls"] < STEPS).all())
    assert (out - plain).abs().max() > 1e-4


@pytest.fixture(scope="module")
def wan_with_text():
    return make_pipe("wan", text=True)


def test_images_per_prompt_gives_each_image_its_own_decisions(pipe, wan_with_text):
    family, p = pipe
    if family == "wan":  # WanPipeline repeats only the embeddings it encodes itself: prompts, not embeds
        p, extra = wan_with_text, dict(prompt=["a red fox", "snow"], prompt_embeds=None, negative_prompt_embeds=None,
                                       num_videos_per_prompt=2, max_sequence_length=8)
    else:
        extra = dict(num_images_per_prompt=2)
    with hasten.accelerate(p, busy(family), budget=0.4, seeds=[0, 1, 2, 3]) as acc:
        out = run(p, family, **extra)
    assert out.shape[0] == 4 and acc.stats["decisions"].shape[0] == 4
    rows = acc.stats["decisions"].reshape(4, -1)
    assert len({tuple(r) for r in rows.tolist()}) > 1  # sampled per image, not per call


def test_a_policy_of_another_family_or_with_a_knob_the_family_lacks_is_refused(pipe):
    family, p = pipe
    other = "sd3" if family != "sd3" else "flux"
    with pytest.raises(HastenError, match=f"trained for the '{other}' generator family.*{family}"):
        hasten.accelerate(p, busy(other), budget=0.4)


# ------------------------------------------------------------------------------ the generic family
def test_an_unregistered_transformer_gets_the_generic_family_or_a_clear_error():
    from diffusers import PixArtTransformer2DModel

    pixart = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                      num_layers=2, cross_attention_dim=16, sample_size=8,
                                      caption_channels=16, norm_type="ada_norm_single")
    family = family_of(pixart)
    assert family.name == "generic:PixArtTransformer2DModel" and family.velocity is None
    assert family.block_lists == ("transformer_blocks",) and "sparse_attention" in family.knobs
    with pytest.raises(HastenError, match="no nn.ModuleList of transformer blocks.*FluxTransformer2DModel"):
        family_of(torch.nn.Linear(2, 2))
    no_sparse = dataclasses.replace(family, knobs=("step_skip", "cache_reuse"))
    with pytest.raises(HastenError, match="sparse_attention levels.*generic:PixArt.*supports only step_skip, "
                                          "cache_reuse"):
        Policy(PolicyConfig()).check_compatible(types.SimpleNamespace(family=no_sparse))
    Policy(PolicyConfig(allowed_levels={"sparse_attention": [0]})).check_compatible(
        types.SimpleNamespace(family=no_sparse))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_measured_time_drops_with_cache_reuse_and_step_skip(family):
    """Measured, not counted: reusing all but the first of 8 blocks, and skipping steps, take less time
    (generous margins: a test machine is noisy; knobs bench measures the fractions properly)."""
    from hasten.knobs.cost import measure_time_fractions

    blocks = dict(num_layers=4, num_single_layers=4) if family in ("flux", "flux2") else dict(num_layers=8)
    gen = random_generator(family, image_size=16 if family != "wan" else 8, channels=4, head_dim=32, **blocks)
    table = measure_time_fractions(gen, rows=2, repeats=3)
    assert table[2][0] < 0.8 and table[1][0] < 0.95, table
    import time

    start = time.perf_counter()
    gen.sample([0, 1], [0, 1], num_steps=8)
    full = time.perf_counter() - start
    start = time.perf_counter()
    gen.sample([0, 1], [0, 1], num_steps=8, decisions=[3, 0, 0])  # 2 model calls of 8
    assert time.perf_counter() - start < 0.75 * full


@pytest.mark.parametrize("family", ["wan", "qwen-image", "flux2"])
def test_hasten_compare_runs_each_peer_on_the_family_or_reports_why_not(family):
    """The same peer list on every family, each through its own library on the same transformer; a
    library that fails on the family is reported as not run, with its error."""
    from hasten.bench.compare import compare

    gen = tiny(family, num_steps=8)
    result = compare(gen, None, n=2, uniform_steps=[4], methods="uniform,firstblockcache,taylorseer,dbcache",
                     timing_samples=1, timing_repeats=1, timing_batches=[1], progress=False)
    ran = {row["family"] for row in result["methods"]}
    assert {"full compute", "uniform steps", "TaylorSeer", "DBCache"} <= ran
    reported = {name for name in result["not_applicable"] if name.startswith("FirstBlockCache")}
    assert ("FirstBlockCache" in ran) != bool(reported)  # ran, or reported with the library's error
    if reported:
        assert all("failed on this model" in result["not_applicable"][name] for name in reported)
    uniform = next(row for row in result["methods"] if row["family"] == "uniform steps")
    assert uniform["flops_fraction"] == pytest.approx(0.5) and uniform["psnr_db"] < 100


def test_a_policy_held_at_level_zero_reproduces_each_pipeline_bit_for_bit(pipe):
    """Asked at every step (budget 0.3) but allowed only level 0: the knob hooks run, nothing changes."""
    family, p = pipe
    plain = run(p, family)
    policy = busy(family, allowed_levels={"step_skip": [0], "cache_reuse": [0], "sparse_attention": [0]})
    with hasten.accelerate(p, policy, budget=0.3) as acc:
        out = run(p, family)
    assert torch.equal(out, plain)
    np.testing.assert_allclose(acc.stats["flops_fraction"], 1.0)
