"""``hasten compare``: a learned policy side by side with the training-free accelerators.

On the same held-out (class, noise) pairs of one generator, in one process, it runs (DESIGN.md,
"Evaluation protocol"):

- full compute (the reference of every fidelity number);
- uniform step reduction (fewer schedule steps);
- static sparse attention (hasten's sparse-attention knob at one level for every call);
- the training-free caches of diffusers and cache-dit, through their own libraries on the same
  transformer (:mod:`hasten.bench.peers`), each at several settings;
- a random policy at matched cost (same knobs as the learned policy, decisions drawn i.i.d.);
- the learned policy at each budget.

For each method and setting it measures:

- **FLOPs**: counted as executed (:class:`~hasten.knobs.cost.ExecutedFlops`: every linear,
  attention and matmul that actually runs, whatever hooks the method put on the model), relative
  to full compute on the same pairs; a cache's own extra work (its first block, a forecast's
  matmuls) is included, elementwise work is not (for any method);
- **wall-clock** at batch 1 and batch 16: median seconds per sample over interleaved repeats (every
  method timed round-robin in the same loop), speedup = full time / method time;
- **fidelity**: PSNR and SSIM to the full-compute sample of the same pair;
- **independent metrics**: class accuracy and Frechet distance by the evaluation classifier.

Library caches decide once per transformer call for the whole batch; they are evaluated at batch 1
(``peer_batch_size``), one decision stream per image, their best case. hasten's own methods decide
per row, so their results do not depend on the batch.

Example:
    >>> result = compare("embedded:shapes", "embedded:shapes-budgets", budgets=(0.5, 0.35, 0.25), n=64)  # doctest: +SKIP
    >>> print(markdown(result))  # doctest: +SKIP
    >>> pareto_plot(result, "pareto.png")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.knobs.cost import ExecutedFlops
from hasten.knobs import KNOBS
from hasten.bench.peers import NOT_APPLICABLE, Peer, calibrate_mag_cache, default_peers, library_version
from hasten.io import machine_description
from hasten.bench.compare_acceptance import acceptance
from hasten.policies.evaluate import (HELD_OUT_SEED, interleaved_medians, quality_metrics,
                                      real_features)

logger = logging.getLogger(__name__)

#: Method families of hasten itself (the peers' families come from :func:`default_peers`).
OWN_FAMILIES = {"full": "full compute", "uniform": "uniform steps", "sparse": "static sparse attention",
                "random": "random policy", "policy": "learned policy"}
DEFAULT_BUDGETS = (0.5, 0.35, 0.25)
DEFAULT_UNIFORM_STEPS = (14, 10, 7, 5)


# ----------------------------------------------------------------------------------- methods
@dataclass
class Method:
    """One method at one setting: how to apply it and how to sample with it.

    ``applied()`` is a context inside which ``sample(conditions, seeds, batch_size)`` returns the
    method's (images, extra fields); hasten's methods need no attachment, a peer attaches its
    library's hooks.
    """

    family: str
    setting: str
    library: str
    kind: str  # "full", "uniform", "sparse", "random", "policy" or "peer"
    sample_fn: object = field(repr=False)
    context: object = field(default=None, repr=False)
    options: dict = field(default_factory=dict)
    batch_invariant: bool = True  # hasten's methods decide per row; a library cache per batch

    @property
    def name(self) -> str:
        return self.family if not self.setting else f"{self.family} ({self.setting})"

    def applied(self):
        return self.context() if self.context is not None else contextlib.nullcontext()

    def sample(self, conditions, seeds, batch_size: int):
        return self.sample_fn(conditions, seeds, batch_size)


def _hasten_version() -> str:
    from hasten import __version__

    return __version__


def _own(generator, family_key, setting, steps, decisions=None, reference_steps=None, forecast=False,
         **options) -> Method:
    if forecast:
        options["forecast"] = forecast

    def sample(conditions, seeds, batch_size):
        images, stats = generator.sample(list(conditions), list(seeds), num_steps=steps, decisions=decisions,
                                         batch_size=batch_size, forecast=forecast)
        # hasten's analytic count (relative to its own schedule length), a cross-check of the counted FLOPs
        return images, {"flops_fraction_analytic": float(stats["flops_fraction"].mean()) * steps / (reference_steps or steps)}

    @contextlib.contextmanager
    def knobs():
        # the plain sampler runs on the plain transformer; the knob-driven one attaches its hooks
        # here, outside the timed region (as a server would, once)
        if decisions is None:
            generator.detach_knobs()
        else:
            generator.attach_knobs()
        yield

    return Method(OWN_FAMILIES[family_key], setting, "hasten", family_key, sample, context=knobs, options=options)


def _peer_method(generator, peer: Peer, steps: int) -> Method:
    return Method(peer.family, peer.setting, peer.library, "peer",
                  lambda conditions, seeds, batch_size: (peer.sample(generator, conditions, seeds, batch_size), {}),
                  context=lambda: peer.applied(generator, steps), options=dict(peer.options), batch_invariant=False)


def random_policy(policy, generator, target_fraction: float, num_steps: int, seeds: Sequence[int],
                  budget: float) -> tuple:
    """A policy that draws its knob levels i.i.d. (blind to the observation), over the levels the
    learned ``policy`` may use, spending ``target_fraction`` of the full-compute FLOPs on ``seeds``.

    How the cost is matched: the level probabilities of every knob move along one path, from
    "always level 0" (t = 0) through "uniform over the allowed levels" (t = 1) to "always the
    cheapest level" (t = 2). The result is a :class:`~hasten.policies.heads.Policy` with zeroed
    weights and those probabilities as its biases, so it samples exactly as the learned policy does
    (the same seeded random numbers per sample and call), only blind. Its FLOPs on ``seeds`` follow
    from its decisions alone, so they are computed exactly without the model (hasten's row
    bookkeeping and analytic per-level costs; a row's first call computes every block), and ``t``
    is found by bisection on that number.

    Returns:
        (policy, info) where info holds ``t``, the level probabilities and the FLOPs fraction it
        spends on ``seeds``.
    """
    from hasten.models.rows import RowState
    from hasten.policies.heads import Policy, PolicyConfig

    cost = generator.step_cost()
    heads = policy.knobs  # each head's levels (up to the highest the policy may use)
    allowed = {name: list(policy.config.allowed_levels.get(name, range(len(levels)))) for name, levels in heads.items()}
    keep = torch.tensor(KNOBS[2].levels, dtype=torch.float32)
    sigmas = generator.make_scheduler(num_steps).sigmas.cpu()

    def blind_at(t):
        probs = {}
        for knob in KNOBS:
            levels = allowed[knob.name]
            zero, uniform, cheapest = (np.zeros(len(heads[knob.name])) for _ in range(3))
            zero[levels[0]], uniform[levels], cheapest[levels[-1]] = 1.0, 1.0 / len(levels), 1.0
            mix = (1 - t) * zero + t * uniform if t <= 1 else (2 - t) * uniform + (t - 1) * cheapest
            probs[knob.name] = [float(v) for v in mix]
        blind = Policy(PolicyConfig(**{**policy.config.__dict__, "init_probs": probs}))
        with torch.no_grad():
            for module in blind.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.zero_()
        return blind.eval(), probs

    def spent(t):
        blind, _ = blind_at(t)
        decide = blind.decide(budget)
        rows = RowState(len(seeds), num_steps, sigmas, cfg=False, seeds=seeds)
        while not rows.done.all():
            live = (~rows.done).nonzero().squeeze(1)
            levels = torch.from_numpy(decide(rows)).long()[live]
            cache = torch.where(rows.model_calls[live] == 0, 0, levels[:, 1])  # the first call computes everything
            rows.record_call(live, rows.index[live], levels[:, 0], cache, levels[:, 2],
                             cost.fractions(cache, keep[levels[:, 2]]))
            rows.cache.filled[live] = True
        return float(rows.flops_fraction().mean())

    lo, hi = 0.0, 2.0
    low, high = spent(hi), spent(lo)
    if not low <= target_fraction <= high:
        raise HastenError(f"random policy: a FLOPs fraction of {target_fraction:.3f} is outside what i.i.d. "
                          f"decisions over the allowed levels spend ({low:.3f}..{high:.3f})")
    for _ in range(24):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spent(mid) > target_fraction else (lo, mid)
    t = lo if abs(spent(lo) - target_fraction) <= abs(spent(hi) - target_fraction) else hi
    blind, probs = blind_at(t)
    return blind, {"t": t, "probs": {k: [round(v, 4) for v in p] for k, p in probs.items()},
                   "flops_fraction_on_pairs": spent(t), "target_flops_fraction": target_fraction}


def method_keys(peers: dict[str, list[Peer]]) -> dict[str, str]:
    """``--methods`` key -> family name (hasten's own and the peers')."""
    keys = {key: family for key, family in OWN_FAMILIES.items()}
    keys.update({family.lower().replace(" ", "-"): family for family in peers})
    return keys


def parse_methods(text: str | None, peers: dict[str, list[Peer]]) -> list[str]:
    """Comma-separated ``--methods`` -> family names (full compute is always run: it is the reference)."""
    keys = method_keys(peers)
    if not text:
        return list(keys.values())
    chosen = []
    for key in (k.strip().lower() for k in text.split(",") if k.strip()):
        if key not in keys:
            raise HastenError(f"--methods: unknown method {key!r}; expected some of {', '.join(keys)}")
        chosen.append(keys[key])
    return ["full compute"] + [f for f in chosen if f != "full compute"]


def parse_budgets(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.5,0.35,0.25"`` -> (0.5, 0.35, 0.25); each must be a fraction in (0, 1]."""
    values = text.split(",") if isinstance(text, str) else list(text)
    try:
        budgets = tuple(float(v) for v in values if str(v).strip())
    except ValueError:
        raise HastenError(f"--budgets {text!r}: expected comma-separated FLOPs fractions, e.g. 0.5,0.35,0.25") from None
    bad = [b for b in budgets if not (np.isfinite(b) and 0 < b <= 1)]
    if not budgets or bad:
        raise HastenError(f"--budgets {text!r}: expected FLOPs fractions in (0, 1], e.g. 0.5,0.35,0.25"
                          + (f" ({bad[0]} is not)" if bad else ""))
    return budgets


# ----------------------------------------------------------------------------------- the benchmark
def compare(generator, policy=None, classifier=None, budgets: Sequence[float] = DEFAULT_BUDGETS, n: int = 256,
            seed: int = HELD_OUT_SEED, methods: str | None = None, uniform_steps: Sequence[int] | None = None,
            timing_samples: int = 2, timing_repeats: int = 3, timing_batches: Sequence[int] = (1, 16),
            batch_size: int = 64, peer_batch_size: int = 1, progress: bool = True,
            policy_path: str | None = None) -> dict:
    """Run every method on ``n`` held-out pairs and measure it; returns the result dict.

    Args:
        generator: a hasten generator (``hasten.load_generator(...)``) or its name.
        policy: a :class:`~hasten.policies.heads.Policy` or a policy folder (needed for the
            ``policy`` and ``random`` methods).
        classifier: the evaluation classifier or its folder (default: the generator's own; a
            diffusers pipeline folder has none: no class accuracy or Frechet distance).
        budgets: target budgets of the learned policy (each also gives a random policy at the
            learned policy's measured FLOPs).
        n: held-out (class, noise) pairs (seeds ``seed``..``seed + n - 1``, classes round-robin).
        methods: comma-separated subset (see :func:`method_keys`); default: all.
        uniform_steps: step counts of uniform step reduction (default: 14, 10, 7, 5, those below the
            schedule's length).
        timing_samples / timing_repeats / timing_batches: wall-clock: samples timed at batch 1,
            interleaved repeats (median), and the batch sizes timed (batch b times the first b pairs).
        batch_size: rows per call for hasten's own methods in the quality pass.
        peer_batch_size: rows per sampling run for library caches in the quality pass (they decide
            per batch; 1 = per image).
        policy_path: where ``policy`` was loaded from (recorded; a folder ``policy`` records itself).

    Returns:
        A dict with ``methods`` (one entry per method and setting, with every metric), the
        ``acceptance`` checks, ``libraries`` (name -> version), the machine, the date, and how the
        random policy's cost and MagCache's ratios were obtained.
    """
    from tqdm.auto import tqdm

    from hasten.models import load_generator
    from hasten.models.registry import evaluation_classifier
    from hasten.policies.heads import Policy

    generator = load_generator(generator) if isinstance(generator, str) else generator
    budgets = parse_budgets(budgets)
    if isinstance(policy, str):
        policy_path, policy = policy, Policy.from_pretrained(policy)
    if n < 1:
        raise HastenError(f"n={n}: expected at least one pair")
    steps = (policy.config.num_steps if policy is not None else 0) or generator.default_steps
    if uniform_steps is None:  # the defaults that fit this schedule
        uniform_steps = [k for k in DEFAULT_UNIFORM_STEPS if k < steps] or [max(1, steps // 2)]
    bad_steps = [k for k in uniform_steps if not 1 <= int(k) < steps]
    if bad_steps:
        raise HastenError(f"uniform steps {bad_steps}: expected step counts in 1..{steps - 1}")
    calibration = ([i % generator.num_classes for i in range(8)], list(range(8)))  # training-range seeds
    peers = default_peers(steps, calibration)
    families = parse_methods(methods, peers)
    not_applicable = dict(NOT_APPLICABLE)
    for family, settings in list(peers.items()):  # e.g. diffusers' caches on a transformer without CacheMixin
        reason = settings[0].unsupported(generator)
        if reason is not None:
            not_applicable[f"{family} ({settings[0].library})"] = reason
            del peers[family]
            families = [f for f in families if f != family]
    if policy is not None:
        policy.check_compatible(generator, where=policy_path or "policy")
    elif {"learned policy", "random policy"} & set(families):
        if methods:
            raise HastenError("the 'policy' and 'random' methods need --policy PATH")
        families = [f for f in families if f not in ("learned policy", "random policy")]
    if classifier is None or isinstance(classifier, str):
        classifier = evaluation_classifier(generator, classifier)

    labels = [i % generator.num_classes for i in range(n)]
    seeds = [seed + i for i in range(n)]
    real_feats = None if classifier is None else real_features(classifier, seed, n)
    timing_batches = sorted({int(b) for b in timing_batches})

    # --- the methods, in table order (the random policies are built after the learned policy ran)
    plan: list[Method] = [_own(generator, "full", "", steps)]
    if "uniform steps" in families:
        plan += [_own(generator, "uniform", f"{k} steps", k, reference_steps=steps, num_steps=k) for k in uniform_steps]
    if "static sparse attention" in families:
        keep = KNOBS[2].levels
        plan += [_own(generator, "sparse", f"keep={keep[level]}", steps, decisions=np.array([0, 0, level]),
                      keep=keep[level]) for level in range(1, len(keep))]
    for family, settings in peers.items():
        if family in families:
            plan += [_peer_method(generator, peer, steps) for peer in settings]
    if "learned policy" in families:
        plan += [_own(generator, "policy", f"budget={b}", steps, decisions=policy.decide(b),
                      forecast=policy.config.sampler_forecast, budget=b) for b in budgets]
    mag = None
    if "MagCache" in families:  # diffusers' own calibration mode, on training-range pairs
        mag = {"seeds": calibration[1], "classes": calibration[0],
               "ratios": [round(r, 5) for r in calibrate_mag_cache(generator, *calibration, steps)]}

    # --- quality and counted FLOPs, one method at a time
    rows: list[dict] = []
    images_full = None
    bar = tqdm(total=len(plan) + (len(budgets) if "random policy" in families else 0), desc="compare: quality",
               disable=not progress, dynamic_ncols=True)
    random_info = {}
    full_flops = None

    def measure(method: Method) -> dict:
        nonlocal images_full, full_flops
        bar.set_postfix_str(method.name[:40])
        per_call = batch_size if method.batch_invariant else peer_batch_size
        start = time.perf_counter()
        with method.applied(), ExecutedFlops() as counter:
            images, extra = method.sample(labels, seeds, per_call)
        seconds = time.perf_counter() - start
        if images_full is None:
            images_full, full_flops = images, counter.flops
        row = {"method": method.name, "family": method.family, "setting": method.setting,
               "library": method.library, "version": (_hasten_version() if method.library == "hasten"
                                                       else library_version(method.library)),
               "kind": method.kind, "options": method.options, "quality_batch_size": per_call,
               "flops_fraction": counter.flops / full_flops, "quality_pass_seconds": seconds,
               **extra, **quality_metrics(images, images_full, labels, classifier, real_feats)}
        row["speedup_flops"] = 1.0 / row["flops_fraction"]
        bar.update(1)
        return row

    for method in list(plan):
        try:
            rows.append(measure(method))
        except Exception as e:  # noqa: BLE001 - a library's accelerator that fails on this model
            if method.kind != "peer":
                raise
            logger.warning("%s failed on this model, reported as not run: %s", method.name, e)
            error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            not_applicable[f"{method.name} ({method.library})"] = f"failed on this model: {error}"
            plan.remove(method)
            bar.update(1)
    if "random policy" in families:
        for b in budgets:
            learned = next(r for r in rows if r["kind"] == "policy" and r["options"]["budget"] == b)
            blind, info = random_policy(policy, generator, learned["flops_fraction"], steps, seeds, b)
            method = _own(generator, "random", f"matched to budget={b}", steps, decisions=blind.decide(b),
                          forecast=policy.config.sampler_forecast, matched_to_budget=b,
                          target_flops_fraction=learned["flops_fraction"])
            random_info[f"budget={b}"] = info
            plan.append(method)
            rows.append(measure(method))
    bar.close()

    # --- wall-clock: every method timed round-robin in the same loop, at each batch size
    for b in timing_batches:
        count = timing_samples if b == 1 else min(b, n)
        t_labels, t_seeds = labels[:count], seeds[:count]

        def timed(method: Method, b=b, t_labels=t_labels, t_seeds=t_seeds):
            def run():
                with method.applied():
                    start = time.perf_counter()
                    method.sample(t_labels, t_seeds, b)
                    return (time.perf_counter() - start) / len(t_seeds)
            return run

        plan[0].sample(t_labels[:1], t_seeds[:1], 1)  # warm-up
        with tqdm(total=len(plan) * timing_repeats, desc=f"compare: timing at batch {b}", disable=not progress,
                  dynamic_ncols=True) as tbar:
            seconds = interleaved_medians({m.name: timed(m) for m in plan}, timing_repeats, progress=tbar)
        for row in rows:
            row[f"seconds_batch{b}"] = seconds[row["method"]]
            row[f"speedup_wall_batch{b}"] = seconds[plan[0].name] / seconds[row["method"]]

    result = {
        "n": n, "num_steps": steps, "guidance": generator.default_guidance, "budgets": list(budgets),
        "held_out_seeds": [seed, seed + n - 1], "generator": generator.path, "policy": policy_path,
        "methods": rows,
        "timing": {"batch1_samples": timing_samples, "repeats": timing_repeats, "batches": timing_batches,
                   "statistic": "median seconds per sample, all methods interleaved round-robin"},
        "quality_batch_size": {"hasten": batch_size, "peers": peer_batch_size},
        "random_policy": random_info, "mag_cache_calibration": mag, "not_applicable": not_applicable,
        "libraries": {"hasten": _hasten_version(), "torch": torch.__version__,
                      "diffusers": library_version("diffusers"), "cache-dit": library_version("cache-dit")},
        "machine": machine_description(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    result["acceptance"] = acceptance(result)
    return result
