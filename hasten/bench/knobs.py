"""``hasten knobs bench``: what each knob level costs, counted (FLOPs) and measured (time).

For every model and knob level it reports the analytic FLOPs fraction of a full model call and the
measured time fraction (median over interleaved repeats, so drift on a noisy machine hits every
level alike). Cache-reuse and sparse-attention levels are single model calls on a primed rollout;
step-skip is a whole trajectory (model calls and sampling time relative to full compute). It also
times attention alone (dense vs block-sparse) at each model's shapes, and a batch with mixed
decisions against the sum of its rows.

Models: ``embedded:shapes`` (or any generator folder) and random-weight configs at real token
counts (:data:`RANDOM_MODELS`):

- ``flux-random-1024`` / ``flux-random-4096``: FLUX architecture, 1024 / 4096 image tokens, 128 text
  tokens, 2 double + 4 single blocks of 4 heads x 64, one guidance branch as the guidance-distilled
  FLUX.1-dev; 2 samples per call;
- ``wan-random-5k`` / ``wan-random-20k``: Wan 2.x architecture, 13 latent frames of 30x52 / 60x104
  latents (5070 / 20280 video tokens after the 1x2x2 patching; the second is what Wan 2.1 samples
  for 49 frames at 480x832), 64 text tokens through cross-attention, 6 / 4 blocks of 4 heads x 64;
  1 sample per call, no guidance branch. At 20k tokens a call takes tens of seconds on two cores,
  so that config skips the step-skip trajectories and runs at most 2 repeats.
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F

from hasten.errors import HastenError
from hasten.io import machine_description
from hasten.knobs import CACHE_REUSE, SPARSE_ATTENTION, STEP_SKIP, Workspace, block_sparse_attention

logger = logging.getLogger(__name__)

_FLUX = dict(family="flux", channels=16, num_layers=2, num_single_layers=4, heads=4, head_dim=64, cond_dim=256,
             text_tokens=128, num_steps=28, guidance=1.0)
_WAN = dict(family="wan", channels=16, heads=4, head_dim=64, cond_dim=256, text_tokens=64, num_steps=28,
            guidance=1.0, frames=13)
#: random-weight configs: name -> (random_generator arguments, samples per call, heavy)
RANDOM_MODELS = {
    "flux-random-1024": ({**_FLUX, "image_size": 64}, 2, False),
    "flux-random-4096": ({**_FLUX, "image_size": 128}, 2, True),
    "wan-random-5k": ({**_WAN, "image_size": 30, "image_width": 52, "num_layers": 6}, 1, False),  # 13 x 15 x 26 tokens
    "wan-random-20k": ({**_WAN, "image_size": 60, "image_width": 104, "num_layers": 4}, 1, True),  # 13 x 30 x 52 tokens
}
DEFAULT_MODELS = ("embedded:shapes", "flux-random-1024", "flux-random-4096")


def load_bench_model(name: str):
    """A generator for the benchmark: a random config by name, else ``load_generator(name)``."""
    if name in RANDOM_MODELS:
        from hasten.models.synthetic import random_generator

        config = dict(RANDOM_MODELS[name][0])
        return random_generator(config.pop("family"), **config)
    from hasten.models import load_generator

    return load_generator(name)


def _median_times(functions: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, timed in interleaved rounds."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _call_levels(gen, samples: int, repeats: int) -> list[dict]:
    """Cache-reuse and sparse-attention levels: one model call each on a primed rollout."""
    rollout = gen.start([i % gen.num_classes for i in range(samples)], list(range(samples)))
    gen.step(rollout, np.zeros((samples, 3), dtype=int))  # fills every row's residual cache
    rows = torch.arange(samples)
    position = rollout.index.clone()
    cost = gen.step_cost()
    levels = [("full", 0, 0)]
    levels += [(f"cache_reuse={CACHE_REUSE.levels[c]}", c, 0) for c in (1, 2)]
    levels += [(f"sparse_attention={SPARSE_ATTENTION.levels[s]}", 0, s) for s in (1, 2)]

    def call(c, s):
        keep = torch.full((samples,), SPARSE_ATTENTION.levels[s])
        return lambda: gen.model_call(rollout, rows, position, torch.full((samples,), c), keep)

    medians = _median_times({name: call(c, s) for name, c, s in levels}, repeats)
    results = []
    for name, c, s in levels:
        keep = SPARSE_ATTENTION.levels[s]
        results.append({"knob": name.split("=")[0], "level": name.split("=")[1] if "=" in name else "-",
                        "flops_fraction": cost.fraction(c, keep), "time_fraction": medians[name] / medians["full"],
                        "seconds": medians[name]})
    if samples < 2:
        return results
    # a batch with mixed decisions: half the rows full, half reusing all but the first block
    half = samples // 2
    mixed_cache = torch.tensor([0] * half + [2] * (samples - half))
    mixed = _median_times({"mixed": lambda: gen.model_call(rollout, rows, position, mixed_cache,
                                                            torch.ones(samples))}, repeats)["mixed"]
    predicted = (half * medians["full"] + (samples - half) * medians["cache_reuse=all_but_first"]) / samples
    results.append({"knob": "mixed batch (half full, half all_but_first)", "level": "-",
                    "flops_fraction": (half + (samples - half) * cost.fraction(2)) / samples,
                    "time_fraction": mixed / medians["full"], "seconds": mixed,
                    "sum_of_rows_time_fraction": predicted / medians["full"]})
    return results


def _step_skip(gen, samples: int, repeats: int, num_steps: int) -> list[dict]:
    """Step-skip levels: whole trajectories, model calls and time relative to full compute."""
    conds, seeds = [i % gen.num_classes for i in range(samples)], list(range(samples))
    runs = {k: (lambda k=k: gen.sample(conds, seeds, num_steps=num_steps, decisions=[k, 0, 0]))
            for k in range(len(STEP_SKIP.levels))}
    medians = _median_times(runs, repeats, warmup=0)
    out = []
    for k in range(1, len(STEP_SKIP.levels)):
        _, stats = runs[k]()
        out.append({"knob": "step_skip", "level": str(STEP_SKIP.levels[k]),
                    "flops_fraction": float(stats["flops_fraction"].mean()),
                    "time_fraction": medians[k] / medians[0], "seconds": medians[k],
                    "model_calls": int(stats["model_calls"][0]), "num_steps": num_steps})
    return out


def _attention(gen, repeats: int) -> list[dict]:
    """Attention alone at the model's first block's shapes: dense vs block-sparse."""
    cost = gen.step_cost()
    heads, n, _, d, _ = next(call for call in cost.attention[0] if call[4])  # the sparsified attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, d) for _ in range(3))
    text_first = gen.family.text_first
    workspace = Workspace()  # as attached knobs keep one
    fns = {"dense": lambda: F.scaled_dot_product_attention(q, k, v)}
    for keep in SPARSE_ATTENTION.levels[1:]:
        fns[keep] = lambda keep=keep: block_sparse_attention(q, k, v, cost.text_len, text_first, keep, workspace)
    medians = _median_times(fns, repeats)
    return [{"keep": keep, "tokens": n, "flops_fraction": cost.attention_flops(0, keep) / cost.attention_flops(0),
             "time_fraction": medians[keep] / medians["dense"], "speedup": medians["dense"] / medians[keep]}
            for keep in SPARSE_ATTENTION.levels[1:]]


def bench_knobs(models=DEFAULT_MODELS, repeats: int = 5, samples: int | None = None, progress: bool = True) -> dict:
    """Run the benchmark; returns the JSON-ready result."""
    from tqdm.auto import tqdm

    result = {"command": "hasten knobs bench", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "machine": machine_description(),
              "torch": torch.__version__, "repeats": repeats, "models": []}
    from hasten.models.registry import resolve_generator_path

    for name in models:  # fail before any work on a name that is neither a random config nor a generator
        if name not in RANDOM_MODELS:
            try:
                resolve_generator_path(name)
            except HastenError as e:
                raise HastenError(f"--models: {e}; or one of the random configs {', '.join(RANDOM_MODELS)}") from e
    bar = tqdm(models, desc="knobs bench", disable=not progress, dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(name)
        gen = load_bench_model(name)
        _, per_call, heavy = RANDOM_MODELS.get(name, (None, 8, False))
        n = samples or per_call
        rounds = min(repeats, 2) if heavy else repeats
        cost = gen.step_cost()
        entry = {"model": name, "family": gen.family.name, "blocks": len(cost.linear),
                 "image_tokens": gen.image_tokens(), "repeats": rounds,
                 "text_tokens": cost.text_len, "samples_per_call": n, "cfg_rows": 2 if gen.default_guidance != 1.0 else 1,
                 "gflops_per_row_call": cost.full() / 1e9}
        entry["levels"] = _call_levels(gen, n, rounds)
        if not heavy:  # 28 calls at thousands of tokens take minutes; model calls are arithmetic
            entry["levels"] += _step_skip(gen, n, max(1, (rounds + 1) // 2), num_steps=28)
        entry["attention"] = _attention(gen, rounds)
        gen.detach_knobs()
        result["models"].append(entry)
    return result


def markdown(result: dict) -> str:
    """The benchmark as markdown tables (one per model)."""
    lines = [f"Knob costs — `{result['command']}`, {result['date']}, {result['machine']}, torch {result['torch']}, "
             f"median of {result['repeats']} interleaved repeats.", ""]
    for m in result["models"]:
        lines += [f"**{m['model']}** ({m['family']}, {m['blocks']} blocks, {m['image_tokens']} image/video + "
                  f"{m['text_tokens']} text tokens, {m['samples_per_call']} sample(s) x {m['cfg_rows']} CFG rows, "
                  f"{m['gflops_per_row_call']:.2f} GFLOPs per row-call, median of {m.get('repeats', result['repeats'])})",
                  "",
                  "| knob | level | FLOPs fraction | time fraction | notes |", "|---|---|---:|---:|---|"]
        for lv in m["levels"]:
            note = ""
            if "model_calls" in lv:
                note = f"{lv['model_calls']} model calls of {lv['num_steps']}"
            if "sum_of_rows_time_fraction" in lv:
                note = f"sum of its rows: {lv['sum_of_rows_time_fraction']:.3f}"
            lines.append(f"| {lv['knob']} | {lv['level']} | {lv['flops_fraction']:.3f} | {lv['time_fraction']:.3f} | {note} |")
        lines += ["", "| attention alone | tokens | FLOPs fraction | time fraction | speedup |", "|---|---:|---:|---:|---:|"]
        for a in m["attention"]:
            lines.append(f"| keep {a['keep']} | {a['tokens']} | {a['flops_fraction']:.3f} | {a['time_fraction']:.3f} | "
                         f"{a['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def parse_models(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    if not models:
        raise HastenError(f"--models {text!r}: expected a comma-separated list, e.g. {','.join(DEFAULT_MODELS)}")
    return models
