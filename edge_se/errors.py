"""The one exception type edge-se raises for bad user input.

The CLI prints an :class:`EdgeSeError` as a single line (``edge-se: error: ...``) and exits
non-zero, with no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgeSeError(ValueError):
    """Bad input from the user: the message names the file, field or operator and the valid choices."""
