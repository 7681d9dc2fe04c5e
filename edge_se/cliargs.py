"""The CLI vocabulary: one flag name, meaning and default per concept, shared by every subcommand.

Subcommands add their options through the ``add_*`` groups here, so a concept (the artifact
format, the calibration set and its size, the quantisation policy, threads, seed) has one
spelling and one default everywhere. A renamed flag keeps working through :func:`deprecated`:
it stores into the new flag's destination and prints one line on stderr naming the new
spelling. Torch-free: building the parser must stay cheap (``edge-se --help`` < 1 s).

Groups: :func:`add_model_source` (``--weights``, ``--resolution``), :func:`add_calibration`
(``--calib``, ``--calib-size``; ``--calib-samples`` deprecated), ``add_quantization``
(in ``quantize.cli``: the policy table is the layer above), :func:`add_format` (``--format``; ``quantize``'s
``--target`` deprecated), :func:`add_threads`, :func:`add_seed`. Their defaults are the ``DEFAULT_*``
names below, plus ``quantize.policies.DEFAULT_POLICY`` (plain ``ptq``), which the policy table owns.
``--format`` is the one concept whose default depends on the subcommand, by what it can write: a
subcommand that writes one artifact (``quantize``) defaults to ``pte``, one that writes several at
once (``export``) to ``all``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from edge_se.argtypes import number


class _Deprecated(argparse.Action):
    """Store like ``new`` would, after one line on stderr saying to use ``new``."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, inner: argparse.Action,
                 **kwargs: Any) -> None:
        kwargs.pop("help", None)
        rest = {k: v for k, v in kwargs.items() if k not in ("nargs", "type", "choices")}
        kind: Any = inner.type  # typeshed allows a str here; argparse never stores one
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, nargs=inner.nargs, type=kind,
                         choices=inner.choices, **rest)
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


# --- the vocabulary: one default per concept ---------------------------------------------------

DEFAULT_CALIB = "digits"
"""Calibration images: scikit-learn's digits, bundled (real data; ``random`` is for smoke tests)."""
DEFAULT_CALIB_SIZE = 64
"""Calibration images drawn from the calibration source's training split."""
DEFAULT_FORMAT = "pte"
"""The artifact format of a subcommand that writes one format (``quantize``)."""
ALL_FORMATS = "all"
"""The ``--format`` value of a subcommand that writes every format at once (``export``), its default."""
DEFAULT_RESOLUTION = 64
"""Pixels, where a subcommand works on the digits (``train``; ``quantize`` without a sidecar): they
are 8x8, and 64 keeps every family's stages meaningful."""
DEFAULT_SEED = 0
DEFAULT_THREADS = 1
"""PyTorch intra-op threads. On a 2-core machine shared with other jobs, two threads per process
were measured 7-15x slower per training step than one (oversubscription)."""

WEIGHTS_HELP = ("weights file: `edge-se train` output (FILE + FILE.json sidecar) or an edge-se, torchvision or "
                "timm state dict")


def add_model_source(parser: Any, *, weights: str, resolution: int | None = None,
                     resolution_note: str = "the model's own") -> tuple[argparse.Action, argparse.Action]:
    """``--weights FILE`` (default: none, ``weights`` says what happens then) and ``--resolution R``.

    Args:
        parser: the subcommand's parser (or an argument group).
        weights: the subcommand's use of the file and what it does without one.
        resolution: the default side in pixels, or None to compute it at run time ...
        resolution_note: ... as this text says (shown in the help).
    """
    w = parser.add_argument("--weights", default=None, metavar="FILE", help=f"{WEIGHTS_HELP}; {weights}")
    note = "" if resolution is not None else f" (default: {resolution_note})"
    r = parser.add_argument("--resolution", type=number("--resolution"), default=resolution, metavar="R",
                            help=f"input side in pixels{note}")
    return w, r


def add_calibration(parser: Any, *, uses: str = "") -> tuple[argparse.Action, argparse.Action]:
    """``--calib SOURCE`` and ``--calib-size N`` (old spelling ``--calib-samples``, deprecated)."""
    c = parser.add_argument(
        "--calib", default=DEFAULT_CALIB, metavar="digits|textures|DIR|random",
        help="calibration images: digits (scikit-learn's, bundled), textures (patches of the photographs "
        "scikit-image ships: a harder task, see edge_se.textures), a folder of class sub-folders of images, "
        f"or random (seeded noise, smoke tests only){uses}")
    n = parser.add_argument("--calib-size", type=number("--calib-size"), default=DEFAULT_CALIB_SIZE, metavar="N",
                            help="calibration images drawn from the source's training split")
    deprecated(parser, "--calib-samples", n)
    return c, n


def add_format(parser: Any, *, choices: Sequence[str] | None = None, allow_all: bool = False,
               old: str | None = None) -> argparse.Action:
    """``--format``: one artifact format (default ``pte``) or, with ``allow_all``, ``all`` of them (the default).

    Args:
        parser: the subcommand's parser (or an argument group).
        choices: the formats (default: ``contract.formats.FORMATS``); ``all`` is added with ``allow_all``.
        allow_all: the subcommand writes every format at once: ``all`` is a choice and the default.
        old: a former spelling (``--target``) kept as a deprecated alias.
    """
    from contract.formats import FORMATS  # data only: no torch

    names = [c for c in (choices if choices is not None else FORMATS) if c != ALL_FORMATS]
    if allow_all:
        names.append(ALL_FORMATS)
    listed = ", ".join(f"{n} ({FORMATS[n].backend})" if n in FORMATS else n for n in names)
    what = f"artifact format{'s' if allow_all else ''}: {listed}"
    f = parser.add_argument("--format", choices=tuple(names), default=ALL_FORMATS if allow_all else DEFAULT_FORMAT,
                            help=what)
    if old is not None:
        deprecated(parser, old, f)
    return f


def add_threads(parser: Any) -> argparse.Action:
    """``--threads N``: PyTorch intra-op threads."""
    return parser.add_argument("--threads", type=number("--threads"), default=DEFAULT_THREADS, metavar="N",
                               help="PyTorch intra-op threads")


def add_seed(parser: Any, *, seeds: str) -> argparse.Action:
    """``--seed N`` (default 0); ``seeds`` names what it seeds in this subcommand."""
    return parser.add_argument("--seed", type=number("--seed", minimum=None), default=DEFAULT_SEED, metavar="N",
                               help=f"seeds {seeds}")
