"""Markdown tables for results files and the report: one writer (tabulate), one cell formatter.

Every table edge-se writes (``results/*.md``, ``report.md``) goes through :func:`markdown_table`,
so they share one dialect (GitHub-flavoured) and one way of showing a missing figure (``-``).
Tables are declared as :class:`Column` lists: the header and how a record gives the cell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MISSING = "-"


def fmt(value: Any, spec: str = ".3g") -> str:
    """A cell: ``-`` for None, yes/no for a bool, ``format(value, spec)`` for a number, else ``str``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
                   align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table; cells that are not strings go through :func:`fmt`.

    ``align``: per column ``"left"`` or ``"right"`` (default: all left).
    """
    from tabulate import tabulate

    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    return tabulate(cells, headers=list(header), tablefmt="github", disable_numparse=True,
                    colalign=tuple(align) if align else None)


@dataclass(frozen=True)
class Column:
    """One column: its header and the cell of a record (a key, or a function of the record)."""

    header: str
    value: str | Callable[[Mapping[str, Any]], Any]
    spec: str = ".3g"
    align: str = "left"  # "right" for figures a reader compares down the column

    def cell(self, record: Mapping[str, Any]) -> str:
        """This column's cell for ``record`` (missing key: ``-``)."""
        v = record.get(self.value) if isinstance(self.value, str) else self.value(record)
        return v if isinstance(v, str) else fmt(v, self.spec)


def table(columns: Sequence[Column], records: Iterable[Mapping[str, Any]]) -> str:
    """The markdown table of ``records``, one row each, cells from ``columns``."""
    return markdown_table([c.header for c in columns], [[c.cell(r) for c in columns] for r in records],
                          align=[c.align for c in columns])


def percent(key: str, header: str | None = None) -> Column:
    """A fraction (0..1) under ``key`` shown in percent, one decimal; the header is ``key``'s words + ``%``."""
    return Column(header or key.replace("_", " ") + " %", lambda r: None if r.get(key) is None else 100 * r[key],
                  ".1f", "right")
