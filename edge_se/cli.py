"""The ``edge-se`` command: one parser, subcommands contributed by each package.

Each package owns the subcommands of its stage in its own ``cli.py`` with a
``register(subparsers)`` function; a subcommand parser sets ``func=run`` where
``run(args) -> int``. This shell is the one place that knows every package: it imports them
by name when the parser is built, so ``import edge_se`` never pulls in the upper layers
(``quantize``, ``export``) and the dependency direction stays visible. A plugin module must
import heavy libraries inside its ``run`` functions, not at module level.

Errors: an :class:`~edge_se.errors.EdgeSeError` (bad input) becomes one line on stderr and exit
code 2; results go to stdout (JSON lines where the contract says so), logs to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from edge_se.errors import EdgeSeError

# Subcommand providers, bottom layer first. A missing module is skipped (a stage not yet installed).
PLUGINS: tuple[str, ...] = (
    "edge_se.commands",
    "quantize.cli",
    "export.cli",
    "device_bench.cli",
    "pipeline.cli",
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``--help`` still shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``edge-se`` parser with every available subcommand."""
    parser = _Parser(
        prog="edge-se",
        description="Squeeze-and-Excitation CNNs from PyTorch to the edge.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # the providing package is not there (yet)
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``edge-se`` command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgeSeError as exc:
        print(f"edge-se {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `edge-se models | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print(f"edge-se {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
