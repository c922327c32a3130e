"""The reports of ``hasten compare``: markdown table, Pareto plot and the BENCHMARKS.md section.

All three are generated from the result dict of :func:`hasten.bench.compare.compare` (or its JSON), so
the published numbers are never typed by hand.

Example:
    >>> result = json.load(open("benchmarks/compare.json"))  # doctest: +SKIP
    >>> pareto_plot(result, "docs/compare_pareto.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os

from hasten.bench.compare_acceptance import is_video
from hasten.io import fmt_optional as _fmt

SECTION_TITLE = "## hasten compare: learned policy vs training-free accelerators"
VIDEO_SECTION_TITLE = "## hasten compare on video (embedded:clips): learned policy vs training-free accelerators"


def section_title(result: dict) -> str:
    """The BENCHMARKS.md heading of a result: images and video each have their own section."""
    return VIDEO_SECTION_TITLE if is_video(result) else SECTION_TITLE


def markdown(result: dict) -> str:
    """The result as a markdown table (one row per method and setting) with the acceptance checks."""
    libs = result["libraries"]
    batches = result["timing"]["batches"]
    video = is_video(result)  # clips: per-frame PSNR, temporal error
    lines = [f"n = {result['n']} held-out (class, noise) pairs (seeds {result['held_out_seeds'][0]}-"
             f"{result['held_out_seeds'][1]}), {result['num_steps']} steps, guidance {result['guidance']}; "
             f"{result['machine']}, {result['date']}; hasten {libs['hasten']}, torch {libs['torch']}, "
             f"diffusers {libs['diffusers']}, cache-dit {libs['cache-dit']}. FLOPs: counted as executed, "
             "relative to full compute. Wall-clock: median seconds per sample of "
             f"{result['timing']['repeats']} repeats, all methods interleaved (batch 1: "
             f"{result['timing']['batch1_samples']} samples; batch b: the first b pairs). Library caches "
             f"decide per batch and are evaluated at batch {result['quality_batch_size']['peers']}." +
             ("" if any(r["class_accuracy"] is not None for r in result["methods"]) else
              " No evaluation classifier for this generator (a diffusers pipeline): PSNR and SSIM are of "
              "latents; no class accuracy or Frechet distance."),
             "",
             "| method | setting | library | FLOPs speedup | " +
             " | ".join(f"wall-clock speedup (batch {b})" for b in batches) +
             f" | PSNR to full (dB){' per frame' if video else ''} | SSIM |" +
             (" temporal error |" if video else "") + " class accuracy | Frechet distance |",
             "|---|---|---|---:|" + "---:|" * len(batches) + "---:|---:|" + ("---:|" if video else "") + "---:|---:|"]
    for r in result["methods"]:
        library = r["library"] if r["version"] is None else f"{r['library']} {r['version']}"
        psnr_text = "reference" if r["kind"] == "full" else format(r["psnr_db"], ".2f")
        lines.append(f"| {r['family']} | {r['setting'] or '-'} | {library} | {r['speedup_flops']:.2f}x | " +
                     " | ".join(f"{_fmt(r.get(f'speedup_wall_batch{b}'), '.2f')}x" for b in batches) +
                     f" | {psnr_text} | {r['ssim']:.4f} | " + (f"{r['temporal_error']:.4f} | " if video else "") +
                     f"{_fmt(r['class_accuracy'], '.4f')} | {_fmt(r['frechet_distance'], '.1f')} |")
    lines += ["", *acceptance_lines(result)]
    if result.get("random_policy"):
        lines += ["", "Random policy: knob levels drawn i.i.d. over the learned policy's allowed levels, the level "
                      "probabilities tuned (one parameter, bisection on simulated trajectories) to the learned "
                      "policy's counted FLOPs at each budget: " +
                  "; ".join(f"{k}: {v['probs']}" for k, v in result["random_policy"].items()) + "."]
    if result.get("mag_cache_calibration"):
        lines += ["", "MagCache: magnitude ratios from diffusers' own calibration mode (`MagCacheConfig(calibrate="
                      f"True)`) on this model, seeds {result['mag_cache_calibration']['seeds'][0]}-"
                      f"{result['mag_cache_calibration']['seeds'][-1]} (training range)."]
    if result.get("not_applicable"):
        lines += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in result["not_applicable"].items()) + "."]
    return "\n".join(lines) + "\n"


def acceptance_lines(result: dict) -> list[str]:
    lines = []
    names = {"speedup_flops": "FLOPs speedup", "speedup_wall_batch1": "batch-1 wall-clock speedup"}
    for metric, check in result.get("acceptance", {}).items():
        failed = check["points_not_dominated"]
        if check["dominates_every_point"]:
            first = (f"**{names[metric]}: the learned policy is >= every other method at every fidelity** "
                     f"({check['points_checked']} points checked).")
        else:
            worst = sorted(failed, key=lambda f: -(f["speedup"] - (f["policy_speedup_at_that_psnr"] or 0)))[:4]
            first = (f"**{names[metric]}: not reached** — {len(failed)} of {check['points_checked']} points of other "
                     "methods are not matched by the policy's curve at their PSNR, e.g. " +
                     "; ".join(f"{f['method']}: {f['speedup']:.2f}x at {f['psnr_db']:.1f} dB vs policy "
                               f"{_fmt(f['policy_speedup_at_that_psnr'], '.2f', 'not reached')}" +
                               ("x" if f["policy_speedup_at_that_psnr"] is not None else "") for f in worst) + ".")
        if check["best_peer_at_2x"] is None:
            second = "No other method's curve spans 2x, so the fidelity at 2x is undefined."
        else:
            second = (f"At 2x, the best other method is {check['best_peer_at_2x']} at "
                      f"{check['best_peer_psnr_at_2x']:.2f} dB; the policy reaches that fidelity at "
                      f"{_fmt(check['policy_speedup_at_that_psnr'], '.2f', 'no budget measured')}"
                      f"{'x' if check['policy_speedup_at_that_psnr'] is not None else ''} "
                      f"({'>= 3x: reached' if check['policy_3x_at_best_peer_2x_fidelity'] else 'target 3x: not reached'}).")
        families = check.get("dominated_by_family", {})
        third = ("Points matched or beaten by the policy's curve, per method: " +
                 ", ".join(f"{family} {v['dominated']}/{v['points']}" for family, v in families.items()) + ".")
        lines += [f"- {first} {second} {third if families else ''}".rstrip()]
        temporal = check.get("temporal_error_at_2.5x")
        if temporal:
            verdict = {True: "no worse: reached", False: "worse: not reached", None: "not measured"}[temporal["policy_no_worse"]]
            lines.append(f"  - temporal error at {temporal['speedup']}x: the policy "
                         f"{_fmt(temporal['policy'], '.4f', 'does not span it')}, the best other method "
                         f"{temporal['best_peer'] or '(none spans it)'} {_fmt(temporal['best_peer_temporal_error'], '.4f', '')}"
                         f" ({verdict}).")
        for point in check.get("at_policy_speedups", []):
            others = point["psnr_of_others_at_that_speedup"]
            lines.append(f"  - at the {point['method']}'s {point['speedup']:.2f}x ({point['psnr_db']:.2f} dB): " +
                         (", ".join(f"{family} {value:.2f} dB" for family, value in
                                    sorted(others.items(), key=lambda kv: -kv[1]))
                          if others else "no other method's settings span this speedup") + ".")
    return lines


FAMILY_STYLE = {"learned policy": dict(color="black", marker="*", linewidth=2.5, markersize=11, zorder=5),
                "random policy": dict(color="0.5", marker="x", linestyle=":"),
                "uniform steps": dict(color="tab:blue", marker="o", linestyle="--"),
                "static sparse attention": dict(color="tab:olive", marker="v", linestyle="--")}


def pareto_plot(result: dict, path: str) -> str:
    """Speedup vs fidelity, one curve per method family, points labelled by setting: FLOPs speedup
    (left) and batch-1 wall-clock speedup (right) against PSNR to full compute. Writes ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hasten.io import save_figure

    metrics = [("speedup_flops", "FLOPs speedup")]
    if any("speedup_wall_batch1" in r for r in result["methods"]):
        metrics.append(("speedup_wall_batch1", "wall-clock speedup, batch 1"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(7.5 * len(metrics) + 3, 6.5), squeeze=False)
    rows = [r for r in result["methods"] if r["kind"] != "full"]
    families = list(dict.fromkeys(r["family"] for r in rows))
    markers = "osD^<>phP"
    cmap = plt.get_cmap("tab10")
    for ax, (metric, label) in zip(axes[0], metrics):
        for i, family in enumerate(families):
            pts = sorted((r["psnr_db"], r[metric], r["setting"]) for r in rows if r["family"] == family)
            style = FAMILY_STYLE.get(family, dict(color=cmap(i % 10), marker=markers[i % len(markers)]))
            lib = next(r for r in rows if r["family"] == family)
            name = family if lib["library"] == "hasten" else f"{family} ({lib['library']})"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **{"linewidth": 1.2, **style})
            for q, s, setting in pts:
                ax.annotate(setting.replace("F1B0 W4 ", ""), (q, s), textcoords="offset points", xytext=(3, 3),
                            fontsize=6, color=style["color"])
        ax.axhline(1.0, color="0.8", linewidth=0.8)
        ax.set_xlabel("PSNR to full compute (dB)  (fidelity; right is better)")
        ax.set_ylabel(f"{label}  (up is better)")
        ax.set_title(f"{label} vs fidelity")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"hasten compare: {result['n']} held-out pairs, {result['num_steps']} steps, {result['machine']}",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def benchmarks_section(result: dict, table: str, plot_path: str | None = None) -> str:
    """The ``## hasten compare`` section of BENCHMARKS.md, generated from a result (never typed)."""
    libs = result["libraries"]
    lines = [section_title(result), "",
             "Generated by the command below (`--benchmarks-md BENCHMARKS.md` rewrites this section); raw "
             "results in the JSON it wrote.", "", "```bash", result.get("command", "hasten compare"), "```", "",
             f"Machine: {result['machine']}. Date: {result['date']}. Libraries: hasten {libs['hasten']}, torch "
             f"{libs['torch']}, diffusers {libs['diffusers']}, cache-dit {libs['cache-dit']}.", ""]
    if plot_path:
        lines += [f"![speedup vs fidelity, one curve per method]({plot_path})", ""]
    lines += [table.rstrip(), ""]
    return "\n".join(lines) + "\n"


def write_benchmarks_section(path: str, section: str, title: str = SECTION_TITLE) -> None:
    """Replace the section headed ``title`` of a markdown file (up to the next ``## `` heading), or
    append it when absent."""
    from hasten.io import write_text_atomic

    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    write_text_atomic(path, new)
