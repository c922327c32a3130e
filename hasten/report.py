"""``hasten report RUN_DIR``: PNG plots of a training run, for people who don't run TensorBoard.

Reads ``metrics.jsonl`` and writes ``RUN_DIR/report.png``: the reward, FLOPs speedup and PSNR to
full compute per iteration (reasoning runs: reward, accuracy and the reasoning tokens' fraction of
the full chain's), each reward term, and the policy's decision frequencies over the schedule (a
heatmap per knob, from the last iteration: per step, or per quarter for runs logged before
``steps/<knob>`` existed).
"""

from __future__ import annotations

import json
import os

import numpy as np

from hasten.errors import HastenError


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise HastenError(f"{run_dir}: no metrics.jsonl (expected a run folder written by `hasten train`)")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise HastenError(f"{path}: empty; the run has not finished an iteration yet")
    return rows


def run_task(run_dir: str, rows: list[dict]):
    """The task of a run: from its ``config.yaml`` (``task``, or the one that claims its generator),
    else the task whose report curves its metrics hold."""
    from hasten.tasks import TASKS, task_of_model

    path = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(path):
        import yaml

        with open(path) as f:
            config = yaml.safe_load(f) or {}
        return task_of_model(str(config.get("generator", "")), str(config.get("task", "auto")))
    for task in TASKS.values():
        if all(key in rows[0] for key, _ in task.report_panels):
            return task
    raise HastenError(f"{run_dir}: no config.yaml, and its metrics are no registered task's")


def decision_levels(metrics: dict, knob: str) -> list[str]:
    """The levels of ``knob`` in a metrics row's ``policy/<knob>/<level>/t<bucket>`` keys, in logged order."""
    levels = []
    for key in metrics:
        if key.startswith(f"policy/{knob}/"):
            level = key[len(f"policy/{knob}/"):].rsplit("/t", 1)[0]
            if level not in levels:
                levels.append(level)
    return levels


def write_report(run_dir: str, out: str | None = None) -> str:
    """Write the report PNG (atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hasten.io import save_figure

    rows = read_metrics(run_dir)
    it = [r["iteration"] for r in rows]
    terms = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    task = run_task(run_dir, rows)
    panels = task.report_panels
    for ax, (key, label) in zip(axes[0], panels):
        ax.plot(it, [r[key] for r in rows], marker=".")
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    ax = axes[1, 0]
    for term in terms:
        ax.plot(it, [r.get(f"rewards/{term}/mean", np.nan) for r in rows], label=term)
    ax.set_title("reward terms (unweighted means)")
    ax.set_xlabel("iteration")
    ax.legend()
    ax.grid(alpha=0.3)
    last = rows[-1]
    knobs = {name: decision_levels(last, name) for name in task.report_knobs}
    for ax in axes[1, 1 + len(knobs):]:
        ax.axis("off")
    for ax, (name, levels) in zip(axes[1, 1:], knobs.items()):
        if f"steps/{name}" in last:  # per schedule position (runs since issue 23)
            grid = np.array(last[f"steps/{name}"])
            ticks = list(range(0, grid.shape[1], max(1, grid.shape[1] // 7)))
            xticks = (ticks, [str(t + 1) for t in ticks])
            xlabel = task.report_step_label
        else:  # per quarter of the schedule
            buckets = sorted({int(k.rsplit("/t", 1)[1]) for k in last if k.startswith(f"policy/{name}/")})
            grid = np.array([[last.get(f"policy/{name}/{level}/t{b}", 0.0) for b in buckets] for level in levels])
            xticks = (range(len(buckets)), [f"Q{b + 1}" for b in buckets])
            xlabel = task.report_schedule_label
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(levels)), [str(v) for v in levels])
        ax.set_xticks(*xticks)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{name}: share of decisions (iteration {last['iteration']})")
        fig.colorbar(image, ax=ax)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    return save_figure(fig, out or os.path.join(run_dir, "report.png"), dpi=90)
