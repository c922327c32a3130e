"""hasten compare: peers through their libraries, counted FLOPs, matched random policy, reports, CLI."""

import json
import os

import numpy as np
import pytest
import torch

from hasten.cli import main
from hasten.bench.compare import compare, parse_budgets, parse_methods, random_policy
from hasten.bench.compare_acceptance import acceptance
from hasten.bench.compare_report import SECTION_TITLE, benchmarks_section, markdown, pareto_plot, write_benchmarks_section
from hasten.errors import HastenError
from hasten.knobs.cost import ExecutedFlops
from hasten.bench.peers import Peer, default_peers
from hasten.policies.heads import Policy, PolicyConfig

PAIRS = ([0, 1], [7, 8])


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory, tiny_generator):
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(family="flux", num_steps=tiny_generator.default_steps,
                                 allowed_levels={"sparse_attention": [0]},
                                 init_probs={"step_skip": [0.4, 0.2, 0.1, 0.1, 0.1, 0.1], "cache_reuse": [0.4, 0.2, 0.4]}))
    path = str(tmp_path_factory.mktemp("policy") / "policy")
    policy.save_pretrained(path)
    return path


def _module_state(transformer):
    """Every module's attributes (by identity), child order and attention processor."""
    return [(name, sorted((k, id(v)) for k, v in m.__dict__.items()), list(m._modules),
             id(getattr(m, "processor", None))) for name, m in transformer.named_modules()]


def test_executed_flops_of_full_compute_is_the_analytic_count(tiny_generator):
    gen = tiny_generator
    with ExecutedFlops() as counter:
        gen.sample(*PAIRS)
    calls = len(PAIRS[1]) * 2 * gen.default_steps  # rows x CFG branches x steps
    assert counter.flops == pytest.approx(gen.step_cost().full() * calls, rel=1e-9)
    # a policy's counted FLOPs agree with hasten's analytic per-level costs
    decisions = np.random.default_rng(0).integers(0, 3, size=(2, gen.default_steps, 3))
    with ExecutedFlops() as counter:
        _, stats = gen.sample(*PAIRS, decisions=decisions)
    assert counter.flops / (gen.step_cost().full() * calls) == pytest.approx(stats["flops_fraction"].mean(), rel=0.02)


def test_every_default_peer_runs_and_removing_it_restores_the_transformer_exactly(tiny_generator):
    gen = tiny_generator
    gen.detach_knobs()
    plain, _ = gen.sample(*PAIRS)
    before = _module_state(gen.transformer)
    peers = default_peers(gen.default_steps, calibration=PAIRS)
    assert all(len(settings) >= 3 for settings in peers.values())
    for family, settings in peers.items():
        for peer in settings:
            with peer.applied(gen):
                images = peer.sample(gen, *PAIRS)
            assert images.shape == plain.shape and torch.isfinite(images).all(), peer.name
            assert _module_state(gen.transformer) == before, f"{peer.name} left the transformer changed"
            after, _ = gen.sample(*PAIRS)
            assert torch.equal(after, plain), f"{peer.name}: plain output changed after removal"


def _aggressive(family: str) -> Peer:
    """The family's own config at a setting that must cache on a 6-step random tiny model."""
    from diffusers.hooks import FirstBlockCacheConfig

    peers = default_peers(6, calibration=PAIRS)
    peer = peers[family][-1]
    if family == "FirstBlockCache":
        return Peer(family, "diffusers", "threshold=1e3", "diffusers", lambda loop, gen: FirstBlockCacheConfig(1e3))
    if family.startswith("DBCache"):
        def make(loop, gen, taylor=family.endswith("TaylorSeer")):
            from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

            return (DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=10.0,
                                  max_warmup_steps=1, num_inference_steps=loop.num_steps),
                    TaylorSeerCalibratorConfig(taylorseer_order=1) if taylor else None)
        return Peer(family, "cache-dit", "threshold=10", "cache-dit", make)
    return peer


@pytest.mark.parametrize("family", ["FirstBlockCache", "TaylorSeer", "TaylorSeer lite", "MagCache",
                                    "PyramidAttentionBroadcast", "FasterCache", "SeaCache", "DBCache",
                                    "DBCache+TaylorSeer"])
def test_each_peer_really_cuts_executed_flops(tiny_generator, family):
    if family.startswith("DBCache"):
        pytest.importorskip("cache_dit")
    gen = tiny_generator
    with ExecutedFlops() as full:
        plain, _ = gen.sample(*PAIRS)
    peer = _aggressive(family)
    with peer.applied(gen), ExecutedFlops() as counted:
        images = peer.sample(gen, *PAIRS)
    assert counted.flops < 0.95 * full.flops, f"{family}: {counted.flops / full.flops:.3f} of full compute"
    assert not torch.equal(images, plain)
    with peer.applied(gen):  # state is reset between runs: the same pairs give the same images
        again = peer.sample(gen, *PAIRS)
    assert torch.equal(again, images)


def test_peer_reset_outside_applied_is_an_error(tiny_generator):
    peer = default_peers(6, calibration=PAIRS)["TaylorSeer"][0]
    with pytest.raises(HastenError, match="not applied"):
        peer.reset()


def test_random_policy_spends_the_target_flops(tiny_generator, tiny_policy_dir):
    gen = tiny_generator
    policy = Policy.from_pretrained(tiny_policy_dir)
    seeds = list(range(100, 108))
    blind, info = random_policy(policy, gen, 0.5, gen.default_steps, seeds, budget=0.4)
    assert all(float(p.detach().abs().max()) == 0 for n, p in blind.named_parameters() if n.endswith("weight"))
    _, stats = gen.sample([0] * 8, seeds, decisions=blind.decide(0.4))
    assert stats["flops_fraction"].mean() == pytest.approx(info["flops_fraction_on_pairs"], abs=1e-9)
    assert abs(info["flops_fraction_on_pairs"] - 0.5) < 0.08
    assert set(stats["decisions"][..., 2].ravel()) <= {-1, 0}  # the learned policy's allowed levels only
    with pytest.raises(HastenError, match="outside"):
        random_policy(policy, gen, 0.01, gen.default_steps, seeds, budget=0.4)


def test_parse_budgets_and_methods():
    assert parse_budgets("0.5, 0.35,0.25") == (0.5, 0.35, 0.25)
    for bad in ("", "0", "1.5", "a,b", "-0.1", "nan"):
        with pytest.raises(HastenError, match="--budgets"):
            parse_budgets(bad)
    peers = default_peers(6)
    assert parse_methods("dbcache,policy", peers) == ["full compute", "DBCache", "learned policy"]
    with pytest.raises(HastenError, match="unknown method 'nope'.*firstblockcache"):
        parse_methods("nope", peers)


def test_acceptance_on_hand_made_points():
    def row(kind, family, psnr, flops, wall):
        return {"kind": kind, "family": family, "method": f"{family} {psnr}", "psnr_db": psnr,
                "speedup_flops": flops, "speedup_wall_batch1": wall}

    rows = [row("full", "full compute", 100, 1, 1),
            row("policy", "learned policy", 40, 2.0, 2.0), row("policy", "learned policy", 30, 4.0, 3.0),
            row("peer", "A", 42, 1.5, 1.5), row("peer", "A", 35, 2.5, 2.5)]
    check = acceptance({"methods": rows})
    flops = check["speedup_flops"]
    # the policy at 35 dB: 2 + (4 - 2) * 5 / 10 = 3.0 >= 2.5; at 42 dB the policy has no point
    assert flops["points_not_dominated"] == [{"method": "A 42", "psnr_db": 42, "speedup": 1.5,
                                              "policy_speedup_at_that_psnr": None}]
    assert flops["best_peer_at_2x"] == "A" and flops["best_peer_psnr_at_2x"] == pytest.approx(38.5)
    assert flops["policy_speedup_at_that_psnr"] == pytest.approx(2.3)
    assert not flops["policy_3x_at_best_peer_2x_fidelity"]
    rows[3] = row("peer", "A", 38, 1.5, 1.5)
    assert acceptance({"methods": rows})["speedup_flops"]["dominates_every_point"]
    assert "temporal_error_at_2.5x" not in flops  # images: no temporal check


def test_the_temporal_error_check_of_clips_at_2_5x():
    def row(kind, family, speedup, temporal):
        return {"kind": kind, "family": family, "method": f"{family} {speedup}", "psnr_db": 30.0,
                "speedup_flops": speedup, "temporal_error": temporal}

    rows = [row("full", "full compute", 1, 0.0), row("policy", "learned policy", 2.0, 0.02),
            row("policy", "learned policy", 3.0, 0.04), row("peer", "A", 2.0, 0.01), row("peer", "A", 3.0, 0.05),
            row("peer", "B", 1.5, 0.0), row("peer", "B", 2.0, 0.001)]  # B does not reach 2.5x
    check = acceptance({"methods": rows})["speedup_flops"]["temporal_error_at_2.5x"]
    assert check["policy"] == pytest.approx(0.03) and check["by_family"] == {"A": pytest.approx(0.03)}
    assert check["best_peer"] == "A" and check["policy_no_worse"]
    rows[4] = row("peer", "A", 3.0, 0.03)
    check = acceptance({"methods": rows})["speedup_flops"]["temporal_error_at_2.5x"]
    assert check["best_peer_temporal_error"] == pytest.approx(0.02) and check["policy_no_worse"] is False


@pytest.fixture(scope="module")
def small_result(tiny_generator, tiny_classifier_dir, tiny_policy_dir):
    return compare(tiny_generator, tiny_policy_dir, classifier=tiny_classifier_dir, budgets=(0.6, 0.4), n=3,
                   methods="uniform,sparse,taylorseer,magcache,dbcache,random,policy", uniform_steps=(4, 2),
                   timing_samples=1, timing_repeats=1, timing_batches=(1, 2), progress=False)


def test_compare_result_has_every_method_with_its_fields(small_result):
    r = small_result
    rows = r["methods"]
    families = [m["family"] for m in rows]
    assert families[0] == "full compute" and rows[0]["flops_fraction"] == 1.0
    assert families.count("uniform steps") == 2 and families.count("static sparse attention") == 2
    assert families.count("TaylorSeer") == 3 and families.count("MagCache") == 3 and families.count("DBCache") == 3
    assert families.count("learned policy") == 2 and families.count("random policy") == 2
    fields = {"method", "family", "setting", "library", "version", "flops_fraction", "speedup_flops",
              "speedup_wall_batch1", "speedup_wall_batch2", "seconds_batch1", "psnr_db", "ssim",
              "class_accuracy", "frechet_distance"}
    for m in rows:
        assert fields <= set(m), m["method"]
        assert np.isfinite(m["speedup_flops"]) and m["speedup_flops"] > 0
    by = {m["method"]: m for m in rows}
    assert by["uniform steps (2 steps)"]["flops_fraction"] == pytest.approx(2 / 6)
    assert by["TaylorSeer (interval=2)"]["library"] == "diffusers"
    assert by["DBCache (F1B0 W4 threshold=0.08)"]["version"] == r["libraries"]["cache-dit"]
    for b in (0.6, 0.4):  # the random policy spends what the learned policy spent
        learned = by[f"learned policy (budget={b})"]
        assert by[f"random policy (matched to budget={b})"]["flops_fraction"] == pytest.approx(
            learned["flops_fraction"], abs=0.12)
        assert learned["flops_fraction"] == pytest.approx(learned["flops_fraction_analytic"], rel=0.02)
    assert len(r["mag_cache_calibration"]["ratios"]) == 6
    assert set(r["acceptance"]) == {"speedup_flops", "speedup_wall_batch1"}
    json.dumps(r)  # JSON-serialisable


def test_reports_markdown_plot_and_benchmarks_section(small_result, tmp_path):
    table = markdown(small_result)
    assert table.count("\n| ") == len(small_result["methods"]) + 1
    assert "cache-dit" in table and "diffusers 0." in table and "wall-clock speedup (batch 2)" in table
    png = pareto_plot(small_result, str(tmp_path / "p.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nintro\n\n## Other\n\nkept\n")
    section = benchmarks_section({**small_result, "command": "hasten compare --n 3"}, table, "p.png")
    write_benchmarks_section(str(md), section)
    write_benchmarks_section(str(md), section)  # rewriting replaces the section, once
    text = md.read_text()
    assert text.count(SECTION_TITLE) == 1 and "## Other\n\nkept" in text and "hasten compare --n 3" in text
    md.write_text(text.replace("## Other\n\nkept\n", "") + "## After\n\nalso kept\n")
    write_benchmarks_section(str(md), section)
    assert md.read_text().count(SECTION_TITLE) == 1 and "## After\n\nalso kept" in md.read_text()


def test_cli_compare_smoke(tiny_generator_dir, tiny_classifier_dir, tiny_policy_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["compare", "--generator", tiny_generator_dir, "--classifier", tiny_classifier_dir,
               "--policy", tiny_policy_dir, "--budgets", "0.5", "--n", "2", "--methods", "uniform,fastercache,policy",
               "--uniform-steps", "3", "--timing-repeats", "1", "--timing-samples", "1", "--timing-batches", "1",
               "--json", str(out / "c.json"), "--markdown", str(out / "c.md"), "--plot", str(out / "c.png"),
               "--benchmarks-md", str(out / "B.md"), "--quiet", "--threads", "1"])
    assert rc == 0
    result = json.loads((out / "c.json").read_text())
    assert [m["family"] for m in result["methods"]] == ["full compute", "uniform steps"] + ["FasterCache"] * 3 + [
        "learned policy"]
    assert result["command"].startswith("hasten ") and os.path.getsize(out / "c.png") > 1000
    assert SECTION_TITLE in (out / "B.md").read_text() and "(c.png)" in (out / "B.md").read_text()
    # the reports re-render from the JSON alone
    assert main(["compare", "--from-json", str(out / "c.json"), "--plot", str(out / "d.png"),
                 "--markdown", str(out / "d.md")]) == 0
    assert (out / "d.md").read_text() == (out / "c.md").read_text() and os.path.getsize(out / "d.png") > 1000


@pytest.mark.parametrize("args, fragment", [
    (["--methods", "teacache"], "unknown method 'teacache'"),
    (["--budgets", "0.5,1.5"], "--budgets"),
    (["--budgets", "fast"], "--budgets"),
    (["--uniform-steps", "0"], "--uniform-steps"),
    (["--methods", "policy"], "need --policy"),
])
def test_cli_compare_errors(tiny_generator_dir, tiny_classifier_dir, args, fragment, capsys):
    rc = main(["compare", "--generator", tiny_generator_dir, "--classifier", tiny_classifier_dir, "--n", "1",
               "--quiet", *args])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hasten: error:") and fragment in err[0], err
