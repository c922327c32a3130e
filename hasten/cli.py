"""The ``hasten`` command line.

Every command has ``--help``; commands that report numbers take ``--json PATH``. Errors in what
the user gave (unknown class, missing path, corrupted weights, invalid config value) print one
line naming what was wrong and what was expected, and exit with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from hasten import __version__
from hasten.errors import HastenError

logger = logging.getLogger("hasten")

DEFAULT_GENERATOR = "embedded:shapes"


# ----------------------------------------------------------------------------- helpers
def _write_json(path: str, data) -> None:
    from hasten.io import write_json_atomic

    if path == "-":
        print(json.dumps(data, indent=2))
    else:
        write_json_atomic(path, data)
        print(f"wrote {path}")


def _load_config(cls, path: str | None, overrides: list[str] | None, section: str):
    from hasten.config import apply_overrides, from_dict, load_document

    data = load_document(path) if path else {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, source=path or section)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _set_threads(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _load_generator(args, policy=None):
    """The generator of ``--generator`` (default: the policy's own), loaded with the policy's
    ``generator_options`` when it is the policy's generator, updated by ``--generator-option``."""
    from hasten.config import apply_overrides
    from hasten.models import load_generator

    path = args.generator or (policy.config.generator if policy is not None else "") or DEFAULT_GENERATOR
    options = {}
    if policy is not None and path == policy.config.generator:
        options = dict(policy.config.generator_options)
    options = apply_overrides(options, args.generator_option, option="--generator-option")
    return load_generator(path, **options)


def _policy_and_generator(args):
    """The policy of ``args.policy`` (None without one) and the generator it runs on, checked."""
    from hasten.policies import Policy

    policy = Policy.from_pretrained(args.policy) if args.policy else None
    generator = _load_generator(args, policy)
    if policy is not None:
        policy.check_compatible(generator, where=args.policy)
    return policy, generator


def _evaluation_classifier(args, generator):
    """--classifier, else the generator's own, else None (a pipeline folder ships none)."""
    from hasten.models.registry import evaluation_classifier

    classifier = evaluation_classifier(generator, args.classifier)
    if classifier is None:
        print(f"{generator.path}: no evaluation classifier (a diffusers pipeline); class accuracy and Frechet "
              "distance are left out (--classifier PATH adds them)")
    return classifier


def _report(table: str, result: dict, args) -> None:
    """Print a markdown table; write the result as JSON (--json) and the table (--markdown)."""
    from hasten.io import write_text_atomic

    print(table)
    if args.json:
        _write_json(args.json, result)
    if args.markdown:
        write_text_atomic(args.markdown, table)
        print(f"wrote {args.markdown}")


# ----------------------------------------------------------------------------- generator
def cmd_generator_train(args) -> int:
    from hasten.embedded.shapes.recipe import GeneratorTrainConfig, train_generator

    config = _load_config(GeneratorTrainConfig, args.config, args.set, "generator config")
    out = train_generator(config, args.out, resume=args.resume, progress=not args.quiet)
    print(f"generator saved to {out}")
    return 0


def cmd_generator_train_classifier(args) -> int:
    from hasten.embedded.shapes.classifier import ClassifierTrainConfig, train_classifier

    config = _load_config(ClassifierTrainConfig, args.config, args.set, "classifier config")
    result = train_classifier(config, args.out, progress=not args.quiet)
    print(f"classifier saved to {result['path']}: accuracy {result['accuracy']:.4f} on fresh real "
          f"images, {result['train_seconds']:.0f} s")
    return 0


def cmd_generator_eval(args) -> int:
    from hasten.models import load_generator
    from hasten.embedded.shapes.classifier import ShapesClassifier
    from hasten.embedded.shapes.evaluate import evaluate_generator, markdown_table
    from hasten.models.registry import classifier_path

    _set_threads(args.threads)
    generator = load_generator(args.generator)
    classifier = ShapesClassifier.from_pretrained(args.classifier or classifier_path(generator.path))
    result = evaluate_generator(generator, classifier, n=args.n, num_steps=args.steps,
                                guidance=args.guidance, reduced_steps=args.reduced_steps,
                                seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    _report(markdown_table(result), result, args)
    return 0


def cmd_generator_info(args) -> int:
    from hasten.models import load_generator

    generator = load_generator(args.name)
    info = {
        "name": args.name,
        "path": os.path.abspath(generator.path),
        "family": generator.family.name,
        "parameters": generator.num_parameters(),
        "transformer_parameters": sum(p.numel() for p in generator.transformer.parameters()),
        "transformer_config": dict(generator.transformer.config),
        "classes": generator.class_names,
        "default_steps": generator.default_steps,
        "default_guidance": generator.default_guidance,
        "meta": generator.meta,
    }
    if args.json:
        _write_json(args.json, info)
    else:
        cfg = generator.transformer.config
        print(f"{args.name}: {info['path']}")
        blocks = len(generator.family.blocks(generator.transformer))
        print(f"  {generator.family.name} transformer ({type(generator.transformer).__name__}), "
              f"{info['parameters'] / 1e6:.2f} M parameters, {blocks} blocks, "
              f"{cfg.num_attention_heads} x {cfg.attention_head_dim} heads")
        print(f"  {len(generator.class_names)} classes: {', '.join(generator.class_names)}")
        print(f"  defaults: {generator.default_steps} steps, guidance {generator.default_guidance}")
        if "train_seconds" in generator.meta:
            print(f"  trained by `{generator.meta.get('recipe')}` in {generator.meta['train_seconds']:.0f} s")
    return 0


# ----------------------------------------------------------------------------- sample
def cmd_sample(args) -> int:
    from hasten.images import save_grid

    _set_threads(args.threads)
    policy, generator = _policy_and_generator(args)
    if args.classes.strip().lower() == "all":
        classes = list(range(generator.num_classes))
    else:
        classes = [generator.class_index(c) for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise HastenError("--classes: expected class names or indices separated by commas, or 'all'")
    conditions = [c for c in classes for _ in range(args.n)]
    seeds = [args.seed + j for _ in classes for j in range(args.n)]
    if policy is not None:
        return _sample_with_policy(args, generator, policy, classes, conditions, seeds)
    images, stats = generator.sample(conditions, seeds, num_steps=args.steps, guidance=args.guidance,
                                     batch_size=args.batch_size, progress=not args.quiet)
    labels = [generator.class_names[c] for c in classes]
    save_grid(generator.preview(images), rows=len(classes), path=args.out, row_labels=labels, scale=args.scale)
    print(f"wrote {args.out}: {len(classes)} classes x {args.n} samples, "
          f"{stats['seconds'] / len(seeds):.3f} s / sample")
    return 0


def _sample_with_policy(args, generator, policy, classes, conditions, seeds) -> int:
    """Full compute and the policy's samples of the same (class, noise), one row above the other."""
    import torch

    from hasten.images import save_grid
    from hasten.metrics import psnr

    steps = args.steps or policy.config.num_steps or None
    full, full_stats = generator.sample(conditions, seeds, num_steps=steps, guidance=args.guidance,
                                        batch_size=args.batch_size, progress=not args.quiet)
    fast, stats = generator.sample(conditions, seeds, num_steps=steps, guidance=args.guidance,
                                   decisions=policy.decide(args.budget), batch_size=args.batch_size,
                                   forecast=policy.config.sampler_forecast,
                                   progress=not args.quiet)
    n = args.n
    rows, labels = [], []
    for i, c in enumerate(classes):
        rows += [full[i * n:(i + 1) * n], fast[i * n:(i + 1) * n]]
        row_flops = stats["flops_fraction"][i * n:(i + 1) * n].mean()
        labels += [f"{generator.class_names[c]}: full", f"policy {1 / row_flops:.1f}x"]
    save_grid(generator.preview(torch.cat(rows)), rows=2 * len(classes), path=args.out, row_labels=labels,
              scale=args.scale)
    value = psnr(fast, full).clamp(max=100).mean()
    print(f"wrote {args.out}: {len(classes)} classes x {args.n} samples, full compute (upper row) vs policy "
          f"(lower row): {1 / stats['flops_fraction'].mean():.2f}x fewer FLOPs, PSNR to full {value:.2f} dB, "
          f"{full_stats['seconds'] / stats['seconds']:.2f}x wall-clock")
    return 0


# ----------------------------------------------------------------------------- reasoner
def cmd_reasoner_train(args) -> int:
    from hasten.config import apply_overrides, from_dict, load_document
    from hasten.embedded.arith.recipe import ReasonerRecipe, train_reasoner

    data = apply_overrides(load_document(args.config) if args.config else {}, args.set)
    recipe = from_dict(ReasonerRecipe, data, source=args.config or "reasoner recipe")
    summary = train_reasoner(recipe, args.out, log_dir=args.log_dir, progress=not args.quiet)
    print(f"reasoner saved to {args.out}: {summary['steps_done']} steps in {summary['train_minutes']:.1f} min, "
          f"loss {summary['loss_first_50']:.3f} -> {summary['loss_last_50']:.3f}")
    print(f"next: hasten reasoner eval {args.out} --json eval.json")
    return 0


def cmd_reasoner_eval(args) -> int:
    from hasten.models.reasoner import load_reasoner
    from hasten.embedded.arith.recipe import eval_markdown, evaluate_reasoner

    _set_threads(args.threads)
    reasoner = load_reasoner(args.reasoner)
    result = evaluate_reasoner(reasoner, n=args.n, seed=args.seed, batch_size=args.batch_size,
                               progress=not args.quiet)
    result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    _report(eval_markdown(result), result, args)
    return 0


# ----------------------------------------------------------------------------- train / policy
def cmd_train(args) -> int:
    from hasten.trainers.grpo import GRPOTrainer, load_experiment, new_run_dir, resume_config

    if args.resume:
        if args.experiment:
            raise HastenError("give either EXPERIMENT or --resume RUN_DIR, not both")
        config = resume_config(args.resume, args.set)
        run_dir = args.resume
    else:
        if not args.experiment:
            raise HastenError("missing EXPERIMENT: expected an experiment file, e.g. experiments/quickstart.yaml "
                              "(or --resume RUN_DIR)")
        config = load_experiment(args.experiment, args.set)
        run_dir = new_run_dir(args.out, config.name)
    if args.quiet:
        config.logging.progress = False
    trainer = GRPOTrainer(config, run_dir)  # every check on the experiment happens here, before writing
    print(f"run folder: {run_dir}  (tensorboard --logdir {os.path.join(run_dir, 'tb')})")
    policy_dir = trainer.train(resume=bool(args.resume))
    print(f"policy saved to {policy_dir}")
    print(f"next: hasten policy eval {policy_dir} --n 256   |   hasten sample --policy {policy_dir} --out side.png")
    return 0


def cmd_report(args) -> int:
    from hasten.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0


def cmd_policy_eval(args) -> int:
    from hasten.policies.evaluate import evaluate_policy, markdown_table

    _set_threads(args.threads)
    policy, generator = _policy_and_generator(args)
    classifier = _evaluation_classifier(args, generator)
    result = evaluate_policy(generator, policy, classifier, n=args.n, budget=args.budget, seed=args.seed,
                             batch_size=args.batch_size, greedy=args.greedy,
                             timing_samples=args.timing_samples, timing_repeats=args.timing_repeats,
                             progress=not args.quiet)
    result["policy"] = os.path.abspath(args.policy)
    result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    _report(markdown_table(result), result, args)
    return 0


# ----------------------------------------------------------------------------- compare
def cmd_compare_reasoning(args) -> int:
    from hasten.bench.compare_reasoning import SECTION_TITLE, acceptance, benchmarks_section, compare_reasoning, markdown, plot

    _set_threads(args.threads)

    def floats(text, option, lo, hi):
        try:
            values = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or min(values) < lo or max(values) > hi:
            raise HastenError(f"{option} {text!r}: expected comma-separated numbers in [{lo}, {hi}]")
        return values

    if args.from_json:
        from hasten.io import read_json

        result = read_json(args.from_json)
        result["acceptance"] = acceptance(result)
    else:
        fixed = tuple(int(v) for v in floats(args.fixed_steps, "--fixed-steps", 0, 10_000))
        deer = floats(args.deer_thresholds, "--deer-thresholds", 0, 1)
        heads = floats(args.head_thresholds, "--head-thresholds", 0, 1)
        if args.policy and not os.path.isdir(args.policy):
            raise HastenError(f"--policy {args.policy}: policy folder not found (expected runs/NAME/policy)")
        if args.trl_model and not os.path.isdir(args.trl_model):
            raise HastenError(f"--trl-model {args.trl_model}: reasoner folder not found")
        result = compare_reasoning(args.generator or "embedded:arith", args.policy, n=args.n or 64, seed=args.seed,
                                   fixed_steps=fixed, deer_thresholds=deer, head_thresholds=heads,
                                   trl_model=args.trl_model, trl_minutes=args.trl_minutes, trl_out=args.trl_out,
                                   batch_size=args.batch_size, progress=not args.quiet)
        result["policy"] = os.path.abspath(args.policy) if args.policy else None
        result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    _compare_outputs(result, args, markdown, plot, benchmarks_section, SECTION_TITLE)
    return 0


def _compare_outputs(result: dict, args, markdown, plot, benchmarks_section, title: str) -> None:
    """Print the table; write --json, --markdown, --plot and the --benchmarks-md section of a compare result."""
    from hasten.bench.compare_report import write_benchmarks_section

    table = markdown(result)
    _report(table, result, args)
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")
    if args.benchmarks_md:
        path = os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.benchmarks_md))) if args.plot else None
        write_benchmarks_section(args.benchmarks_md, benchmarks_section(result, table, path), title=title)
        print(f"wrote the '{title}' section of {args.benchmarks_md}")


def cmd_compare(args) -> int:
    if args.task == "reasoning":
        return cmd_compare_reasoning(args)
    from hasten.bench.compare import compare, parse_budgets
    from hasten.bench.compare_report import SECTION_TITLE, benchmarks_section, markdown, pareto_plot

    _set_threads(args.threads)

    def ints(text, option):
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise HastenError(f"{option} {text!r}: expected comma-separated integers >= 1, e.g. 14,10,7,5")
        return values

    if args.from_json:  # re-analyse and re-render an earlier run's measurements; nothing is measured
        from hasten.bench.compare import acceptance
        from hasten.io import read_json

        result = read_json(args.from_json)
        result["acceptance"] = acceptance(result)
    else:
        budgets = parse_budgets(args.budgets)  # checked before anything loads
        uniform = ints(args.uniform_steps, "--uniform-steps") if args.uniform_steps else None
        batches = ints(args.timing_batches, "--timing-batches")
        if args.policy and not os.path.isdir(args.policy):
            raise HastenError(f"--policy {args.policy}: policy folder not found (expected runs/NAME/policy)")
        policy, generator = _policy_and_generator(args)
        result = compare(generator, policy, classifier=_evaluation_classifier(args, generator), budgets=budgets,
                         n=args.n or 256, policy_path=args.policy,
                         seed=args.seed, methods=args.methods, uniform_steps=uniform,
                         timing_samples=args.timing_samples, timing_repeats=args.timing_repeats,
                         timing_batches=batches, batch_size=args.batch_size, peer_batch_size=args.peer_batch_size,
                         progress=not args.quiet)
        result["policy"] = os.path.abspath(args.policy) if args.policy else None
        result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    _compare_outputs(result, args, markdown, pareto_plot, benchmarks_section, SECTION_TITLE)
    return 0


# ----------------------------------------------------------------------------- knobs
def cmd_knobs_bench(args) -> int:
    from hasten.bench.knobs import bench_knobs, markdown, parse_models

    _set_threads(args.threads)
    result = bench_knobs(parse_models(args.models), repeats=args.repeats, samples=args.samples,
                         progress=not args.quiet)
    _report(markdown(result), result, args)
    return 0


# ----------------------------------------------------------------------------- rollouts
def cmd_rollouts_bench(args) -> int:
    from hasten.bench.rollouts import bench_rollouts, markdown
    from hasten.trainers.grpo import load_experiment

    config = load_experiment(args.experiment, [*(args.set or []), "logging.progress=false"])
    config.rollouts.threads = args.threads or 1
    result = bench_rollouts(config, list(args.workers), iterations=args.iterations,
                            inprocess_threads=list(args.inprocess_threads),
                            progress=not args.quiet)
    result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    _report(markdown(result), result, args)
    return 0


# ----------------------------------------------------------------------------- parser
def _print_help_and_fail(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    """--threads, --json, --markdown and --quiet: the options of every command that reports numbers."""
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-' for stdout)")
    parser.add_argument("--markdown", metavar="PATH", help="write the results as a markdown table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _command_group(sub, name: str, help_text: str, description: str):
    """A command with subcommands (``hasten NAME SUBCOMMAND``); alone it prints its help and fails."""
    group = sub.add_parser(name, help=help_text, description=description)
    group.set_defaults(func=lambda args: _print_help_and_fail(group))
    return group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hasten",
        description="Learn acceleration policies for frozen generative models.",
        epilog="Run `hasten COMMAND --help` for the options of each command.")
    parser.add_argument("--version", action="version", version=f"hasten {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # generator
    gen_sub = _command_group(sub, "generator", "train, evaluate and inspect the embedded generators",
                             "Train, evaluate and inspect the embedded generators.")

    train = gen_sub.add_parser(
        "train", help="train the class-conditional FLUX generator on procedural shapes",
        description="Train the class-conditional rectified-flow FLUX transformer (the recipe of "
                    "embedded:shapes). Writes TensorBoard events, a checkpoint every "
                    "checkpoint_every steps and, at the end, OUT/model: a generator folder that "
                    "`hasten.load_generator(OUT/model)` reads.")
    train.add_argument("--config", help="YAML/JSON file with GeneratorTrainConfig fields")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one config field (repeatable), e.g. --set steps=100")
    train.add_argument("--out", default="runs/shapes-generator", help="run folder (default: %(default)s)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_generator_train)

    cls = gen_sub.add_parser(
        "train-classifier", help="train the evaluation classifier of the shapes classes",
        description="Train the evaluation classifier (used only to evaluate, never as a reward).")
    cls.add_argument("--config", help="YAML/JSON file with ClassifierTrainConfig fields")
    cls.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field")
    cls.add_argument("--out", default="runs/shapes-classifier", help="output folder (default: %(default)s)")
    cls.add_argument("--quiet", action="store_true", help="no progress bar")
    cls.set_defaults(func=cmd_generator_train_classifier)

    ev = gen_sub.add_parser(
        "eval", help="class accuracy, Frechet distance and step-reduction PSNR of a generator",
        description="Sample N (class, seed) pairs and measure them with the evaluation classifier: "
                    "class accuracy, Frechet distance to real images, the classifier's own "
                    "accuracy on real images, time per sample, and with --reduced-steps the PSNR "
                    "and accuracy of fewer-step samples against the default-step ones.")
    ev.add_argument("--generator", default=DEFAULT_GENERATOR, help="embedded:NAME or a generator folder")
    ev.add_argument("--classifier", help="evaluation classifier folder (default: the generator's own)")
    ev.add_argument("--n", type=_positive_int, default=512, help="number of samples (default: %(default)s)")
    ev.add_argument("--steps", type=_positive_int, help="sampling steps (default: the generator's)")
    ev.add_argument("--guidance", type=float, help="guidance scale (default: the generator's)")
    ev.add_argument("--reduced-steps", type=_int_list, default=(),
                    help="comma-separated step counts to compare with the default, e.g. 14,7,4")
    ev.add_argument("--seed", type=int, default=0, help="first noise seed (default: %(default)s)")
    ev.add_argument("--batch-size", type=_positive_int, default=64, help="rows per model call")
    _add_report_options(ev)
    ev.set_defaults(func=cmd_generator_eval)

    info = gen_sub.add_parser("info", help="path, parameter count and config of a generator",
                              description="Print a generator's folder, parameter count and config.")
    info.add_argument("name", nargs="?", default=DEFAULT_GENERATOR, help="embedded:NAME or a folder")
    info.add_argument("--json", nargs="?", const="-", metavar="PATH",
                      help="print JSON (to PATH if given, else stdout)")
    info.set_defaults(func=cmd_generator_info)

    # reasoner
    rs_sub = _command_group(sub, "reasoner", "train and evaluate the embedded reasoning LM (embedded:arith)",
                            "Train and evaluate the small causal LM of embedded:arith: procedural arithmetic "
                            "problems written with step-by-step chains of thought.")
    rt = rs_sub.add_parser(
        "train", help="train the arithmetic reasoning LM (a transformers Llama, character tokenizer)",
        description="Train the causal LM of embedded:arith on fresh procedural problems (full chains, and "
                    "chains cut at a random line followed by the answer). Writes a reasoner folder "
                    "(model/, tokenizer/, hasten_reasoner.json) that `hasten.load_reasoner(OUT)` reads.")
    rt.add_argument("--config", help="YAML/JSON file with ReasonerRecipe fields")
    rt.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override one recipe field (repeatable), e.g. --set steps=200")
    rt.add_argument("--out", default="runs/arith-reasoner", help="reasoner folder (default: %(default)s)")
    rt.add_argument("--log-dir", help="TensorBoard folder for the loss curve")
    rt.add_argument("--quiet", action="store_true", help="no progress bar")
    rt.set_defaults(func=cmd_reasoner_train)
    re_ = rs_sub.add_parser(
        "eval", help="accuracy by difficulty with the full chain and with no chain",
        description="Decode N held-out problems per difficulty twice: letting the model write its full chain, "
                    "and forcing the answer at once (no chain). Reports accuracy and reasoning tokens.")
    re_.add_argument("reasoner", nargs="?", default="embedded:arith", help="embedded:arith or a reasoner folder")
    re_.add_argument("--n", type=_positive_int, default=64, help="problems per difficulty (default: %(default)s)")
    re_.add_argument("--seed", type=int, default=1_000_000, help="first held-out problem seed (default: %(default)s)")
    re_.add_argument("--batch-size", type=_positive_int, default=64, help="problems decoded together")
    _add_report_options(re_)
    re_.set_defaults(func=cmd_reasoner_eval)

    # knobs
    knobs_sub = _command_group(sub, "knobs", "the acceleration knobs: cost benchmark",
                               "The acceleration knobs (step-skip, cache-reuse, sparse attention).")
    bench = knobs_sub.add_parser(
        "bench", help="FLOPs fraction and measured time fraction of every knob level",
        description="For each model and knob level: the analytic FLOPs fraction of a full model call "
                    "and the measured time fraction (median of interleaved repeats); step-skip as "
                    "whole trajectories (model calls, time); attention alone, dense vs sparse; and a "
                    "mixed-decision batch against the sum of its rows.")
    bench.add_argument("--models", default="embedded:shapes,flux-random-1024,flux-random-4096",
                       help="comma-separated: embedded:NAME, a generator folder, flux-random-1024, "
                            "flux-random-4096 (default: %(default)s)")
    bench.add_argument("--repeats", type=_positive_int, default=5, help="timed repeats per level (default: %(default)s)")
    bench.add_argument("--samples", type=_positive_int,
                       help="samples per model call (default: 8 on small models, 1 on the random FLUX configs)")
    _add_report_options(bench)
    bench.set_defaults(func=cmd_knobs_bench)

    # sample
    sample = sub.add_parser(
        "sample", help="write a PNG grid of samples from a generator",
        description="Sample a grid from a generator: one row per class, --n samples per row "
                    "(seeds --seed, --seed+1, ...).")
    sample.add_argument("--generator", help="embedded:NAME or a generator folder (default: the policy's generator "
                                            "with --policy, else embedded:shapes)")
    sample.add_argument("--generator-option", action="append", metavar="KEY=VALUE",
                        help="an option of the generator's loader (repeatable), e.g. for a diffusers pipeline folder "
                             "prompts_file=PATH, resolution=512, device=cuda (default: the policy's own)")
    sample.add_argument("--classes", default="all",
                        help="comma-separated class names or indices, or 'all' (default: %(default)s)")
    sample.add_argument("--n", type=_positive_int, default=8, help="samples per class (default: %(default)s)")
    sample.add_argument("--steps", type=_positive_int, help="sampling steps (default: the generator's)")
    sample.add_argument("--guidance", type=float, help="guidance scale (default: the generator's)")
    sample.add_argument("--seed", type=int, default=0, help="first noise seed (default: %(default)s)")
    sample.add_argument("--batch-size", type=_positive_int, default=64, help="rows per model call")
    sample.add_argument("--scale", type=_positive_int, default=3, help="pixel upscaling of the grid")
    sample.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    sample.add_argument("--out", default="samples.png", help="output PNG (default: %(default)s)")
    sample.add_argument("--policy", help="a policy folder (runs/NAME/policy): full compute and the policy's "
                                         "samples of the same noise, one row above the other")
    sample.add_argument("--budget", type=float, help="target FLOPs fraction for the policy (default: its own)")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.set_defaults(func=cmd_sample)

    # train
    tr = sub.add_parser(
        "train", help="learn an acceleration policy with GRPO (the main job)",
        description="Train acceleration-policy heads for a frozen generator with GRPO: rollouts of the "
                    "Denoising env, composite reward (fidelity, cost, discriminator), group-relative "
                    "advantages, clipped updates. Writes runs/NAME/ (TensorBoard events in tb/, "
                    "metrics.jsonl, checkpoint/, policy/). Example: hasten train experiments/quickstart.yaml",
        epilog="Any field of the experiment file can be overridden, e.g. --set grpo.iterations=10 "
               "--set rewards.discriminator.weight=0 --set budget=0.3")
    tr.add_argument("experiment", nargs="?", help="experiment file (YAML), e.g. experiments/quickstart.yaml")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a field (repeatable; dotted for sections: grpo.lr=0.01)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    tr.add_argument("--out", default="runs", help="folder of run folders (default: %(default)s)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    # rollouts
    roll_sub = _command_group(sub, "rollouts", "rollout pools: throughput benchmark",
                              "The rollout pools (in-process, Ray actors).")
    rb = roll_sub.add_parser(
        "bench", help="episodes/s of the in-process pool and of 1, 2, ... Ray workers",
        description="Collect the same iterations of an experiment (initial policy, references computed "
                    "once beforehand) with the in-process pool and with Ray pools of several worker counts "
                    "(each worker one CPU and --threads torch threads), one after the other in one run. "
                    "Example: hasten rollouts bench experiments/quickstart.yaml --workers 1,2 --json out.json")
    rb.add_argument("experiment", help="experiment file (YAML), e.g. experiments/quickstart.yaml")
    rb.add_argument("--workers", type=_int_list, default=(1, 2), help="Ray worker counts to measure (default: 1,2)")
    rb.add_argument("--inprocess-threads", type=_int_list, default=(),
                    help="also measure the in-process pool at these torch thread counts, e.g. 1,2")
    rb.add_argument("--iterations", type=int, default=3, help="timed iterations per pool, after one warm-up "
                                                                  "(default: %(default)s)")
    rb.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the experiment")
    _add_report_options(rb)
    rb.set_defaults(func=cmd_rollouts_bench)

    # report
    rep = sub.add_parser("report", help="PNG plots of a training run (reward, speedup, PSNR, decisions)",
                         description="Plot a run's reward, FLOPs speedup and PSNR curves, its reward terms and "
                                     "the policy's decisions over the schedule into RUN_DIR/report.png.")
    rep.add_argument("run_dir", help="a run folder, e.g. runs/quickstart")
    rep.add_argument("--out", help="PNG path (default: RUN_DIR/report.png)")
    rep.set_defaults(func=cmd_report)

    # policy
    pol_sub = _command_group(sub, "policy", "evaluate trained policies", "Evaluate trained acceleration policies.")
    pe = pol_sub.add_parser(
        "eval", help="a policy vs full compute and uniform step reduction on held-out pairs",
        description="On N held-out (class, noise) pairs: FLOPs speedup, wall-clock speedup at batch 1, "
                    "PSNR/SSIM to full compute, class accuracy and Frechet distance (evaluation "
                    "classifier; none for a diffusers pipeline folder, whose latents are compared by PSNR/SSIM "
                    "only) of full compute, the policy, and uniform step reduction at the step "
                    "counts around the policy's FLOPs. The generator and its loader options default to "
                    "those the policy was trained with.")
    pe.add_argument("policy", help="policy folder, e.g. runs/quickstart/policy")
    pe.add_argument("--generator", help="generator (default: the one the policy was trained on)")
    pe.add_argument("--classifier", help="evaluation classifier folder (default: the generator's own)")
    pe.add_argument("--generator-option", action="append", metavar="KEY=VALUE",
                    help="an option of the generator's loader (repeatable), e.g. for a diffusers pipeline folder "
                         "prompts_file=PATH, resolution=512, device=cuda (default: the policy's own)")
    pe.add_argument("--n", type=_positive_int, default=256, help="held-out pairs (default: %(default)s)")
    pe.add_argument("--budget", type=float, help="target FLOPs fraction (default: the policy's)")
    pe.add_argument("--seed", type=int, default=1_000_000, help="first held-out noise seed (default: %(default)s)")
    pe.add_argument("--greedy", action="store_true",
                    help="take each knob's most likely level instead of sampling (seeded) as in training")
    pe.add_argument("--batch-size", type=_positive_int, default=64, help="rows per model call")
    pe.add_argument("--timing-samples", type=_positive_int, default=4, help="samples timed at batch 1")
    pe.add_argument("--timing-repeats", type=_positive_int, default=5, help="interleaved timing repeats")
    _add_report_options(pe)
    pe.set_defaults(func=cmd_policy_eval)

    # compare
    cp = sub.add_parser(
        "compare", help="the learned policy vs the training-free accelerators (JSON, table, Pareto PNG)",
        description="On N held-out (class, noise) pairs of one generator, in one process: full compute, "
                    "uniform step reduction, static sparse attention, diffusers' caches (FirstBlockCache, "
                    "TaylorSeer, TaylorSeer lite, MagCache calibrated on the model, Pyramid Attention "
                    "Broadcast, FasterCache, SeaCache) and cache-dit's DBCache (with and without its "
                    "TaylorSeer calibrator), each at several settings and run through its own library on the "
                    "same transformer; a random policy at the learned policy's FLOPs; and the learned policy at "
                    "each budget. Per method and setting: FLOPs speedup (counted as executed), wall-clock "
                    "speedup at batch 1 and batch 16 (median of interleaved repeats), PSNR and SSIM to full "
                    "compute, class accuracy and Frechet distance by the evaluation classifier.",
        epilog="Example: hasten compare --policy runs/budgets/policy --budgets 0.5,0.35,0.25 --n 64 "
               "--json compare.json --markdown compare.md --plot pareto.png. Methods for --methods: full, "
               "uniform, sparse, firstblockcache, taylorseer, taylorseer-lite, magcache, "
               "pyramidattentionbroadcast, fastercache, seacache, dbcache, dbcache+taylorseer, random, policy "
               "(full compute always runs: it is the reference). "
               "With --task reasoning (e.g. hasten compare --task reasoning --policy runs/reasoning-quickstart/policy "
               "--n 64 --trl-minutes 10 --json r.json --plot r.png): on N held-out problems per difficulty, the "
               "full chain, the answer forced after k lines (--fixed-steps), DEER's confidence exit "
               "(--deer-thresholds; its trial answers counted as probe tokens), the head (greedy and "
               "--head-thresholds on P(stop)) and trl's GRPOTrainer fine-tuning the whole LM for --trl-minutes "
               "(or an already fine-tuned --trl-model): accuracy, reasoning / probe / total tokens, seconds, "
               "training cost.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cp.add_argument("--fixed-steps", default="0,1,2,3,4,5,6,8,10,12",
                    help="reasoning: chain lines after which fixed budgets force the answer (default: %(default)s)")
    cp.add_argument("--deer-thresholds", default="0.5,0.7,0.8,0.9,0.95,0.99",
                    help="reasoning: DEER confidence thresholds (default: %(default)s)")
    cp.add_argument("--head-thresholds", default="0.2,0.35,0.65,0.8",
                    help="reasoning: P(stop) thresholds of the head besides greedy (default: %(default)s)")
    cp.add_argument("--trl-minutes", type=float, default=0.0,
                    help="reasoning: fine-tune the LM with trl's GRPOTrainer for this many minutes (0: skip)")
    cp.add_argument("--trl-model", help="reasoning: an already fine-tuned reasoner folder to evaluate instead")
    cp.add_argument("--trl-out", default="runs/trl-grpo-baseline",
                    help="reasoning: where --trl-minutes writes the fine-tuned LM (default: %(default)s)")
    cp.add_argument("--task", choices=("denoising", "reasoning"), default="denoising",
                    help="denoising (default): a DiT generator and its accelerators; reasoning: a reasoning LM, "
                         "its chain-of-thought head, fixed budgets, DEER and trl's GRPOTrainer (see below)")
    cp.add_argument("--generator", help="embedded:NAME or a generator / reasoner folder (default: the policy's "
                                        "generator, else embedded:shapes, or embedded:arith with --task reasoning)")
    cp.add_argument("--generator-option", action="append", metavar="KEY=VALUE",
                    help="an option of the generator's loader (repeatable), e.g. for a diffusers pipeline folder "
                         "prompts_file=PATH, resolution=512, device=cuda (default: the policy's own)")
    cp.add_argument("--policy", help="learned policy folder, e.g. runs/budgets/policy (without it: no policy "
                                     "and no random policy)")
    cp.add_argument("--budgets", default="0.5,0.35,0.25",
                    help="comma-separated budgets of the learned policy, FLOPs fractions in (0, 1] "
                         "(default: %(default)s)")
    cp.add_argument("--n", type=_positive_int, help="held-out pairs (default: 256); reasoning: problems per "
                                                     "difficulty (default: 64)")
    cp.add_argument("--seed", type=int, default=1_000_000, help="first held-out noise / problem seed "
                                                                "(default: %(default)s)")
    cp.add_argument("--methods", help="comma-separated subset of the methods (default: all; see below)")
    cp.add_argument("--uniform-steps", help="step counts of uniform step reduction (default: 14,10,7,5, those "
                                            "below the schedule's length)")
    cp.add_argument("--classifier", help="evaluation classifier folder (default: the generator's own)")
    cp.add_argument("--timing-samples", type=_positive_int, default=2, help="samples timed at batch 1 "
                                                                            "(default: %(default)s)")
    cp.add_argument("--timing-repeats", type=_positive_int, default=3,
                    help="interleaved timing repeats, median reported (default: %(default)s)")
    cp.add_argument("--timing-batches", default="1,16", help="batch sizes timed (default: %(default)s)")
    cp.add_argument("--batch-size", type=_positive_int, default=64,
                    help="rows per call of hasten's own methods in the quality pass (default: %(default)s)")
    cp.add_argument("--peer-batch-size", type=_positive_int, default=1,
                    help="images per sampling run of the library caches in the quality pass; they decide once "
                         "per batch (default: %(default)s, one decision stream per image)")
    cp.add_argument("--plot", metavar="PATH.png", help="write the Pareto plot (speedup vs PSNR, one curve per method)")
    cp.add_argument("--benchmarks-md", metavar="PATH",
                    help="(re)write the '## hasten compare' section of this markdown file (e.g. BENCHMARKS.md)")
    cp.add_argument("--from-json", metavar="PATH",
                    help="measure nothing: recompute the acceptance checks and re-render --json, --markdown, "
                         "--plot and --benchmarks-md from the JSON of an earlier run (its command is kept)")
    _add_report_options(cp)
    cp.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:  # `hasten` alone
        return _print_help_and_fail(parser)
    try:
        return args.func(args)
    except HastenError as e:
        if args.debug:
            raise
        print(f"hasten: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasten: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
