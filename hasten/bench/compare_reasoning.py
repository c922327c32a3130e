"""``hasten compare --task reasoning``: the chain-of-thought head against the ways to shorten a
frozen LM's reasoning, and against fine-tuning the whole LM (DESIGN.md, "Evaluation protocol";
PEERS.md, "Reasoning length").

On the same held-out problems (``n`` per difficulty), greedy decoding, one process:

- full chain — the model writes its chain and answers by itself;
- fixed budgets — the answer forced after ``k`` chain lines (s1's budget forcing with a fixed cap);
- DEER-style early exit — at each boundary a trial answer is written on a copy of the KV cache;
  stop when its confidence (geometric mean of its tokens' probabilities) >= tau. The trial
  answers are compute: ``probe_tokens`` (a trial that ends the chain is the answer, counted once);
- the learned head — greedy (stop when P(stop) > 0.5) and at other thresholds on P(stop);
- trl's GRPOTrainer fine-tuning every weight of the LM with a length-penalised reward (the
  fine-tune-everything peer), then decoding its own full chains.

Reported per method: accuracy (and by difficulty), mean reasoning tokens, their fraction of the
full chain's, probe and answer tokens, total generated tokens, wall-clock seconds of the pass, and
the training cost. The checks: the head's greedy point uses <= 50% of the full chain's reasoning
tokens at accuracy at most 1 point lower, and at its mean tokens it is more accurate than every
fixed budget and than the DEER rule (their best accuracy at no more tokens, interpolated): reasoning
tokens for the fixed budgets, generated tokens with DEER's trial answers counted for DEER (the
comparison on reasoning tokens alone, which leaves DEER's probes out, is reported beside it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone

import numpy as np

from hasten.errors import HastenError
from hasten.io import machine_description

logger = logging.getLogger(__name__)

SECTION_TITLE = "## hasten compare --task reasoning: chain-of-thought head vs fixed budgets, DEER, trl GRPO"
DEFAULT_FIXED_STEPS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12)
DEFAULT_DEER_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
DEFAULT_HEAD_THRESHOLDS = (0.2, 0.35, 0.5, 0.65, 0.8)
ACCURACY_TOLERANCE = 0.01  # "accuracy at most 1 point lower"


def best_accuracy_at(points: list[tuple[float, float]], tokens: float) -> float | None:
    """Best accuracy a method reaches with at most ``tokens`` mean reasoning tokens: its points at or
    below, and the linear interpolation between consecutive points (by tokens) that spans it."""
    points = sorted(points)
    best = [a for t, a in points if t <= tokens + 1e-9]
    for (t0, a0), (t1, a1) in zip(points, points[1:]):
        if t0 <= tokens <= t1 and t1 > t0:
            best.append(a0 + (a1 - a0) * (tokens - t0) / (t1 - t0))
    return max(best) if best else None


def deer_rule(tau: float):
    """DEER's early exit as a ``run_chains`` decide function: probe every waiting row, stop where the
    trial answer's confidence >= ``tau``; probes that do not end the chain are counted."""

    def decide(decoder, rows):
        _, confidence, spent = decoder.probe(decoder.waiting)
        stop = decoder.waiting & (confidence >= tau)
        decoder.probe_tokens += np.where(decoder.waiting & ~stop, spent, 0)
        return stop

    return decide


def fixed_budget(k: int):
    """The answer forced after ``k`` chain lines."""
    return lambda decoder, rows: decoder.waiting & (decoder.steps >= k)


def head_rule(policy, threshold: float | None, budget: float):
    return lambda decoder, rows: policy.stop_decisions(decoder, budget, threshold=threshold, greedy=threshold is None)


def _row(method, family, setting, library, out, full_tokens, seconds, difficulty, conditions, **extra) -> dict:
    think = float(out["think_tokens"].mean())
    probe = float(out["probe_tokens"].mean())
    answer = float(out["answer_tokens"].mean())
    return {
        "method": method, "family": family, "setting": setting, "library": library,
        "accuracy": float(out["correct"].mean()),
        "accuracy_by_difficulty": {str(d): float(out["correct"][difficulty == d].mean()) for d in conditions},
        "think_tokens": think, "token_fraction": think / max(full_tokens, 1e-9),
        "think_tokens_by_difficulty": {str(d): float(out["think_tokens"][difficulty == d].mean()) for d in conditions},
        "probe_tokens": probe, "answer_tokens": answer, "total_tokens": think + probe + answer,
        "seconds": seconds, **extra}


def _training_minutes(policy_path: str) -> float | None:
    """Rollout + update seconds of the run that wrote ``RUN/policy`` (its metrics.jsonl), in minutes."""
    metrics = os.path.join(os.path.dirname(os.path.abspath(policy_path)), "metrics.jsonl")
    if not os.path.isfile(metrics):
        return None
    with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sum(r.get("timing_s/rollout", 0) + r.get("timing_s/update", 0) for r in rows) / 60


def compare_reasoning(reasoner="embedded:arith", policy=None, n: int = 64, seed: int = 1_000_000,
                      fixed_steps=DEFAULT_FIXED_STEPS, deer_thresholds=DEFAULT_DEER_THRESHOLDS,
                      head_thresholds=DEFAULT_HEAD_THRESHOLDS, trl_model: str | None = None,
                      trl_minutes: float = 0.0, trl_out: str | None = None, trl_options: dict | None = None,
                      batch_size: int = 64, progress: bool = True) -> dict:
    """Run every method on ``n`` held-out problems per difficulty; returns the result (see module docstring)."""
    import torch
    import transformers

    from hasten import __version__
    from hasten.models.reasoner import load_reasoner, run_chains
    from hasten.policies.heads import load_policy

    if isinstance(reasoner, str):
        reasoner = load_reasoner(reasoner)
    head = None
    if policy is not None:
        head = load_policy(policy) if isinstance(policy, str) else policy
        from hasten.policies.cot import CoTLengthHead

        if not isinstance(head, CoTLengthHead):
            raise HastenError(f"--policy {policy}: a denoising policy; --task reasoning needs a chain-of-thought "
                              "head (trained on a reasoning experiment)")
        head.check_compatible(reasoner, where=str(policy))
    conditions = reasoner.conditions
    difficulty = np.repeat(conditions, n)
    problems = reasoner.problems(difficulty, np.tile(np.arange(seed, seed + n), len(conditions)))
    plan = [("full chain", "full", "natural end", None)]
    plan += [(f"fixed budget k={k}", "fixed budget", f"k={k}", fixed_budget(k)) for k in fixed_steps]
    plan += [(f"DEER tau={t}", "DEER", f"tau={t}", deer_rule(t)) for t in deer_thresholds]
    if head is not None:
        plan += [("hasten head (greedy)", "hasten head", "P(stop)>0.5", head_rule(head, None, head.config.budget))]
        plan += [(f"hasten head P(stop)>{t}", "hasten head", f"P(stop)>{t}", head_rule(head, t, head.config.budget))
                 for t in head_thresholds if abs(t - 0.5) > 1e-9]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan) + bool(trl_model or trl_minutes), desc="compare reasoning", dynamic_ncols=True)
    rows, full_tokens = [], None
    for method, family, setting, decide in plan:
        t0 = time.perf_counter()
        out = run_chains(reasoner, problems, decide, batch_size=batch_size)
        seconds = time.perf_counter() - t0
        if full_tokens is None:
            full_tokens = float(out["think_tokens"].mean())
        extra = {}
        if family == "hasten head":
            extra["training_minutes"] = _training_minutes(policy) if isinstance(policy, str) else None
            extra["trained_parameters"] = sum(p.numel() for p in head.parameters())
        rows.append(_row(method, family, setting, "hasten", out, full_tokens, seconds, difficulty, conditions,
                         **extra))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(method=method[:24], acc=f"{rows[-1]['accuracy']:.3f}", tokens=f"{rows[-1]['think_tokens']:.0f}")
    if trl_model or trl_minutes:
        import trl

        summary = None
        if not trl_model:
            from hasten.trainers.trl_baseline import train_trl_grpo

            trl_model = trl_out or "runs/trl-grpo-baseline"
            summary = train_trl_grpo(reasoner_path_of(reasoner), trl_model, minutes=trl_minutes, **(trl_options or {}))
        tuned = load_reasoner(trl_model)
        t0 = time.perf_counter()
        out = run_chains(tuned, problems, None, batch_size=batch_size)
        seconds = time.perf_counter() - t0
        minutes = summary["train_seconds"] / 60 if summary else _trl_minutes(trl_model)
        rows.append(_row("trl GRPOTrainer fine-tune (full chain)", "trl GRPO fine-tune", "natural end",
                         f"trl {trl.__version__}", out, full_tokens, seconds, difficulty, conditions,
                         training_minutes=minutes, trained_parameters=tuned.param_count(), model=trl_model,
                         trl_summary=summary))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result = {
        "task": "reasoning", "reasoner": reasoner.name, "reasoner_parameters": reasoner.param_count(),
        "n_per_difficulty": n, "difficulties": list(map(int, conditions)), "problems": len(problems),
        "first_seed": seed, "machine": machine_description(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "libraries": {"hasten": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "methods": rows,
    }
    result["acceptance"] = acceptance(result)
    return result


def reasoner_path_of(reasoner) -> str:
    from hasten.models.reasoner import resolve_reasoner_path

    return resolve_reasoner_path(reasoner.name) if reasoner.name.startswith("embedded:") else reasoner.name


def _trl_minutes(path: str) -> float | None:
    meta = os.path.join(path, "hasten_reasoner.json")
    try:
        with open(meta) as f:
            seconds = json.load(f).get("training", {}).get("finetune", {}).get("train_seconds")
    except (OSError, ValueError):
        return None
    return None if seconds is None else seconds / 60


def acceptance(result: dict) -> dict:
    """The checks of issue 6 on one result (see the module docstring)."""
    rows = result["methods"]
    full = next(r for r in rows if r["family"] == "full")
    greedy = next((r for r in rows if r["method"] == "hasten head (greedy)"), None)
    if greedy is None:
        return {}
    out = {"head_token_fraction": greedy["token_fraction"], "head_accuracy": greedy["accuracy"],
           "full_accuracy": full["accuracy"],
           "half_the_tokens_within_1_point": greedy["token_fraction"] <= 0.5 and
           greedy["accuracy"] >= full["accuracy"] - ACCURACY_TOLERANCE - 1e-12}
    for family, metric in (("fixed budget", "think_tokens"), ("DEER", "think_tokens"), ("DEER", "total_tokens")):
        pts = [(r[metric], r["accuracy"]) for r in rows if r["family"] == family]
        if family == "fixed budget":
            pts.append((full["think_tokens"], full["accuracy"]))  # no cap is a budget too
        at = best_accuracy_at(pts, greedy[metric])
        key = f"{family.replace(' ', '_')}_{metric}"
        out[key] = {"head_" + metric: greedy[metric], "head_accuracy": greedy["accuracy"],
                    "their_best_accuracy_at_that_many": at,
                    "head_more_accurate": at is None or greedy["accuracy"] > at}
    # DEER's trial answers are compute the head does not spend: "the trial's cost counted" (issue 6)
    out["more_accurate_than_fixed_budgets_and_deer"] = (out["fixed_budget_think_tokens"]["head_more_accurate"] and
                                                         out["DEER_total_tokens"]["head_more_accurate"])
    return out


# ----------------------------------------------------------------------------- reports
def markdown(result: dict) -> str:
    lines = [f"{result['problems']} held-out problems ({result['n_per_difficulty']} per difficulty "
             f"{result['difficulties'][0]}-{result['difficulties'][-1]} operations, seeds from {result['first_seed']}), "
             f"{result['reasoner']} ({result['reasoner_parameters'] / 1e6:.2f}M parameters), greedy decoding; "
             f"{result['machine']}, {result['date']}.", "",
             "| method | library | accuracy | reasoning tokens | of full chain | probe tokens | total tokens | "
             "seconds | training |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["methods"]:
        train = "-"
        if r.get("training_minutes") is not None:
            train = f"{r['training_minutes']:.1f} min, {r['trained_parameters'] / 1e3:.1f}k params"
        lines.append(f"| {r['method']} | {r['library']} | {r['accuracy']:.3f} | {r['think_tokens']:.1f} | "
                     f"{r['token_fraction']:.2f} | {r['probe_tokens']:.1f} | {r['total_tokens']:.1f} | "
                     f"{r['seconds']:.1f} | {train} |")
    a = result.get("acceptance") or {}
    if a:
        lines += ["", f"- Head (greedy): {a['head_token_fraction']:.2f} of the full chain's reasoning tokens, accuracy "
                      f"{a['head_accuracy']:.3f} vs {a['full_accuracy']:.3f} with the full chain: "
                      f"{'reached' if a['half_the_tokens_within_1_point'] else 'NOT reached'} "
                      "(target: <= 0.50 of the tokens, at most 1 point lower)."]
        for key, label in (("fixed_budget_think_tokens", "fixed budgets (reasoning tokens)"),
                           ("DEER_total_tokens", "DEER (total tokens, its trial answers counted: the check)"),
                           ("DEER_think_tokens", "DEER (reasoning tokens only, trial answers left out: for the record)")):
            c = a[key]
            metric = "think_tokens" if "think" in key else "total_tokens"
            theirs = c["their_best_accuracy_at_that_many"]
            lines.append(f"- vs {label}: at the head's {c['head_' + metric]:.1f} tokens their best accuracy is "
                         f"{'n/a' if theirs is None else f'{theirs:.3f}'}, the head's {c['head_accuracy']:.3f}: "
                         f"{'more accurate' if c['head_more_accurate'] else 'NOT more accurate'}.")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> str:
    """Accuracy vs mean reasoning tokens, one curve per method (DEER also with its probes counted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hasten.io import save_figure

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    styles = {"fixed budget": dict(color="tab:gray", marker="s"), "DEER": dict(color="tab:orange", marker="^"),
              "hasten head": dict(color="tab:red", marker="o", linewidth=2.0),
              "trl GRPO fine-tune": dict(color="tab:purple", marker="D"), "full": dict(color="black", marker="*")}
    rows = result["methods"]
    for family, style in styles.items():
        pts = sorted((r["think_tokens"], r["accuracy"]) for r in rows if r["family"] == family)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=family, markersize=6, **style)
        if family == "DEER":
            tot = sorted((r["total_tokens"] - r["answer_tokens"], r["accuracy"]) for r in rows if r["family"] == family)
            ax.plot([p[0] for p in tot], [p[1] for p in tot], linestyle="--", alpha=0.6,
                    label="DEER, probe tokens counted", color=style["color"], marker=style["marker"], markersize=4)
    ax.set_xlabel("mean reasoning tokens per problem (left is cheaper)")
    ax.set_ylabel("accuracy (up is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"hasten compare --task reasoning: {result['reasoner']}, {result['problems']} problems", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def benchmarks_section(result: dict, table: str, plot_path: str | None = None) -> str:
    libs = result["libraries"]
    trl_row = next((r for r in result["methods"] if r["family"] == "trl GRPO fine-tune"), None)
    lines = [SECTION_TITLE, "", "Generated by the command below (`--benchmarks-md BENCHMARKS.md` rewrites this "
             "section); raw results in the JSON it wrote.", "", "```bash", result.get("command", "hasten compare"),
             "```", "", f"Machine: {result['machine']}. Date: {result['date']}. Libraries: hasten {libs['hasten']}, "
             f"torch {libs['torch']}, transformers {libs['transformers']}"
             + (f", {trl_row['library']}" if trl_row else "") + ".", ""]
    if plot_path:
        lines += [f"![accuracy vs reasoning tokens, one curve per method]({plot_path})", ""]
    lines += [table.rstrip(), ""]
    return "\n".join(lines) + "\n"
