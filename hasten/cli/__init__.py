"""The ``hasten`` command line.

Every command has ``--help``; commands that report numbers take ``--json PATH``. Errors in what
the user gave (unknown class, missing path, corrupted weights, invalid config value) print one
line naming what was wrong and what was expected, and exit with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hasten import __version__
from hasten.cli import bench, compare, generator, policy, reasoner, sample, train
from hasten.cli.common import print_help_and_fail
from hasten.cli.outputs import check_outputs
from hasten.errors import HastenError

logger = logging.getLogger("hasten")


class Parser(argparse.ArgumentParser):
    """argparse's parser (and every subcommand's: subparsers take their parent's class) whose usage
    errors are one line that names the option, as hasten's other errors are."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hasten",
        description="Learn acceleration policies for frozen generative models.",
        epilog="Run `hasten COMMAND --help` for the options of each command.")
    parser.add_argument("--version", action="version", version=f"hasten {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    generator.add_parser(sub)
    reasoner.add_parser(sub)
    bench.add_knobs_parser(sub)
    sample.add_parser(sub)
    train.add_train_parser(sub)
    bench.add_rollouts_parser(sub)
    bench.add_gpu_parser(sub)
    train.add_report_parser(sub)
    policy.add_parser(sub)
    compare.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:  # `hasten` alone
        return print_help_and_fail(parser)
    try:
        check_outputs(args)  # an unwritable output fails here, before any model loads
        return args.func(args)
    except HastenError as e:
        if args.debug:
            raise
        print(f"hasten: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasten: interrupted", file=sys.stderr)
        return 130
