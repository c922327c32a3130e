"""What the command groups share: argument types, config and generator loading, result reporting."""

from __future__ import annotations

import argparse
import json
import sys

from hasten.cli.outputs import add_output
from hasten.errors import HastenError

DEFAULT_GENERATOR = "embedded:shapes"


def write_json(path: str, data) -> None:
    from hasten.io import write_json_atomic

    if path == "-":
        print(json.dumps(data, indent=2))
    else:
        write_json_atomic(path, data)
        print(f"wrote {path}")


def load_config(cls, path: str | None, overrides: list[str] | None, section: str):
    from hasten.config import apply_overrides, from_dict, load_document

    data = load_document(path) if path else {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, source=path or section)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def int_tuple(text: str, option: str) -> tuple[int, ...]:
    """``14,10,7`` -> (14, 10, 7): comma-separated integers >= 1 of ``option`` (a one-line error otherwise)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise HastenError(f"{option} {text!r}: expected comma-separated integers >= 1, e.g. 14,10,7,5")
    return values


def float_tuple(text: str, option: str, lo: float, hi: float) -> tuple[float, ...]:
    """``0.5,0.9`` -> (0.5, 0.9): comma-separated numbers in [lo, hi] of ``option``."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < lo or max(values) > hi:
        raise HastenError(f"{option} {text!r}: expected comma-separated numbers in [{lo}, {hi}]")
    return values


def set_threads(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def load_generator_for(args, policy=None):
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


def policy_and_generator(args):
    """The policy of ``args.policy`` (None without one) and the generator it runs on, checked."""
    from hasten.policies import Policy

    policy = Policy.from_pretrained(args.policy) if args.policy else None
    generator = load_generator_for(args, policy)
    if policy is not None:
        policy.check_compatible(generator, where=args.policy)
    return policy, generator


def evaluation_classifier(args, generator):
    """--classifier, else the generator's own, else None (a pipeline folder ships none)."""
    from hasten.models.registry import evaluation_classifier

    classifier = evaluation_classifier(generator, args.classifier)
    if classifier is None:
        print(f"{generator.path}: no evaluation classifier (a diffusers pipeline); class accuracy and Frechet "
              "distance are left out (--classifier PATH adds them)")
    return classifier


def report(table: str, result: dict, args) -> None:
    """Print a markdown table; write the result as JSON (--json) and the table (--markdown)."""
    from hasten.io import write_text_atomic

    print(table)
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_text_atomic(args.markdown, table)
        print(f"wrote {args.markdown}")


def print_help_and_fail(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """--threads, --json, --markdown and --quiet: the options of every command that reports numbers."""
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    add_output(parser, "--json", metavar="PATH", help="write the results as JSON ('-' for stdout)")
    add_output(parser, "--markdown", metavar="PATH", help="write the results as a markdown table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def command_group(sub, name: str, help_text: str, description: str):
    """A command with subcommands (``hasten NAME SUBCOMMAND``); alone it prints its help and fails."""
    group = sub.add_parser(name, help=help_text, description=description)
    group.set_defaults(func=lambda args: print_help_and_fail(group))
    return group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
