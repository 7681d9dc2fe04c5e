"""The contract's one exception: a file or field that breaks the contract (bad input)."""

from __future__ import annotations


class ContractError(ValueError):
    """Bad input: the message names the file, the field or the flag, and the valid choices.

    ``edge_se.errors.EdgeSeError`` derives from it, so every CLI maps both to one line and exit 2.
    """
