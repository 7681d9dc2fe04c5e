"""The contract's one exception: a file or field that breaks the contract (bad input)."""

from __future__ import annotations


class ContractError(ValueError):
    """Bad input: the message names the file, the field or the flag, and the valid choices.

    ``edge_se.errors.EdgeSeError`` derives from it, so every CLI maps both to one line and exit 2.
    """


def first_line(exc: BaseException, limit: int = 300, *, with_type: bool = True) -> str:
    """``Type: first non-empty line`` of an exception's message (the toolchains print pages), cut to ``limit``.

    The one formatter of an exception for a one-line error or a record's ``error`` field.
    ``with_type=False`` leaves the type out where the message is already edge-se's own words.
    """
    for line in str(exc).splitlines():
        if line.strip():
            text = f"{type(exc).__name__}: {line.strip()}" if with_type else line.strip()
            return text[:limit]
    return type(exc).__name__
