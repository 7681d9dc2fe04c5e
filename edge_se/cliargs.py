"""The CLI vocabulary: one flag name, meaning and default per concept, shared by every subcommand.

Subcommands add their options through the ``add_*`` groups here, so a concept (the artifact
format, the calibration set and its size, the quantisation policy, threads, seed) has one
spelling and one default everywhere. A renamed flag keeps working through :func:`deprecated`:
it stores into the new flag's destination and prints one line on stderr naming the new
spelling. Torch-free: building the parser must stay cheap (``edge-se --help`` < 1 s).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


class _Deprecated(argparse.Action):
    """Store like ``new`` would, after one line on stderr saying to use ``new``."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, inner: argparse.Action,
                 **kwargs: Any) -> None:
        kwargs.pop("help", None)
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, nargs=inner.nargs, type=inner.type,
                         choices=inner.choices, **{k: v for k, v in kwargs.items() if k not in ("nargs", "type", "choices")})
        self.new = new
        self.inner = inner

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        self.inner(parser, namespace, values, self.new)


def deprecated(parser: argparse.ArgumentParser | Any, old: str, new_action: argparse.Action) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the option ``new_action`` (one warning line)."""
    parser.add_argument(old, action=_Deprecated, dest=new_action.dest, default=argparse.SUPPRESS,
                        new=new_action.option_strings[0], inner=new_action)
