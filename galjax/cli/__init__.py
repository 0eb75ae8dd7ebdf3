"""The ``galjax`` command (top layer): one module per sub-command, :func:`main` dispatches."""

from galjax.cli.main import build_parser, compilation_cache_dir, main

__all__ = ["build_parser", "compilation_cache_dir", "main"]
