"""``hasten policy eval``: a trained policy against full compute and uniform step reduction.

On held-out (class, noise) pairs (noise seeds from 1,000,000 on; training pairs draw seeds below
that), it measures for full compute, the policy and uniform step reduction at the step counts
around the policy's FLOPs:
- FLOPs speedup (analytic, from the knob levels applied);
- PSNR and SSIM to the full-compute sample of the same pair;
- class accuracy and Frechet distance by the evaluation classifier (never a training reward);
- wall-clock speedup at batch 1 (median over interleaved repeats, so the ratio is side by side).
"""

from __future__ import annotations

import math
import statistics
import time
from datetime import datetime, timezone

import numpy as np
import torch

from hasten.embedded.shapes.classifier import classify, frechet_distance
from hasten.io import fmt_optional, machine_description
from hasten.knobs.cost import time_spent
from hasten.metrics import psnr, ssim, temporal_error

HELD_OUT_SEED = 1_000_000


def real_features(classifier, seed: int, n: int):
    """(n, D) float64 features of ``n`` fresh real images (clips, for a clips classifier; seeded), the
    Frechet distance's reference."""
    real_images, _ = classifier.dataset.make_batch(seed + 10_000_019, n)
    _, feats = classify(classifier, torch.from_numpy(real_images))
    return feats.double().numpy()


def quality_metrics(images, full, labels, classifier, real_feats) -> dict:
    """PSNR / SSIM of ``images`` to the full-compute ``full`` of the same pairs, and class accuracy and
    Frechet distance (to ``real_feats``) by the evaluation classifier (None without one)."""
    values = psnr(images, full).clamp(max=100)  # clips: the mean of their per-frame PSNRs
    metrics = {"psnr_db": float(values.mean()), "psnr_db_median": float(values.median()),
               "ssim": float(ssim(images, full).mean()), "class_accuracy": None, "frechet_distance": None}
    if images.ndim == 5:  # video: how far the motion is from the full-compute clip's
        metrics["temporal_error"] = float(temporal_error(images, full).mean())
    if classifier is not None:
        preds, feats = classify(classifier, images)
        metrics["class_accuracy"] = float((preds == torch.as_tensor(labels)).float().mean())
        metrics["frechet_distance"] = frechet_distance(feats.double().numpy(), real_feats)
    return metrics


def interleaved_medians(runs: dict, repeats: int, progress=None) -> dict:
    """Median over ``repeats`` of each named ``run() -> seconds``, the runs interleaved round-robin
    (repeat 1 of every run, then repeat 2, ...), so that machine noise hits every run alike."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
            if progress is not None:
                progress.update(1)
    return {name: statistics.median(values) for name, values in times.items()}


def _batch1_seconds(generator, runs: dict, conditions, seeds, repeats: int) -> dict:
    """Median seconds per sample at batch 1 for each named run, repeats interleaved across runs."""
    def timed(kwargs):
        def run():
            start = time.perf_counter()
            for c, s in zip(conditions, seeds):
                generator.sample([c], [s], batch_size=1, **kwargs)
            return (time.perf_counter() - start) / len(seeds)
        return run

    return interleaved_medians({name: timed(kwargs) for name, kwargs in runs.items()}, repeats)


def evaluate_policy(generator, policy, classifier, n: int = 256, budget: float | None = None,
                    seed: int = HELD_OUT_SEED, batch_size: int = 64, greedy: bool = False,
                    timing_samples: int = 4, timing_repeats: int = 5, progress: bool = True) -> dict:
    """Compare ``policy`` with full compute and uniform step reduction on ``n`` held-out pairs.

    ``classifier`` None (a diffusers pipeline's latents): PSNR / SSIM only, no class accuracy or
    Frechet distance."""
    policy.check_compatible(generator)
    budget = policy.config.budget if budget is None else float(budget)
    steps = policy.config.num_steps or generator.default_steps
    labels = [i % generator.num_classes for i in range(n)]
    seeds = [seed + i for i in range(n)]
    real_feats = None if classifier is None else real_features(classifier, seed, n)

    full, _ = generator.sample(labels, seeds, num_steps=steps, batch_size=batch_size, progress=progress)
    decide = policy.decide(budget, greedy=greedy)
    forecast = policy.config.sampler_forecast
    fast, stats = generator.sample(labels, seeds, num_steps=steps, decisions=decide, batch_size=batch_size,
                                   progress=progress, forecast=forecast)
    flops = float(stats["flops_fraction"].mean())
    methods = [{"method": "full compute", "num_steps": steps, "flops_fraction": 1.0,
                **quality_metrics(full, full, labels, classifier, real_feats)},
               {"method": "policy", "budget": budget, "greedy": greedy, "flops_fraction": flops,
                "flops_fraction_max": float(stats["flops_fraction"].max()),
                "model_calls_mean": float(stats["model_calls"].mean()),
                **quality_metrics(fast, full, labels, classifier, real_feats)}]
    uniform_steps = {max(1, math.floor(flops * steps)), max(1, math.ceil(flops * steps))}
    time_est = None
    if policy.config.cost_unit == "time":  # also the step counts around its (estimated) time; one more
        # step above, because per-step work outside the table makes measured time exceed the estimate
        time_est = float(time_spent(stats["decisions"], policy.config.time_table, steps).mean())
        uniform_steps |= {max(1, math.floor(time_est * steps)), min(steps, math.ceil(time_est * steps) + 1)}
    uniform_steps = sorted(uniform_steps)
    for k in uniform_steps:
        images, _ = generator.sample(labels, seeds, num_steps=k, batch_size=batch_size, progress=progress)
        methods.append({"method": f"uniform {k} steps", "num_steps": k, "flops_fraction": k / steps,
                        **quality_metrics(images, full, labels, classifier, real_feats)})
    uniform = methods[2:]
    # uniform step reduction interpolated to exactly the policy's FLOPs (PSNR is smooth in steps)
    matched = interpolate([m["flops_fraction"] for m in uniform], [m["psnr_db"] for m in uniform], flops)

    runs = {"full compute": {"num_steps": steps},
            "policy": {"num_steps": steps, "decisions": decide, "forecast": forecast}}
    runs.update({f"uniform {k} steps": {"num_steps": k} for k in uniform_steps})
    seconds = _batch1_seconds(generator, runs, labels[:timing_samples], seeds[:timing_samples], timing_repeats)
    for m in methods:
        m["speedup_flops"] = 1.0 / m["flops_fraction"]
        m["seconds_batch1"] = seconds[m["method"]]
        m["speedup_wall_batch1"] = seconds["full compute"] / seconds[m["method"]]
    policy_row = methods[1]
    policy_row["time_fraction_est"] = time_est
    wall = [1.0 / m["speedup_wall_batch1"] for m in uniform]
    matched_wall = interpolate(wall, [m["psnr_db"] for m in uniform], 1.0 / policy_row["speedup_wall_batch1"])
    return {
        "n": n, "num_steps": steps, "guidance": generator.default_guidance, "budget": budget,
        "forecast": forecast, "held_out_seeds": [seed, seed + n - 1],
        "methods": methods,
        "uniform_psnr_at_policy_flops": matched,
        "psnr_gain_over_uniform_db": None if matched is None else policy_row["psnr_db"] - matched,
        "uniform_psnr_at_policy_wall_clock": matched_wall,
        "psnr_gain_over_uniform_at_wall_clock_db": None if matched_wall is None else policy_row["psnr_db"] - matched_wall,
        "accuracy_drop_points": (None if classifier is None
                                 else 100 * (methods[0]["class_accuracy"] - policy_row["class_accuracy"])),
        "timing": {"samples": timing_samples, "repeats": timing_repeats, "statistic": "median, interleaved"},
        "machine": machine_description(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "generator": generator.path,
    }


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of ``ys`` over ``xs`` at ``x``; None outside their range (no extrapolation)."""
    order = np.argsort(xs)
    xs, ys = np.asarray(xs)[order], np.asarray(ys)[order]
    if len(xs) == 0 or x < xs[0] - 1e-9 or x > xs[-1] + 1e-9:
        return None
    return float(np.interp(x, xs, ys))


def markdown_table(result: dict) -> str:
    lines = [f"n = {result['n']} held-out (class, noise) pairs (seeds {result['held_out_seeds'][0]}-"
             f"{result['held_out_seeds'][1]}), {result['num_steps']} steps, guidance {result['guidance']}, "
             f"budget {result['budget']}{_forecast_label(result.get('forecast'))}; "
             f"{result['machine']}, {result['date']}. Wall-clock: batch 1, "
             f"{result['timing']['samples']} samples, median of {result['timing']['repeats']} interleaved repeats.",
             "",
             "| method | FLOPs fraction | FLOPs speedup | wall-clock speedup (batch 1) | PSNR to full (dB) | SSIM | "
             "class accuracy | Frechet distance |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result["methods"]:
        lines.append(f"| {m['method']} | {m['flops_fraction']:.3f} | {m['speedup_flops']:.2f}x | "
                     f"{m['speedup_wall_batch1']:.2f}x | "
                     f"{'reference' if m['method'] == 'full compute' else format(m['psnr_db'], '.2f')} | "
                     f"{m['ssim']:.4f} | {fmt_optional(m['class_accuracy'], '.4f')} | "
                     f"{fmt_optional(m['frechet_distance'], '.1f')} |")
    if result["uniform_psnr_at_policy_flops"] is None:
        compared = "Uniform step reduction does not reach the policy's FLOPs. "
    else:
        compared = (f"Uniform step reduction interpolated to the policy's FLOPs: "
                    f"{result['uniform_psnr_at_policy_flops']:.2f} dB; the policy: "
                    f"{result['psnr_gain_over_uniform_db']:+.2f} dB. ")
    accuracy = ("No evaluation classifier: no class accuracy or Frechet distance."
                if result["accuracy_drop_points"] is None
                else f"Class accuracy: {-result['accuracy_drop_points']:+.2f} points vs full compute.")
    lines += ["", compared + accuracy]
    if result.get("uniform_psnr_at_policy_wall_clock") is not None:
        lines[-1] += (f" At the policy's batch-1 wall-clock, uniform step reduction (interpolated by its measured "
                      f"time) gives {result['uniform_psnr_at_policy_wall_clock']:.2f} dB: the policy "
                      f"{result['psnr_gain_over_uniform_at_wall_clock_db']:+.2f} dB.")
    return "\n".join(lines) + "\n"


def _forecast_label(forecast) -> str:
    return "" if not forecast else " (forecast)" if forecast is True else f" (forecast: {forecast})"
