"""The unmasking task: the decoding loop of a frozen masked-diffusion LM (``hasten/Unmasking-v0``).

Its model is a :class:`~hasten.tasks.unmasking.model.DiffusionLM` (``embedded:dllm`` or a diffusion-LM
folder); its policy an :class:`~hasten.tasks.unmasking.head.UnmaskingHead` (knobs ``commit`` and
``reuse``); no references (the reward checks the answer); its peers the full schedule, fixed tokens per
call, Fast-dLLM thresholds, transformers' entropy-bound sampler with adaptive stopping and dKV-cache
reuse (:mod:`hasten.tasks.unmasking.compare`); its plug-in
:class:`~hasten.tasks.unmasking.accelerate.UnmaskingAcceleration` around the LM's ``generate``.
"""

from __future__ import annotations

import copy
import os


from hasten.errors import HastenError
from hasten.policies.shipped import resolve_policy_path
from hasten.tasks.registry import Task, TaskSetup, cycling_pairs, register_task
from hasten.tasks.unmasking.env import DEFAULT_REWARDS, KNOBS

ALLOWED_TERMS = ("correctness", "cost")


@register_task
class UnmaskingTask(Task):
    name = "unmasking"
    env_ids = ("hasten/Unmasking-v0",)
    default_model = "embedded:dllm"
    default_rewards = DEFAULT_REWARDS
    report_panels = (("charts/reward", "reward (composite)"), ("charts/accuracy", "accuracy (sampled decisions)"),
                     ("charts/call_fraction", "denoiser calls / full schedule's"))
    report_schedule_label = "quarter of the canvas' calls"
    report_step_label = "denoiser call"
    report_knobs = tuple(KNOBS)
    knobs = KNOBS
    default_budgets = "0.3,0.2,0.15,0.1,0.07,0.05"

    # ------------------------------------------------------------------------- the model
    def claims(self, model: str) -> bool:
        from hasten.tasks.unmasking.model import is_dllm

        return is_dllm(model)

    def load_model(self, name_or_path: str, options: dict | None = None, device: str | None = None):
        from hasten.tasks.unmasking.model import load_dllm

        if options:
            raise HastenError(f"generator_options {sorted(options)}: a diffusion LM takes none")
        return load_dllm(name_or_path, device=device)

    # ------------------------------------------------------------------------- training
    def check_rewards(self, reward, where: str = "rewards") -> None:
        for name in reward.terms:
            if name not in ALLOWED_TERMS:
                raise HastenError(f"{where}.{name}: not a term of the unmasking task; it uses "
                                  f"{' and '.join(ALLOWED_TERMS)} (e.g. {DEFAULT_REWARDS})")

    def setup(self, config, model, reward, run_dir: str) -> TaskSetup:
        from hasten.tasks.unmasking.env import References
        from hasten.tasks.unmasking.head import UnmaskingHead, unmasking_policy_config

        base = copy.deepcopy(config.policy)
        policy = UnmaskingHead(unmasking_policy_config(base, model, config.budget))
        pairs = cycling_pairs(model.conditions, config.train_pairs, config.seed)
        return TaskSetup(policy=policy, references=References(), env_options={"budget": config.budget},
                         pairs=pairs, num_steps=model.canvas)

    def references(self, model, env_options: dict, cache_dir: str | None = None):
        from hasten.tasks.unmasking.env import References

        return References()

    def make_env(self, num_envs: int, model, reward, references, env_options: dict, group_size: int = 1):
        from hasten.tasks.unmasking.env import UnmaskingVectorEnv

        return UnmaskingVectorEnv(num_envs=num_envs, model=model, rewards=reward, group_size=group_size,
                                  references=references, **env_options)

    def metrics(self, batch) -> dict:
        x = batch.extra
        return {"charts/accuracy": float(x["correct"].mean()),
                "charts/calls": float(x["calls"].mean()),
                "charts/call_fraction": float(x["call_fraction"].mean()),
                "charts/flops_fraction": float(batch.flops_fraction.mean()),
                "charts/speedup_calls": float(1.0 / max(x["call_fraction"].mean(), 1e-9)),
                "charts/within_budget": float((batch.cost_fraction <= batch.budgets + 1e-9).mean())}

    def progress(self, m: dict) -> dict:
        return {"reward": f"{m['charts/reward']:.3f}", "acc": f"{m['charts/accuracy']:.3f}",
                "calls": f"{m['charts/calls']:.1f}", "flops": f"{m['charts/flops_fraction']:.2f}"}

    def next_steps(self, policy_dir: str) -> str:
        return (f"hasten policy eval {policy_dir} --n 256   |   hasten compare --task unmasking --policy {policy_dir} "
                "--plot unmasking.png")

    def log_samples(self, trainer, iteration: int, n: int = 8) -> None:
        """The greedy head's canvases on a few training problems, as TensorBoard text."""
        from hasten.tasks.unmasking.decode import CanvasDecoder

        pairs = trainer.pairs[:min(n, len(trainer.pairs))]
        lm, policy = trainer.generator, trainer.policy
        problems = lm.problems(pairs[:, 0], pairs[:, 1])
        decoder = CanvasDecoder(lm, problems)
        while not decoder.done.all():
            policy.step(decoder, trainer.config.budget, greedy=True)
        lines = [f"`{p.prompt().strip()}` -> {calls} calls: `{text.strip()}` ({'right' if ok else 'wrong'})"
                 for p, calls, text, ok in zip(problems, decoder.calls, lm.texts(decoder.ids), decoder.correct())]
        trainer.writer.add_text("samples/canvases", "\n\n".join(lines), iteration)

    # ------------------------------------------------------------------------- policies
    def owns_policy(self, config) -> bool:
        from hasten.tasks.unmasking.head import is_unmasking_config

        return is_unmasking_config(config)

    def policy_class(self, config, where: str = "policy"):
        from hasten.tasks.unmasking.head import UnmaskingHead

        return UnmaskingHead

    def evaluate_policy(self, policy, args) -> tuple[dict, str]:
        """The greedy head at its own budget against the full schedule on held-out problems."""
        from hasten.tasks.unmasking.compare import compare_unmasking, markdown

        model = args.generator or policy.config.generator or self.default_model
        per_difficulty = max(1, (args.n or 64) // 4)
        result = compare_unmasking(model, policy, n=per_difficulty, seed=args.seed, budgets=(policy.config.budget,),
                                   methods=("full", "policy"), batch_size=args.batch_size, progress=not args.quiet,
                                   timing_batches=())
        return result, markdown(result)

    # ------------------------------------------------------------------------- compare
    def compare(self, args) -> dict:
        """The head over ``--budgets`` against the training-free rules on ``--n`` held-out problems per
        difficulty (:func:`hasten.tasks.unmasking.compare.compare_unmasking`), or ``--from-json`` re-analysed."""
        from hasten.cli.common import float_tuple
        from hasten.io import read_json
        from hasten.tasks.unmasking.compare import (
            METHODS,
            acceptance,
            compare_unmasking,
        )

        if args.from_json:
            result = read_json(args.from_json)
            result["acceptance"] = acceptance(result)
            return result
        if args.policy and not os.path.isdir(resolve_policy_path(args.policy)):
            raise HastenError(f"--policy {args.policy}: policy folder not found (expected runs/NAME/policy)")
        methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else METHODS
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise HastenError(f"--methods: unknown {unknown}; expected some of {', '.join(METHODS)}")
        budgets = float_tuple(args.budgets, "--budgets", 0, 1)
        timing = tuple(int(v) for v in float_tuple(args.timing_batches, "--timing-batches", 1, 4096))
        return compare_unmasking(args.generator or self.default_model, args.policy, n=args.n or 64, seed=args.seed,
                                 budgets=budgets, methods=methods, batch_size=args.batch_size,
                                 timing_batches=timing, timing_repeats=args.timing_repeats, progress=not args.quiet)

    def compare_report(self):
        from hasten.tasks.unmasking.compare import benchmarks_section, markdown, plot

        return markdown, plot, benchmarks_section

    # ------------------------------------------------------------------------- inference
    def accepts(self, target, policy) -> bool:
        from hasten.tasks.unmasking.model import DiffusionLM

        return self.owns_policy(policy.config) or isinstance(target, DiffusionLM)

    def accelerate(self, target, policy, budget=None, **options):
        from hasten.tasks.unmasking.accelerate import UnmaskingAcceleration

        return UnmaskingAcceleration(target, policy, budget=budget, **options)
