"""The ``galjax`` command line: thin wrappers around library functions, one module per
sub-command (:mod:`galjax.cli.simulate`, :mod:`~galjax.cli.train`, :mod:`~galjax.cli.deblend`,
:mod:`~galjax.cli.mask`, :mod:`~galjax.cli.gan`).

``galjax simulate --n 64 --seed 0 --out demo/fields.fits`` simulates blended
fields with the built-in LSST-like survey and writes the fields (FITS), the truth
table (ECSV) and a figure (PNG).
"""

from __future__ import annotations

import argparse
import sys

from galjax.cli import deblend, gan, mask, simulate, train
from galjax.cli.runtime import compilation_cache_dir, enable_compilation_cache, use_cpu_cores

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
    sub = parser.add_subparsers(dest="command", required=True)

    for command in (simulate, train, deblend, mask, gan):
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``galjax`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "cpu_devices", False):
        use_cpu_cores()
    enable_compilation_cache()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
