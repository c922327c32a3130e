"""``hasten compare --task unmasking``: the learned head against the training-free decoding rules of
diffusion LMs, on held-out problems, in one process.

Methods (:mod:`hasten.tasks.unmasking.peers`): the full schedule (one token per call), fixed ``k`` tokens
per call, Fast-dLLM's confidence threshold, transformers' entropy-bound sampler with its stable-and-confident
adaptive stop, dKV-cache reuse (on the full schedule and on a Fast-dLLM threshold), a random policy, and the
head at each budget (greedy). Per method and setting: accuracy, denoiser calls and FLOPs per problem (as
executed), and wall-clock speedups to the full schedule at each ``timing_batches`` size (the median of
interleaved repeats on the same problems).

Acceptance (:func:`acceptance`): every peer point (fixed k, thresholds, adaptive stopping, dKV reuse) is
matched or beaten by a head point -- accuracy at least the peer's minus :data:`ACCURACY_TOLERANCE` with at
most its calls, and (separately) with at least its batch-1 wall-clock speedup (within :data:`TIME_TOLERANCE`);
and the head's reduction of calls at <= 1 point of accuracy below the full schedule (goal >= 4x).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from hasten.io import machine_description
from hasten.tasks.unmasking import peers
from hasten.tasks.unmasking.decode import CanvasDecoder
from hasten.tasks.unmasking.env import THRESHOLDS, commit_mask
from hasten.tasks.unmasking.model import load_dllm

logger = logging.getLogger(__name__)

METHODS = ("full", "fixed-k", "fast-dllm", "entropy-bound", "dkv", "fast-dllm+dkv", "random", "policy")
PEER_METHODS = ("fixed-k", "fast-dllm", "entropy-bound", "dkv", "fast-dllm+dkv")
FIXED_K = (2, 3, 4, 6, 8, 12)
CONFIDENCE = (0.99, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3)
ENTROPY_BOUNDS = (0.01, 0.1, 0.3, 1.0, 3.0)
DKV_REFRESH = (2, 4, 8)
DKV_THRESHOLD = 0.9
ACCURACY_TOLERANCE = 0.005  # half a point: "equal accuracy"
TIME_TOLERANCE = 0.03  # wall-clock speedups within 3% count as equal (timing noise)
SECTION_TITLE = "## hasten compare on diffusion LMs (embedded:dllm, `--task unmasking`)"


@dataclass
class Setting:
    method: str
    setting: str
    step: Callable  # (decoder) -> None: one step of the rule


def rule_step(commit, reuse=None):
    def step(decoder):
        decoder.step(commit(decoder), np.zeros(decoder.n, bool) if reuse is None else reuse(decoder))
    return step


def random_step(seed: int):
    def step(decoder):
        rng = np.random.default_rng([seed, int(decoder.steps.max())])
        levels = rng.integers(0, len(THRESHOLDS), size=decoder.n)
        decoder.step(commit_mask(decoder, levels), rng.integers(0, 2, size=decoder.n) == 1)
    return step


def settings(methods, policy=None, budgets=()) -> list[Setting]:
    out = [Setting("full", "1 token per call", rule_step(peers.full_schedule))]
    if "fixed-k" in methods:
        out += [Setting("fixed-k", f"k={k}", rule_step(peers.fixed_k(k))) for k in FIXED_K]
    if "fast-dllm" in methods:
        out += [Setting("fast-dllm", f"threshold {t}", rule_step(peers.confidence_threshold(t))) for t in CONFIDENCE]
    if "entropy-bound" in methods:
        out += [Setting("entropy-bound", f"bound {b}", rule_step(peers.entropy_bound_with_stop(b)))
                for b in ENTROPY_BOUNDS]
    if "dkv" in methods:
        out += [Setting("dkv", f"refresh every {r}", rule_step(peers.full_schedule, peers.refresh_every(r)))
                for r in DKV_REFRESH]
    if "fast-dllm+dkv" in methods:
        out += [Setting("fast-dllm+dkv", f"threshold {DKV_THRESHOLD}, refresh every {r}",
                        rule_step(peers.confidence_threshold(DKV_THRESHOLD), peers.refresh_every(r)))
                for r in DKV_REFRESH]
    if "random" in methods:
        out.append(Setting("random", "uniform levels", random_step(0)))
    if "policy" in methods and policy is not None:
        out += [Setting("policy", f"budget {b}", lambda d, b=b: policy.step(d, b, greedy=True)) for b in budgets]
    return out


def decode(lm, problems, setting: Setting) -> CanvasDecoder:
    decoder = CanvasDecoder(lm, problems)
    while not decoder.done.all():
        setting.step(decoder)
    return decoder


def time_settings(lm, problems, all_settings, batch: int, repeats: int) -> list[float]:
    """Median seconds per problem of each setting on ``problems`` in batches of ``batch`` (interleaved repeats)."""
    times = np.zeros((repeats, len(all_settings)))
    for r in range(repeats):
        for i, setting in enumerate(all_settings):
            t0 = time.perf_counter()
            for start in range(0, len(problems), batch):
                decode(lm, problems[start:start + batch], setting)
            times[r, i] = (time.perf_counter() - t0) / len(problems)
    return np.median(times, axis=0).tolist()


def compare_unmasking(model="embedded:dllm", policy=None, n: int = 64, seed: int = 1_000_000, budgets=(0.25,),
                      methods=METHODS, batch_size: int = 64, timing_batches=(1, 16), timing_repeats: int = 3,
                      timing_problems: int = 16, progress: bool = True) -> dict:
    """Run every setting of ``methods`` on ``n`` held-out problems per difficulty; see the module docstring."""
    import transformers

    from hasten import __version__
    from hasten.policies.heads import Policy

    lm = load_dllm(model)
    if isinstance(policy, str):
        policy = Policy.from_pretrained(policy)
    if policy is not None:
        policy.check_compatible(lm, where="--policy")
    conditions = np.repeat(lm.conditions, n)
    seeds = np.tile(np.arange(seed, seed + n), len(lm.conditions))
    problems = lm.problems(conditions, seeds)
    all_settings = settings(methods, policy, budgets)
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(all_settings), desc="compare unmasking", dynamic_ncols=True)
    for setting in all_settings:
        correct, calls, flops, t0 = [], [], [], time.perf_counter()
        for start in range(0, len(problems), batch_size):
            d = decode(lm, problems[start:start + batch_size], setting)
            correct.append(d.correct())
            calls.append(d.calls)
            flops.append(d.cost_fraction)
        correct, calls, flops = np.concatenate(correct), np.concatenate(calls), np.concatenate(flops)
        rows.append({"method": setting.method, "setting": setting.setting, "accuracy": float(correct.mean()),
                     "calls": float(calls.mean()), "flops_fraction": float(flops.mean()),
                     "speedup_calls": float(lm.canvas / calls.mean()), "speedup_flops": float(1 / flops.mean()),
                     "seconds": time.perf_counter() - t0,
                     "by_difficulty": {str(d): float(correct[conditions == d].mean()) for d in lm.conditions}})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(method=setting.method, acc=f"{rows[-1]['accuracy']:.3f}", calls=f"{rows[-1]['calls']:.1f}")
    if bar is not None:
        bar.close()
    # timing: the same problems for every setting, interleaved repeats
    timing = [problems[i] for i in np.linspace(0, len(problems) - 1, min(timing_problems, len(problems))).astype(int)]
    for b in timing_batches:
        seconds = time_settings(lm, timing, all_settings, int(b), timing_repeats)
        for row, s in zip(rows, seconds):
            row[f"seconds_batch{b}"] = s
            row[f"speedup_wall_batch{b}"] = seconds[0] / s
        logger.info("timed at batch %d", b)
    result = {"task": "unmasking", "model": lm.name, "parameters": sum(p.numel() for p in lm.model.parameters()),
              "problems": len(problems), "n_per_difficulty": n, "difficulties": list(lm.conditions),
              "first_seed": seed, "canvas": lm.canvas, "budgets": list(budgets), "timing_batches": list(timing_batches),
              "timing_problems": len(timing), "timing_repeats": timing_repeats, "machine": machine_description(),
              "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "libraries": {"hasten": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
              "methods": rows}
    result["acceptance"] = acceptance(result)
    return result


def acceptance(result: dict) -> dict:
    """The checks of the module docstring on one result."""
    rows = result["methods"]
    full = next(r for r in rows if r["method"] == "full")
    head = [r for r in rows if r["method"] == "policy"]
    wall = "speedup_wall_batch1"
    out: dict = {"accuracy_tolerance": ACCURACY_TOLERANCE, "time_tolerance": TIME_TOLERANCE}
    if not head:
        return out
    missed_calls, missed_wall, peers_seen = [], [], 0
    for r in rows:
        if r["method"] not in PEER_METHODS:
            continue
        peers_seen += 1
        level = r["accuracy"] - ACCURACY_TOLERANCE
        if not any(h["accuracy"] >= level and h["calls"] <= r["calls"] + 1e-9 for h in head):
            missed_calls.append(f"{r['method']} {r['setting']}")
        if wall in r and not any(h["accuracy"] >= level and h[wall] >= r[wall] * (1 - TIME_TOLERANCE) for h in head):
            missed_wall.append(f"{r['method']} {r['setting']}")
    out.update({"peer_points": peers_seen, "matched_in_calls": peers_seen - len(missed_calls),
                "missed_in_calls": missed_calls,
                "matched_in_wall_clock": peers_seen - len(missed_wall) if any(wall in r for r in rows) else None,
                "missed_in_wall_clock": missed_wall})
    within = [h for h in head if h["accuracy"] >= full["accuracy"] - 0.01]
    best = max(within, key=lambda h: h["speedup_calls"], default=None)
    out["full_accuracy"] = full["accuracy"]
    out["calls_reduction_within_1_point"] = None if best is None else best["speedup_calls"]
    out["calls_reduction_at"] = None if best is None else best["setting"]
    out["calls_goal_4x_met"] = bool(best is not None and best["speedup_calls"] >= 4.0)
    return out


def markdown(result: dict) -> str:
    batches = result.get("timing_batches", [])
    lines = [f"{result['problems']} held-out problems ({result['n_per_difficulty']} per difficulty "
             f"{result['difficulties'][0]}-{result['difficulties'][-1]} operations, seeds from {result['first_seed']}), "
             f"{result['model']} ({result['parameters'] / 1e6:.2f}M parameters, canvas {result['canvas']}); wall-clock "
             f"on {result.get('timing_problems', 0)} of them, median of {result.get('timing_repeats', 0)} interleaved "
             f"repeats; {result['machine']}, {result['threads']} threads, {result['date']}.", "",
             "| method | setting | accuracy | denoiser calls | calls speedup | FLOPs speedup | "
             + " | ".join(f"wall-clock speedup, batch {b}" for b in batches) + " |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(batches)]
    for r in result["methods"]:
        walls = " | ".join(f"{r[f'speedup_wall_batch{b}']:.2f}x" for b in batches)
        lines.append(f"| {r['method']} | {r['setting']} | {r['accuracy']:.3f} | {r['calls']:.1f} | "
                     f"{r['speedup_calls']:.2f}x | {r['speedup_flops']:.2f}x | " + walls + (" |" if batches else "|"))
    a = result.get("acceptance", {})
    if "peer_points" in a:
        lines += ["", f"- Peer points matched or beaten in denoiser calls at equal accuracy (within "
                      f"{a['accuracy_tolerance'] * 100:.1f} point): **{a['matched_in_calls']} of {a['peer_points']}**"
                      + (f" (missed: {', '.join(a['missed_in_calls'])})" if a["missed_in_calls"] else "") + "."]
        if a.get("matched_in_wall_clock") is not None:
            lines.append(f"- In batch-1 wall-clock: **{a['matched_in_wall_clock']} of {a['peer_points']}**"
                         + (f" (missed: {', '.join(a['missed_in_wall_clock'])})" if a["missed_in_wall_clock"] else "")
                         + ".")
        red = a["calls_reduction_within_1_point"]
        lines.append(f"- Fewest denoiser calls within 1 point of the full schedule's accuracy ({a['full_accuracy']:.3f}): "
                     + (f"**{red:.2f}x fewer** ({a['calls_reduction_at']}); goal 4x "
                        f"{'met' if a['calls_goal_4x_met'] else 'not met'}." if red else "no head point is within 1 point."))
    return "\n".join(lines) + "\n"


STYLES = {"full": dict(color="black", marker="*", markersize=12, linestyle="none"),
          "fixed-k": dict(color="tab:gray", marker="s"), "fast-dllm": dict(color="tab:orange", marker="^"),
          "entropy-bound": dict(color="tab:green", marker="v"), "dkv": dict(color="tab:blue", marker="x"),
          "fast-dllm+dkv": dict(color="tab:cyan", marker="P"), "random": dict(color="tab:brown", marker="D",
                                                                            linestyle="none"),
          "policy": dict(color="tab:red", marker="o", linewidth=2.2)}


def plot(result: dict, path: str) -> str:
    """Accuracy vs calls speedup and vs batch-1 wall-clock speedup, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hasten.io import save_figure

    keys = [("speedup_calls", "denoiser calls: full schedule / method's (x)")]
    if result["methods"] and "speedup_wall_batch1" in result["methods"][0]:
        keys.append(("speedup_wall_batch1", "batch-1 wall-clock speedup (x)"))
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 5), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for method, style in STYLES.items():
            pts = sorted((r[key], r["accuracy"]) for r in result["methods"] if r["method"] == method)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=method, **style)
        ax.set_xscale("log")
        ax.set_xlabel(label + " (right is faster)")
        ax.set_ylabel("accuracy (up is better)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"hasten compare --task unmasking: {result['model']}, {result['problems']} problems", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def benchmarks_section(result: dict, table: str, plot_path: str | None = None) -> str:
    libs = result["libraries"]
    lines = [SECTION_TITLE, "", "Generated by the command below (`--benchmarks-md BENCHMARKS.md` rewrites this "
             "section); raw results in the JSON it wrote.", "", "```bash", result.get("command", "hasten compare"),
             "```", "", f"Machine: {result['machine']}. Date: {result['date']}. Libraries: hasten {libs['hasten']}, "
             f"torch {libs['torch']}, transformers {libs['transformers']}.", ""]
    if plot_path:
        lines += [f"![accuracy vs denoiser-call and wall-clock speedups, one curve per method]({plot_path})", ""]
    lines += [table.rstrip(), ""]
    return "\n".join(lines) + "\n"


__all__ = ["METHODS", "acceptance", "benchmarks_section", "compare_unmasking", "markdown", "plot"]
