"""argparse ``type=`` callables shared by every package's subcommands (one-line errors naming the flag)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def number(flag: str, kind: type[int] | type[float] = int, *, minimum: float | None = 1) -> Callable[[str], float]:
    """Parse ``flag``'s value as ``kind`` and require it to be at least ``minimum`` (None: any)."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {noun}, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum:g}, got {value:g}")
        return value

    return parse
