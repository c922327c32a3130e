"""``hasten reasoner``: train and eval of the embedded reasoning LM (embedded:arith)."""

from __future__ import annotations

import sys

from hasten.cli.common import add_report_options, command_group, positive_int, report, set_threads
from hasten.cli.outputs import add_output


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

    set_threads(args.threads)
    reasoner = load_reasoner(args.reasoner)
    result = evaluate_reasoner(reasoner, n=args.n, seed=args.seed, batch_size=args.batch_size,
                               progress=not args.quiet)
    result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    report(eval_markdown(result), result, args)
    return 0


def add_parser(sub) -> None:
    rs_sub = command_group(sub, "reasoner", "train and evaluate the embedded reasoning LM (embedded:arith)",
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
    add_output(rt, "--out", "folder", default="runs/arith-reasoner", help="reasoner folder (default: %(default)s)")
    add_output(rt, "--log-dir", "folder", help="TensorBoard folder for the loss curve")
    rt.add_argument("--quiet", action="store_true", help="no progress bar")
    rt.set_defaults(func=cmd_reasoner_train)
    re_ = rs_sub.add_parser(
        "eval", help="accuracy by difficulty with the full chain and with no chain",
        description="Decode N held-out problems per difficulty twice: letting the model write its full chain, "
                    "and forcing the answer at once (no chain). Reports accuracy and reasoning tokens.")
    re_.add_argument("reasoner", nargs="?", default="embedded:arith", help="embedded:arith or a reasoner folder")
    re_.add_argument("--n", type=positive_int, default=64, help="problems per difficulty (default: %(default)s)")
    re_.add_argument("--seed", type=int, default=1_000_000, help="first held-out problem seed (default: %(default)s)")
    re_.add_argument("--batch-size", type=positive_int, default=64, help="problems decoded together")
    add_report_options(re_)
    re_.set_defaults(func=cmd_reasoner_eval)
