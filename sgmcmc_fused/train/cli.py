"""The ``python -m sgmcmc_fused.train`` command line: one subcommand per module in `SUBCOMMANDS`.

A subcommand module provides ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` (the exit status) with ``parser.set_defaults``. To add one (``classify``,
``download``), write the module and append its name here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules of sgmcmc_fused.train that register a subcommand, in the order of the help text.
SUBCOMMANDS: tuple[str, ...] = ("lm", "classify", "caption", "caption_features", "download")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sgmcmc_fused.train",
        description="Train recurrent networks with fused SG-MCMC (pSGLD, SGLD) and their optimiser "
        "counterparts (RMSprop, SGD), with model averaging over posterior samples.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def _without_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` (and its subcommands' parsers) changed to leave out every option not on the command line."""
    parser._defaults = {}
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _without_defaults(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]) and run the subcommand; returns its exit status.

    ``args.given`` holds the dests of the options on the command line, whatever their values (a
    resumed run refuses options it cannot change even when they repeat the default)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.given = frozenset(vars(_without_defaults(build_parser()).parse_args(argv))) - {"command"}
    return int(args.func(args) or 0)
