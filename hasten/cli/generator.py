"""``hasten generator``: train, train-classifier, eval and info of the embedded generators."""

from __future__ import annotations

import os
import sys

from hasten.cli.common import (DEFAULT_GENERATOR, add_report_options, command_group, int_list,
                               positive_int, report, set_threads, write_json)
from hasten.cli.outputs import add_output


def cmd_generator_train(args) -> int:
    from hasten.config import apply_overrides, load_document
    from hasten.embedded.recipes import generator_recipe

    data = apply_overrides(load_document(args.config) if args.config else {}, args.set)
    config, train_generator = generator_recipe(data, args.config or "generator config")
    out = train_generator(config, args.out, resume=args.resume, progress=not args.quiet)
    print(f"generator saved to {out}")
    return 0


def cmd_generator_train_classifier(args) -> int:
    from hasten.config import apply_overrides, load_document
    from hasten.embedded.recipes import classifier_recipes, generator_recipe

    data = apply_overrides(load_document(args.config) if args.config else {}, args.set)
    config, train_classifier = generator_recipe(data, args.config or "classifier config", classifier_recipes())
    result = train_classifier(config, args.out, progress=not args.quiet)
    print(f"classifier saved to {result['path']}: accuracy {result['accuracy']:.4f} on fresh real "
          f"samples, {result['train_seconds']:.0f} s")
    return 0


def cmd_generator_eval(args) -> int:
    from hasten.models import load_generator
    from hasten.embedded.shapes.classifier import load_classifier
    from hasten.embedded.shapes.evaluate import evaluate_generator, markdown_table
    from hasten.models.registry import classifier_path

    set_threads(args.threads)
    generator = load_generator(args.generator)
    classifier = load_classifier(args.classifier or classifier_path(generator.path))
    result = evaluate_generator(generator, classifier, n=args.n, num_steps=args.steps,
                                guidance=args.guidance, reduced_steps=args.reduced_steps,
                                seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    report(markdown_table(result), result, args)
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
        write_json(args.json, info)
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


def add_parser(sub) -> None:
    gen_sub = command_group(sub, "generator", "train, evaluate and inspect the embedded generators",
                            "Train, evaluate and inspect the embedded generators.")

    train = gen_sub.add_parser(
        "train", help="train an embedded generator: FLUX on procedural shapes, or Wan on procedural clips",
        description="Train a class-conditional rectified-flow generator by one of hasten's recipes, picked by "
                    "the config's `recipe` field: `shapes` (default; the FLUX transformer of embedded:shapes, "
                    "experiments/shapes_generator.yaml) or `clips` (the Wan video transformer of "
                    "embedded:clips, experiments/clips_generator.yaml). Writes TensorBoard events, a checkpoint "
                    "every checkpoint_every steps and, at the end, OUT/model: a generator folder that "
                    "`hasten.load_generator(OUT/model)` reads.")
    train.add_argument("--config", help="YAML/JSON file with the recipe's fields (GeneratorTrainConfig, or "
                                        "ClipsGeneratorConfig with recipe: clips)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one config field (repeatable), e.g. --set steps=100")
    add_output(train, "--out", "folder", default="runs/shapes-generator", help="run folder (default: %(default)s)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_generator_train)

    cls = gen_sub.add_parser(
        "train-classifier", help="train the evaluation classifier of the shapes (or clips) classes",
        description="Train an evaluation classifier on real procedural data (used only to evaluate, never as a "
                    "reward): of the shapes classes (default), or with `recipe: clips` of the clips classes "
                    "(experiments/clips_classifier.yaml).")
    cls.add_argument("--config", help="YAML/JSON file with ClassifierTrainConfig fields (recipe: clips for clips)")
    cls.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field")
    add_output(cls, "--out", "folder", default="runs/shapes-classifier", help="output folder (default: %(default)s)")
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
    ev.add_argument("--n", type=positive_int, default=512, help="number of samples (default: %(default)s)")
    ev.add_argument("--steps", type=positive_int, help="sampling steps (default: the generator's)")
    ev.add_argument("--guidance", type=float, help="guidance scale (default: the generator's)")
    ev.add_argument("--reduced-steps", type=int_list, default=(),
                    help="comma-separated step counts to compare with the default, e.g. 14,7,4")
    ev.add_argument("--seed", type=int, default=0, help="first noise seed (default: %(default)s)")
    ev.add_argument("--batch-size", type=positive_int, default=64, help="rows per model call")
    add_report_options(ev)
    ev.set_defaults(func=cmd_generator_eval)

    info = gen_sub.add_parser("info", help="path, parameter count and config of a generator",
                              description="Print a generator's folder, parameter count and config.")
    info.add_argument("name", nargs="?", default=DEFAULT_GENERATOR, help="embedded:NAME or a folder")
    info.add_argument("--json", nargs="?", const="-", metavar="PATH",
                      help="print JSON (to PATH if given, else stdout)")
    info.set_defaults(func=cmd_generator_info)
