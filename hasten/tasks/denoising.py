"""The denoising task: the sampling loop of a frozen flow-matching DiT (``hasten/Denoising-v0``).

Its model is a :class:`~hasten.models.adapter.DiTGenerator` (``embedded:shapes``, a generator folder,
or a diffusers FLUX / SD3 pipeline folder); its policy a :class:`~hasten.policies.Policy` over the
three knobs (:mod:`hasten.knobs`); its references the full-compute samples
(:class:`~hasten.envs.references.ReferenceCache`); its peers the training-free caches of diffusers and
cache-dit (:mod:`hasten.bench.compare`); its plug-in :func:`hasten.policies.accelerate.accelerate`.
"""

from __future__ import annotations

import copy
import logging
import os

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.policies.shipped import resolve_policy_path
from hasten.metrics import psnr
from hasten.tasks.registry import Task, TaskSetup, register_task

logger = logging.getLogger(__name__)

#: name -> {weight, options}: PSNR/10 to full compute, -4x the relative budget overshoot, P(full) by the discriminator
DEFAULT_REWARDS = {"fidelity": {"weight": 1.0}, "cost": {"weight": 4.0, "mode": "overshoot"},
                   "discriminator": {"weight": 0.5}}


@register_task
class DenoisingTask(Task):
    name = "denoising"
    env_ids = ("hasten/Denoising-v0",)
    default_model = "embedded:shapes"
    default_rewards = DEFAULT_REWARDS
    default_budgets = "0.5,0.35,0.25"
    fallback = True
    report_panels = (("charts/reward", "reward (composite)"), ("charts/speedup_flops", "FLOPs speedup (x)"),
                     ("charts/fidelity_psnr", "PSNR to full compute (dB)"))
    report_schedule_label = "quarter of the schedule (noise -> sample)"
    report_step_label = "step (noise -> sample); a dark column: no model call there"
    report_knobs = ("step_skip", "cache_reuse")

    # ------------------------------------------------------------------------- the model
    def claims(self, model: str) -> bool:
        return True  # every generator that is no other task's (asked last: ``fallback``)

    def load_model(self, name_or_path: str, options: dict | None = None, device: str | None = None):
        from hasten.models import load_generator

        generator = load_generator(name_or_path, **(options or {}))
        if device not in (None, "cpu") and generator.device.type == "cpu":
            generator.transformer.to(device)
            generator.class_encoder.to(device)
        return generator

    # ------------------------------------------------------------------------- training
    def setup(self, config, model, reward, run_dir: str) -> TaskSetup:
        from hasten.policies.heads import Policy

        num_steps = config.num_steps or model.default_steps
        guidance = model.default_guidance if config.guidance == -1.0 else config.guidance
        policy_config = copy.deepcopy(config.policy).covering_allowed_levels()
        policy_config.family = model.family.name
        policy_config.generator = config.generator
        policy_config.generator_options = dict(config.generator_options)
        policy_config.num_steps = num_steps
        policy_config.budget = config.budget
        policy_config.cost_unit = config.cost_unit
        policy_config.forecast = config.forecast
        policy_config.forecast_space = config.forecast_space
        if config.cost_unit == "time":
            from hasten.knobs.cost import measure_time_fractions

            policy_config.time_table = measure_time_fractions(model, rows=1)
            logger.info("time fractions by (cache, sparse) level at batch 1: %s", policy_config.time_table)
        policy = Policy(policy_config)
        options = {"num_steps": num_steps, "guidance": guidance, "budget": config.budget,
                   "cost_unit": config.cost_unit, "time_table": policy_config.time_table or None,
                   "forecast": policy_config.sampler_forecast}
        references = self.references(model, options, os.path.join(run_dir, "references"))
        rng = np.random.default_rng(config.seed)
        pairs = np.stack([np.arange(config.train_pairs) % model.num_classes,
                          rng.integers(0, 1_000_000, size=config.train_pairs)], axis=1)
        return TaskSetup(policy=policy, references=references, env_options=options, pairs=pairs,
                         num_steps=num_steps, guidance=guidance)

    def references(self, model, env_options: dict, cache_dir: str | None = None):
        from hasten.envs.references import ReferenceCache

        return ReferenceCache(model, env_options["num_steps"], env_options["guidance"], cache_dir)

    def make_env(self, num_envs: int, model, reward, references, env_options: dict, group_size: int = 1):
        from hasten.envs.denoising import DenoisingVectorEnv

        return DenoisingVectorEnv(num_envs=num_envs, generator=model, rewards=reward, references=references,
                                  **env_options)

    def metrics(self, batch) -> dict:
        fidelity = psnr(torch.from_numpy(batch.images), torch.from_numpy(batch.references)).clamp(max=100)
        flops = batch.flops_fraction
        return {"charts/speedup_flops": float(1.0 / flops.mean()), "charts/flops_fraction": float(flops.mean()),
                "charts/fidelity_psnr": float(fidelity.mean()),
                "charts/within_budget": float((batch.cost_fraction <= batch.budgets + 1e-9).mean())}

    def progress(self, m: dict) -> dict:
        return {"reward": f"{m['charts/reward']:.3f}", "speedup": f"{m['charts/speedup_flops']:.2f}x",
                "psnr": f"{m['charts/fidelity_psnr']:.1f}dB"}

    def log_samples(self, trainer, iteration: int, n: int = 8) -> None:
        """A grid of full-compute (top row) vs greedy-policy samples (bottom row) of training pairs."""
        n = min(n, len(trainer.pairs))
        conditions, seeds = trainer.pairs[:n, 0].tolist(), trainer.pairs[:n, 1].tolist()
        images, _ = trainer.generator.sample(conditions, seeds, num_steps=trainer.num_steps,
                                             guidance=trainer.guidance,
                                             decisions=trainer.policy.decide(trainer.config.budget))
        full = trainer.references.get(conditions, seeds)
        grid = trainer.generator.preview(torch.cat([full, images.cpu()]))  # (2n, 3, H, W); latents decoded
        if grid.ndim == 5:  # clips: their middle frames
            grid = grid[:, :, grid.shape[2] // 2]
        grid = grid.view(2, n, *grid.shape[1:]).permute(2, 0, 3, 1, 4).reshape(grid.shape[1], 2 * grid.shape[2], -1)
        trainer.writer.add_image("samples/full_top_vs_accelerated_bottom", (grid.clamp(-1, 1) + 1) / 2, iteration)

    # ------------------------------------------------------------------------- policies
    def owns_policy(self, config) -> bool:
        from hasten.knobs import KNOBS

        return set(config.knobs) == {k.name for k in KNOBS}

    def policy_class(self, config, where: str = "policy"):
        from hasten.models.rows import OBSERVATION
        from hasten.policies.heads import Policy

        if list(config.observation) != list(OBSERVATION):
            raise HastenError(f"{where}: observation columns {config.observation}; this hasten "
                              f"provides {list(OBSERVATION)}")
        return Policy

    def evaluate_policy(self, policy, args) -> tuple[dict, str]:
        from hasten.cli.common import evaluation_classifier, load_generator_for
        from hasten.policies.evaluate import evaluate_policy, markdown_table

        generator = load_generator_for(args, policy)
        policy.check_compatible(generator, where=args.policy)
        classifier = evaluation_classifier(args, generator)
        result = evaluate_policy(generator, policy, classifier, n=args.n, budget=args.budget, seed=args.seed,
                                 batch_size=args.batch_size, greedy=args.greedy,
                                 timing_samples=args.timing_samples, timing_repeats=args.timing_repeats,
                                 progress=not args.quiet)
        return result, markdown_table(result)

    # ------------------------------------------------------------------------- compare
    def compare(self, args) -> dict:
        """The learned policy against full compute, uniform steps, diffusers' caches and cache-dit on held-out
        pairs (:func:`hasten.bench.compare.compare`), or an earlier run's JSON re-analysed (``--from-json``)."""
        from hasten.bench.compare import compare, parse_budgets
        from hasten.bench.compare_acceptance import acceptance
        from hasten.cli.common import evaluation_classifier, int_tuple, policy_and_generator
        from hasten.io import read_json

        if args.from_json:  # re-analyse and re-render an earlier run's measurements; nothing is measured
            result = read_json(args.from_json)
            result["acceptance"] = acceptance(result)
            return result
        budgets = parse_budgets(args.budgets)  # checked before anything loads
        uniform = int_tuple(args.uniform_steps, "--uniform-steps") if args.uniform_steps else None
        batches = int_tuple(args.timing_batches, "--timing-batches")
        if args.policy and not os.path.isdir(resolve_policy_path(args.policy)):
            raise HastenError(f"--policy {args.policy}: policy folder not found (expected runs/NAME/policy)")
        policy, generator = policy_and_generator(args)
        return compare(generator, policy, classifier=evaluation_classifier(args, generator), budgets=budgets,
                       n=args.n or 256, policy_path=args.policy, seed=args.seed, methods=args.methods,
                       uniform_steps=uniform, timing_samples=args.timing_samples,
                       timing_repeats=args.timing_repeats, timing_batches=batches, batch_size=args.batch_size,
                       peer_batch_size=args.peer_batch_size, progress=not args.quiet)

    def compare_report(self):
        from hasten.bench.compare_report import benchmarks_section, markdown, pareto_plot

        return markdown, pareto_plot, benchmarks_section

    # ------------------------------------------------------------------------- inference
    def accepts(self, target, policy) -> bool:
        return self.owns_policy(policy.config) and not hasattr(target, "generate")

    def accelerate(self, target, policy, budget=None, **options):
        from hasten.policies.accelerate import Acceleration

        if set(options) - {"greedy", "seed", "seeds"}:
            raise HastenError(f"accelerate: {sorted(set(options) - {'greedy', 'seed', 'seeds'})} apply to a "
                              "causal LM and its chain-of-thought head")
        return Acceleration(target, policy, budget, **options)
