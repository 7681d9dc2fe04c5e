"""The ``edge-se`` command: one parser, subcommands contributed by each package.

Each package owns the subcommands of its stage in its own ``cli.py`` with a
``register(subparsers)`` function; a subcommand parser sets ``func=run`` where
``run(args) -> int``. This shell is the one place that knows every package: it imports them
by name when the parser is built, so ``import edge_se`` never pulls in the upper layers
(``quantize``, ``export``) and the dependency direction stays visible. A plugin module must
import heavy libraries inside its ``run`` functions, not at module level.

Errors: a :class:`~contract.errors.ContractError` (bad input; ``EdgeSeError`` is one) becomes one
line on stderr and exit code 2, a :class:`~edge_se.errors.StageError` (a toolchain stage failed)
one line and exit code 3; ``edge-se --traceback CMD`` shows the whole trace instead. Results go
to stdout (JSON lines where the contract says so), logs to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from contract.errors import ContractError
from edge_se.errors import StageError

# Subcommand providers, bottom layer first. A missing module is skipped (a stage not yet installed).
PLUGINS: tuple[str, ...] = (
    "edge_se.commands",
    "quantize.cli",
    "export.cli",
    "device_bench.cli",
    "pipeline.cli",
    "studies.ablation_cli",
    "studies.anomaly_cli",
    "latency.cli",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default to show (never ``(default: None)``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if "%(default)" in text or "(default" in text or unset:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``--help`` still shows the usage).

    Every subcommand gets :class:`HelpFormatter`, whatever formatter its provider asked for.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``edge-se`` parser with every available subcommand."""
    parser = _Parser(
        prog="edge-se",
        description="Squeeze-and-Excitation CNNs from PyTorch to the edge.",
    )
    parser.add_argument("--traceback", action="store_true",
                        help="show the whole Python trace of an error instead of its one line")
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
    except ContractError as exc:  # bad input (EdgeSeError derives from it): the user can fix it
        if args.traceback:
            raise
        print(f"edge-se {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StageError as exc:  # a toolchain stage failed on valid input: not the user's typing
        if args.traceback:
            raise
        print(f"edge-se {args.command}: error: {exc} (--traceback shows the whole trace)", file=sys.stderr)
        return 3
    except BrokenPipeError:  # `edge-se models | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print(f"edge-se {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
