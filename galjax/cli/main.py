"""The ``galjax`` command line: thin wrappers around library functions, one module per
sub-command (:mod:`galjax.cli.simulate`, :mod:`~galjax.cli.train`, :mod:`~galjax.cli.deblend`,
:mod:`~galjax.cli.mask`, :mod:`~galjax.cli.gan`).

``galjax simulate --n 64 --seed 0 --out demo/fields.fits`` simulates blended
fields with the built-in LSST-like survey and writes the fields (FITS), the truth
table (ECSV) and a figure (PNG).

Every sub-command reports bad input the same way: ``galjax <cmd>: error: <message>``
on stderr and exit status 2, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import sys

from galjax.cli import deblend, gan, mask, simulate, train
from galjax.cli.runtime import (
    INPUT_ERRORS,
    compilation_cache_dir,
    enable_compilation_cache,
    report_error,
    use_cpu_cores,
)

__all__ = ["main", "build_parser", "compilation_cache_dir"]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("galjax")
    except metadata.PackageNotFoundError:  # a source tree that was not installed
        return "0.0.0+local"


def build_parser() -> argparse.ArgumentParser:
    """The ``galjax`` argument parser (subcommands)."""
    parser = argparse.ArgumentParser(prog="galjax", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"galjax {_version()}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    for command in (simulate, train, deblend, mask, gan):
        command.register(sub)
    _add_debug(sub)
    return parser


_DEBUG_HELP = "on an error, raise it with its traceback instead of a one-line message"


def _add_debug(subparsers) -> None:
    """``--debug`` after any sub-command too (nested ones included); SUPPRESS keeps a
    sub-parser from resetting the top-level value."""
    for p in subparsers.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
        for action in p._actions:  # nested sub-commands (galjax gan train)
            if isinstance(getattr(action, "choices", None), dict):
                _add_debug(action)


def _command_name(args) -> str:
    name = args.command
    return f"{name} {args.gan_command}" if getattr(args, "gan_command", None) else name


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``galjax`` console script.

    Returns the exit status: 0, or 2 after bad input (``ValueError``, ``TypeError``,
    ``OSError``, ``KeyError`` or a ``SystemExit`` with a message), reported on stderr
    as ``galjax <cmd>: error: <message>``; with ``--debug`` the error is raised instead.
    Option errors found by ``argparse`` exit with status 2 (``SystemExit``) as usual.
    """
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "cpu_devices", False):
            use_cpu_cores()
        enable_compilation_cache()
        return args.func(args)
    except INPUT_ERRORS as err:
        if args.debug:
            raise
        return report_error(_command_name(args), err)
    except SystemExit as err:
        if args.debug or not isinstance(err.code, str):
            raise
        return report_error(_command_name(args), err)


if __name__ == "__main__":
    sys.exit(main())
