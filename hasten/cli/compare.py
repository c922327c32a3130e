"""``hasten compare``: the learned policy vs the training-free accelerators (denoising) or vs fixed
budgets, DEER and trl's GRPOTrainer (--task reasoning)."""

from __future__ import annotations

import argparse
import os
import sys

from hasten.cli.common import add_report_options, positive_int, report, set_threads
from hasten.cli.outputs import add_output
from hasten.tasks import TASKS


def _compare_outputs(result: dict, args, markdown, plot, benchmarks_section) -> None:
    """Print the table; write --json, --markdown, --plot and the --benchmarks-md section of a compare result."""
    from hasten.bench.compare_report import write_benchmarks_section

    table = markdown(result)
    report(table, result, args)
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")
    if args.benchmarks_md:
        path = os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.benchmarks_md))) if args.plot else None
        section = benchmarks_section(result, table, path)
        title = section.splitlines()[0]  # its heading: the section of the file it replaces
        write_benchmarks_section(args.benchmarks_md, section, title=title)
        print(f"wrote the '{title}' section of {args.benchmarks_md}")


def cmd_compare(args) -> int:
    """Measure the methods of the ``--task`` (its :meth:`~hasten.tasks.Task.compare`) and write its report."""
    from hasten.tasks import get_task

    task = get_task(args.task)
    if args.budgets is None:
        args.budgets = task.default_budgets
    set_threads(args.threads)
    result = task.compare(args)
    if not args.from_json:  # an earlier run's JSON keeps its own policy and command
        result["policy"] = os.path.abspath(args.policy) if args.policy else None
        result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    _compare_outputs(result, args, *task.compare_report())
    return 0


def add_parser(sub) -> None:
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
        epilog="Example: hasten compare --policy embedded:shapes-budgets --budgets 0.5,0.35,0.25 --n 64 "
               "--json compare.json --markdown compare.md --plot pareto.png. Methods for --methods: full, "
               "uniform, sparse, firstblockcache, taylorseer, taylorseer-lite, magcache, "
               "pyramidattentionbroadcast, fastercache, seacache, dbcache, dbcache+taylorseer, random, policy "
               "(full compute always runs: it is the reference). "
               "With --task reasoning (e.g. hasten compare --task reasoning --policy embedded:arith-cot "
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
    add_output(cp, "--trl-out", "folder", default="runs/trl-grpo-baseline",
                    help="reasoning: where --trl-minutes writes the fine-tuned LM (default: %(default)s)")
    cp.add_argument("--task", choices=tuple(TASKS), default="denoising",
                    help="denoising (default): a DiT generator and its accelerators; reasoning: a reasoning LM, "
                         "its chain-of-thought head, fixed budgets, DEER and trl's GRPOTrainer (see below)")
    cp.add_argument("--generator", help="embedded:NAME or a generator / reasoner folder (default: the policy's "
                                        "generator, else embedded:shapes, or embedded:arith with --task reasoning)")
    cp.add_argument("--generator-option", action="append", metavar="KEY=VALUE",
                    help="an option of the generator's loader (repeatable), e.g. for a diffusers pipeline folder "
                         "prompts_file=PATH, resolution=512, device=cuda (default: the policy's own)")
    cp.add_argument("--policy", help="learned policy folder or shipped name, e.g. embedded:shapes-budgets or "
                                     "runs/budgets/policy (without it: no policy and no random policy)")
    cp.add_argument("--budgets",
                    help="comma-separated budgets of the learned policy, FLOPs fractions in (0, 1] (default: the "
                         "task's: " + "; ".join(f"{name} {task.default_budgets}" for name, task in TASKS.items()
                                                 if task.default_budgets) + ")")
    cp.add_argument("--n", type=positive_int, help="held-out pairs (default: 256); reasoning: problems per "
                                                    "difficulty (default: 64)")
    cp.add_argument("--seed", type=int, default=1_000_000, help="first held-out noise / problem seed "
                                                                "(default: %(default)s)")
    cp.add_argument("--methods", help="comma-separated subset of the methods (default: all; see below)")
    cp.add_argument("--uniform-steps", help="step counts of uniform step reduction (default: 14,10,7,5, those "
                                            "below the schedule's length)")
    cp.add_argument("--classifier", help="evaluation classifier folder (default: the generator's own)")
    cp.add_argument("--timing-samples", type=positive_int, default=2, help="samples timed at batch 1 "
                                                                           "(default: %(default)s)")
    cp.add_argument("--timing-repeats", type=positive_int, default=3,
                    help="interleaved timing repeats, median reported (default: %(default)s)")
    cp.add_argument("--timing-batches", default="1,16", help="batch sizes timed (default: %(default)s)")
    cp.add_argument("--batch-size", type=positive_int, default=64,
                    help="rows per call of hasten's own methods in the quality pass (default: %(default)s)")
    cp.add_argument("--peer-batch-size", type=positive_int, default=1,
                    help="images per sampling run of the library caches in the quality pass; they decide once "
                         "per batch (default: %(default)s, one decision stream per image)")
    add_output(cp, "--plot", metavar="PATH.png", help="write the Pareto plot (speedup vs PSNR, one curve per method)")
    add_output(cp, "--benchmarks-md", metavar="PATH",
                    help="(re)write the '## hasten compare' section of this markdown file (e.g. BENCHMARKS.md)")
    cp.add_argument("--from-json", metavar="PATH",
                    help="measure nothing: recompute the acceptance checks and re-render --json, --markdown, "
                         "--plot and --benchmarks-md from the JSON of an earlier run (its command is kept)")
    add_report_options(cp)
    cp.set_defaults(func=cmd_compare)
