"""How a latency is measured: the one spec every timing path uses, with its command-line round trip.

The on-device runner, the native runner, every transport, the desktop baselines, the peer
benchmarks and the pipeline all time with a :class:`MeasureSpec`; its defaults live here and
nowhere else. ``MeasureSpec.from_argv(spec.to_argv()) == spec`` for every valid spec.

Method (what the fields mean): one untimed first inference, ``warmup`` untimed runs, then per
repeat at least ``runs`` timed inferences *and* at least ``min_seconds`` of them (MLPerf's minimum
query count and minimum duration), capped at ``max_runs`` (0: no cap); ``cooldown_s`` of idle
between repeats. Inputs come from ``seed``. Standard library only.

Across artifacts (``edge-se bench`` with several on one device) the timing order is
:func:`timing_order`'s: shuffled with the spec's ``seed`` by default, so a drift of the machine
(heat, other jobs) does not always fall on the same artifact.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from contract.errors import ContractError


@dataclass(frozen=True)
class MeasureSpec:
    """The figures that decide a timing; recorded with every result."""

    warmup: int = 10  # untimed inferences before timing
    runs: int = 50  # minimum timed inferences per repeat
    min_seconds: float = 1.0  # minimum timed seconds per repeat
    max_runs: int = 0  # stop a repeat after this many inferences (0: no cap)
    repeats: int = 3  # independent timed repeats
    cooldown_s: float = 1.0  # idle seconds between repeats
    threads: int = 1  # runtime threads (always set explicitly)
    affinity: str | None = None  # pin to these CPUs, e.g. "0,1"
    seed: int = 0  # seed of the generated inputs
    unstable_pct: float = 5.0  # repeat medians further apart than this (% of the fastest) -> unstable

    def __post_init__(self) -> None:
        for name, low in (("warmup", 0), ("runs", 1), ("max_runs", 0), ("repeats", 1), ("threads", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ContractError(f"{_flag(name)} must be an integer >= {low}, got {value!r}")
        for name in ("min_seconds", "cooldown_s", "unstable_pct"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ContractError(f"{_flag(name)} must be a number >= 0, got {value!r}")
        if self.affinity is not None:
            parts = [p.strip() for p in str(self.affinity).split(",")]
            if not parts or not all(p.isdigit() for p in parts):
                raise ContractError(f"--affinity {self.affinity!r}: expected comma-separated CPU numbers like 0,1")

    def replace(self, **changes: Any) -> MeasureSpec:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON object (recorded beside every result)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, where: str = "measure") -> MeasureSpec:
        """The spec from a JSON object or TOML table; unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise ContractError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**dict(doc))

    def to_argv(self) -> list[str]:
        """The runner's command-line options for this spec (every field, explicitly)."""
        argv: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            argv += [_flag(f.name), _format(value)]
        return argv

    def summary(self, *, threads: str | None = None) -> str:
        """One readable line: ``warmup 10, runs >= 50 and >= 1.0 s, 3 repeats, 1 thread(s)``.

        ``threads`` replaces the thread figure (``"threads from the inventory, else 1"``).
        """
        parts = [f"warmup {self.warmup}", f"runs >= {self.runs} and >= {self.min_seconds} s"
                 + (f" (at most {self.max_runs})" if self.max_runs else ""),
                 f"{self.repeats} repeat(s)" + (f", {self.cooldown_s} s apart" if self.repeats > 1 else ""),
                 threads or f"{self.threads} thread(s)"]
        if self.affinity:
            parts.append(f"CPUs {self.affinity}")
        return ", ".join(parts)

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> MeasureSpec:
        """Parse options written by :meth:`to_argv` (or typed by a user)."""
        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        ns, rest = parser.parse_known_args(list(argv))
        if rest:
            raise ContractError(f"unknown measurement option(s): {' '.join(rest)}")
        return from_namespace(ns)


DEFAULT = MeasureSpec()

_HELP = {
    "warmup": "untimed inferences before timing",
    "runs": "minimum timed inferences per repeat (MLPerf's minimum query count)",
    "min_seconds": "minimum timed seconds per repeat (MLPerf's minimum duration)",
    "max_runs": "stop a repeat after this many inferences (0: no cap)",
    "repeats": "independent timed repeats",
    "cooldown_s": "idle seconds between repeats",
    "threads": "runtime threads (always set explicitly)",
    "affinity": "pin the runner to these CPUs, e.g. 0,1",
    "seed": "seed of the generated inputs",
    "unstable_pct": "repeat medians further apart than this (%% of the fastest) mark the result unstable",
}
# The flag a field is written as, where it is not the field's name: the runners (the native one
# on boards included) have always taken ``--cooldown``; ``--cooldown-s`` is accepted too.
_FLAGS = {"cooldown_s": "--cooldown"}
_ALIASES = {"cooldown_s": ("--cooldown-s",)}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def add_arguments(parser: argparse.ArgumentParser | Any, *, defaults: MeasureSpec = DEFAULT
                  ) -> dict[str, argparse.Action]:
    """Add every measurement flag to ``parser`` (or an argument group), defaults from ``defaults``.

    Returns the actions by field name, for a caller that words one default differently (``edge-se
    bench``: threads default to the inventory's).
    """
    actions = {}
    for f in fields(MeasureSpec):
        default = getattr(defaults, f.name)
        kind = {"int": int, "float": float}.get(str(f.type).replace(" | None", ""), str)
        default_text = "not set" if default is None else "%(default)s"
        actions[f.name] = parser.add_argument(
            _flag(f.name), *_ALIASES.get(f.name, ()), dest=f"measure_{f.name}", type=kind, default=default,
            metavar=_flag(f.name)[2:].upper().replace("-", "_"), help=f"{_HELP[f.name]} (default: {default_text})")
    return actions


def from_namespace(ns: argparse.Namespace) -> MeasureSpec:
    """The spec from arguments added by :func:`add_arguments`."""
    return MeasureSpec(**{f.name: getattr(ns, f"measure_{f.name}") for f in fields(MeasureSpec)})


Order = Literal["given", "shuffled"]
ORDERS: tuple[str, ...] = get_args(Order)
"""How several artifacts on one device are ordered for timing (``edge-se bench --order``)."""
DEFAULT_ORDER: Order = "shuffled"


def timing_order(n: int, *, order: str = DEFAULT_ORDER, seed: int = DEFAULT.seed) -> list[int]:
    """The order in which to time ``n`` artifacts: indices into the given list.

    ``given``: ``0 .. n-1``. ``shuffled``: a permutation drawn by ``random.Random(seed).shuffle``,
    the same for the same ``seed`` and ``n`` (the seed is the spec's, recorded as ``measure.seed``).
    Python promises only ``random()``'s sequence across versions, not ``shuffle``'s, so every
    bench record keeps the order it was timed in (``order``) rather than relying on the seed.

    Raises:
        ContractError: an unknown ``order`` or a negative ``n``.
    """
    if order not in ORDERS:
        raise ContractError(f"--order {order!r} is not valid; valid: {', '.join(ORDERS)}")
    if n < 0:
        raise ContractError(f"timing order of {n} artifacts: expected a count >= 0")
    indices = list(range(n))
    if order == "shuffled":
        random.Random(seed).shuffle(indices)
    return indices
