"""The exception edge-se raises for bad user input, and the one for a failed toolchain stage.

The CLI prints either as a single line and exits 2 (:class:`EdgeSeError`, bad input, a subclass
of the contract's :class:`~contract.errors.ContractError`) or 3 (:class:`StageError`: a converter,
lowering or runtime failed on valid input); ``--traceback`` shows the whole trace. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

from contract.errors import ContractError, first_line

__all__ = ["ContractError", "EdgeSeError", "StageError", "first_line"]


class EdgeSeError(ContractError):
    """Bad input from the user: the message names the file, field or operator and the valid choices."""


class StageError(RuntimeError):
    """A toolchain stage (convert, lower, run, quantize, ...) failed on valid input: exit code 3.

    The message is one line: the stage, the operator where known, and the toolchain's own words.
    """

    def __init__(self, stage: str, message: str, *, operator: str | None = None) -> None:
        self.stage = stage
        self.operator = operator
        where = f" at operator {operator}" if operator else ""
        super().__init__(f"{stage} failed{where}: {message}")

