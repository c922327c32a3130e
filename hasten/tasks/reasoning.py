"""The reasoning task: the chain of thought of a frozen causal LM (``hasten/Reasoning-v0``).

Its model is a :class:`~hasten.models.reasoner.Reasoner` (``embedded:arith``, a reasoner folder, or a
transformers causal-LM folder); its policy a :class:`~hasten.policies.cot.CoTLengthHead` (one knob,
``think``: continue or stop and answer); its references the full chains
(:class:`~hasten.envs.reasoning.FullChains`); its peers fixed budgets, DEER and trl's GRPOTrainer
(:mod:`hasten.bench.compare_reasoning`); its plug-in
:class:`~hasten.policies.accelerate_lm.ChainAcceleration` inside transformers' ``generate``.
"""

from __future__ import annotations

import os


from hasten.envs.reasoning import DEFAULT_REWARDS
from hasten.errors import HastenError
from hasten.policies.shipped import resolve_policy_path
from hasten.tasks.registry import Task, TaskSetup, cycling_pairs, register_task

DENOISING_TERMS = ("discriminator", "fidelity", "cost")


@register_task
class ReasoningTask(Task):
    name = "reasoning"
    env_ids = ("hasten/Reasoning-v0",)
    default_model = "embedded:arith"
    default_rewards = DEFAULT_REWARDS
    report_panels = (("charts/reward", "reward (composite)"), ("charts/accuracy", "accuracy (sampled decisions)"),
                     ("charts/token_fraction", "reasoning tokens / full chain's"))
    report_schedule_label = "quarter of the chain's line limit"
    report_step_label = "line of the chain"
    report_knobs = ("think",)

    # ------------------------------------------------------------------------- the model
    def claims(self, model: str) -> bool:
        from hasten.models.reasoner import is_reasoner

        return is_reasoner(model)

    def load_model(self, name_or_path: str, options: dict | None = None, device: str | None = None):
        from hasten.models.reasoner import load_reasoner

        options = dict(options or {})
        if device not in (None, "cpu"):
            options.setdefault("device", device)
        return load_reasoner(name_or_path, **options)

    # ------------------------------------------------------------------------- training
    def check_rewards(self, reward, where: str = "rewards") -> None:
        for name in DENOISING_TERMS:
            if name in reward.terms:
                raise HastenError(f"{where}.{name}: a denoising term; a reasoning experiment uses correctness "
                                  "and length (e.g. {correctness: {weight: 1}, length: {weight: 0.3}})")

    def setup(self, config, model, reward, run_dir: str) -> TaskSetup:
        from hasten.policies.cot import CoTLengthHead, cot_policy_config

        policy = CoTLengthHead(cot_policy_config(config.policy, model, config.budget))
        pairs = cycling_pairs(model.conditions, config.train_pairs, config.seed)
        return TaskSetup(policy=policy, references=self.references(model, {}), env_options={"budget": config.budget},
                         pairs=pairs, num_steps=model.meta.max_steps)

    def references(self, model, env_options: dict, cache_dir: str | None = None):
        from hasten.envs.reasoning import FullChains

        return FullChains(model)

    def make_env(self, num_envs: int, model, reward, references, env_options: dict, group_size: int = 1):
        from hasten.envs.reasoning import ReasoningVectorEnv

        return ReasoningVectorEnv(num_envs=num_envs, reasoner=model, rewards=reward, group_size=group_size,
                                  full_chains=references, **env_options)

    def metrics(self, batch) -> dict:
        x = batch.extra
        return {"charts/accuracy": float(x["correct"].mean()),
                "charts/full_chain_accuracy": float(x["full_correct"].mean()),
                "charts/think_tokens": float(x["think_tokens"].mean()),
                "charts/token_fraction": float(x["think_tokens"].mean() / max(x["full_tokens"].mean(), 1e-9)),
                "charts/speedup_tokens": float(x["full_tokens"].mean() / max(x["think_tokens"].mean(), 1e-9)),
                "charts/within_budget": float((batch.cost_fraction <= batch.budgets + 1e-9).mean())}

    def progress(self, m: dict) -> dict:
        return {"reward": f"{m['charts/reward']:.3f}", "acc": f"{m['charts/accuracy']:.3f}",
                "tokens": f"{m['charts/token_fraction']:.2f}"}

    def log_samples(self, trainer, iteration: int, n: int = 8) -> None:
        """The greedy head's chains and answers on a few training problems, as TensorBoard text."""
        pairs = trainer.pairs[:min(n, len(trainer.pairs))]
        reasoner, policy = trainer.generator, trainer.policy
        problems = reasoner.problems(pairs[:, 0], pairs[:, 1])
        decoder = reasoner.decoder([p.prompt() for p in problems])
        while not decoder.done.all():
            decoder.advance(stop=policy.stop_decisions(decoder, trainer.config.budget, greedy=True))
        lines = []
        for p, chain, answer in zip(problems, decoder.chains(), decoder.answers()):
            lines.append(f"`{p.prompt().strip()}` -> {len(chain)} tokens, answer `{answer.strip()}` "
                         f"({'right' if p.check(answer) else 'wrong'})")
        trainer.writer.add_text("samples/chains", "\n\n".join(lines), iteration)

    # ------------------------------------------------------------------------- policies
    def owns_policy(self, config) -> bool:
        from hasten.policies.heads import REASONING_KNOBS

        return dict(config.knobs) == REASONING_KNOBS

    def policy_class(self, config, where: str = "policy"):
        from hasten.policies.cot import CoTLengthHead

        return CoTLengthHead  # its observation columns are checked against the LM it is plugged into

    def evaluate_policy(self, policy, args) -> tuple[dict, str]:
        """The greedy head against the full chain on ``--n`` held-out problems (split over the difficulties)."""
        from hasten.bench.compare_reasoning import compare_reasoning

        model = self.load_model(args.generator or policy.config.generator or self.default_model)
        per_difficulty = max(1, args.n // max(len(model.conditions), 1))
        result = compare_reasoning(model, policy, n=per_difficulty, seed=args.seed, fixed_steps=(),
                                   deer_thresholds=(), head_thresholds=(), batch_size=args.batch_size,
                                   progress=not args.quiet)
        lines = ["| method | accuracy | reasoning tokens | fraction of the full chain's | seconds |",
                 "|---|---:|---:|---:|---:|"]
        full = result["methods"][0]["think_tokens"]
        for row in result["methods"]:
            lines.append(f"| {row['method']} | {row['accuracy']:.3f} | {row['think_tokens']:.1f} | "
                         f"{row['think_tokens'] / max(full, 1e-9):.3f} | {row['seconds']:.2f} |")
        return result, "\n".join(lines) + "\n"

    # ------------------------------------------------------------------------- compare
    def compare(self, args) -> dict:
        """The head against the full chain, fixed budgets, DEER and trl's GRPOTrainer on held-out problems
        (:func:`hasten.bench.compare_reasoning.compare_reasoning`), or an earlier run's JSON re-analysed."""
        from hasten.bench.compare_reasoning import acceptance, compare_reasoning
        from hasten.cli.common import float_tuple
        from hasten.io import read_json

        if args.from_json:
            result = read_json(args.from_json)
            result["acceptance"] = acceptance(result)
            return result
        fixed = tuple(int(v) for v in float_tuple(args.fixed_steps, "--fixed-steps", 0, 10_000))
        deer = float_tuple(args.deer_thresholds, "--deer-thresholds", 0, 1)
        heads = float_tuple(args.head_thresholds, "--head-thresholds", 0, 1)
        if args.policy and not os.path.isdir(resolve_policy_path(args.policy)):
            raise HastenError(f"--policy {args.policy}: policy folder not found (expected runs/NAME/policy)")
        if args.trl_model and not os.path.isdir(args.trl_model):
            raise HastenError(f"--trl-model {args.trl_model}: reasoner folder not found")
        return compare_reasoning(args.generator or self.default_model, args.policy, n=args.n or 64, seed=args.seed,
                                 fixed_steps=fixed, deer_thresholds=deer, head_thresholds=heads,
                                 trl_model=args.trl_model, trl_minutes=args.trl_minutes, trl_out=args.trl_out,
                                 batch_size=args.batch_size, progress=not args.quiet)

    def compare_report(self):
        from hasten.bench.compare_reasoning import benchmarks_section, markdown, plot

        return markdown, plot, benchmarks_section

    # ------------------------------------------------------------------------- inference
    def accepts(self, target, policy) -> bool:
        return self.owns_policy(policy.config) or hasattr(target, "generate")

    def accelerate(self, target, policy, budget=None, **options):
        from hasten.policies.accelerate_lm import ChainAcceleration

        return ChainAcceleration(target, policy, budget=budget, **options)
