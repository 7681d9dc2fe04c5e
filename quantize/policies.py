"""Named quantisation policies and how they combine (``--policy gate-fixed,act-percentile``).

Each name sets one independent aspect of the recipe; :func:`resolve_policy` merges a list into
one :class:`PolicyPlan` and rejects combinations that set the same aspect twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_se.errors import EdgeSeError

# name -> (aspect it sets, one-line description). ``ptq`` sets nothing: it is the baseline.
POLICIES: dict[str, tuple[str, str]] = {
    "ptq": ("", "the quantizer's defaults; calibration images drawn at random"),
    "gate-fixed": ("gate", "SE gate outputs quantised with fixed [0, 1] parameters (scale 1/256)"),
    "se-float": ("island", "SE excitation (FCs, activation, gate) kept fp32; the channel multiply int8"),
    "se-float-mul": ("island", "SE excitation and its channel multiply kept fp32 (the gate never quantised)"),
    "se-squeeze-grid": ("squeeze", "SE squeeze (the pooled mean) on its own observed grid, not its feature map's"),
    "gate-coverage": ("selection", "calibration subset chosen by k-center greedy over float gate vectors"),
    "act-minmax": ("observer", "activation ranges from observed min/max (stock: histogram/L2)"),
    "act-percentile": ("observer", "activation ranges from the 0.01%/99.99% percentiles"),
    "act-outlier": ("observer", "activation ranges over the images, outlier images (> 8x the median's peak) left out"),
    "bias-correction": ("bias", "biases corrected layer by layer: channel means match float (NNCF's full)"),
    "bias-correction-fast": ("bias", "biases corrected from one pass of the uncorrected graph (NNCF's fast)"),
    "cle": ("equalization", "cross-layer equalisation: channel scales moved across every layer -> ReLU -> layer "
                            "pair (exact; Nagel et al. 2019, AIMET's and NNCF's CLE)"),
    "adaround": ("rounding", "each int8 weight rounded up or down to minimise its layer's output error on the "
                             "calibration images (AdaRound, AIMET's recipe; learned layer by layer)"),
    "qat": ("rounding", "quantisation-aware fine-tuning: weights and biases trained through the int8 grids PTQ "
                        "chose (fixed), by distillation from the float network on the calibration pool"),
    "float-sensitive": ("mixed", "the --float-layers K (default 4) int8 tensors with the lowest isolated SQNR "
                                 "kept fp32, with their producer and readers (mixed precision: a latency cost)"),
    "auto": ("island", "same-graph recipes (ranges, squeeze grid, bias correction) measured on held-back images, "
                       "one kept only if worse than ptq on no figure; then, while short of target, the worst-gate "
                       "SE blocks moved to fp32 one at a time, and last qat on the graph chosen, on the same rule"),
}

# The policy every subcommand uses when none is given (`edge-se quantize`, `edge-se export --dtype
# int8`, through quantize.cli.add_quantization): plain ``ptq``, the baseline. A default must
# never be worse than plain PTQ, and no SE-aware policy is better everywhere. bench-quant's numbers
# (results/quant_bench.md; digits-trained models at 64 px, 64 calibration images, 360 held-out
# images, torchao PT2E): the big lever was not a policy but the training recipe: with the
# builder's uniform classifier init MobileNetV3-Small gave 15.8 dB and EfficientNet-B0 6.9 dB under
# every policy; with the recipe's normal(0, 0.01) Linear init (edge_se.train) plain ptq gives 32.7 /
# 32.5 dB (pte / tflite) and 32.6 / 32.6 dB, gate SQNR >= 38 dB, 99.4% top-1 agreement on
# EfficientNet-B0 tflite. gate-coverage (k-center calibration subset over float gate vectors) met
# every target there, but its difference from ptq is -0.4 to +0.6 dB: in some cells it is worse
# than plain PTQ, so it is opt-in (``--policy gate-coverage``), not the default. se-float-mul scored
# highest (+0.2-1.1 dB) but kept the SE weights fp32: MobileNetV3-Small's .pte grew 1.73 -> 3.07 MB
# and ran 0.53 -> 1.16 ms (min of 5x20 runs, one thread, shared machine), far over the 5% latency
# budget. act-percentile lost 0.7-1 dB; NNCF's quantize_pt2e lost 2-12 dB.
DEFAULT_POLICY: tuple[str, ...] = ("ptq",)

ENGINES: tuple[str, ...] = ("torchao", "nncf")  # the first is the default
#: The int8 graph rewrites by default (``quantize.int8_ops``): ``default``, ``none`` or ``NAME[,NAME]``.
DEFAULT_INT8_REWRITES = "default"
"""The PT2E engines that run a policy: torchao's prepare/convert, or NNCF's ``quantize_pt2e``."""


@dataclass(frozen=True)
class PolicyPlan:
    """One resolved recipe.

    Attributes:
        names: the policy names, in the order given.
        selection: ``random`` or ``gate-coverage``.
        act_observer: ``histogram`` (stock), ``minmax``, ``percentile`` or ``outlier``.
        fixed_gate: quantise gates with fixed [0, 1] parameters.
        island: ``none``, ``se-float``, ``se-float-mul`` or ``auto``.
        bias_correction: ``none``, ``full`` or ``fast`` (:mod:`quantize.bias_correction`).
        own_squeeze: SE squeezes quantised on their own observed grid (``se-squeeze-grid``).
        float_sensitive: the costliest int8 tensors kept fp32 (``float-sensitive``,
            :mod:`quantize.mixed_precision`).
        adaround: weights rounded by learned rounding (``adaround``, :mod:`quantize.adaround`).
        qat: weights and biases fine-tuned through the int8 grids (``qat``, :mod:`quantize.qat`).
        equalize: channel ranges equalised across ReLU before annotation (``cle``, :mod:`quantize.equalize`).
    """

    names: tuple[str, ...]
    selection: str = "random"
    act_observer: str = "histogram"
    fixed_gate: bool = False
    island: str = "none"
    bias_correction: str = "none"
    own_squeeze: bool = False
    float_sensitive: bool = False
    adaround: bool = False
    equalize: bool = False
    qat: bool = False


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """Split ``"a,b"`` (or a sequence) into names, checking each.

    Raises:
        EdgeSeError: an unknown or empty name, listing the valid ones.
    """
    parts = policy.split(",") if isinstance(policy, str) else list(policy)
    names = tuple(p.strip() for p in parts)
    for n in names:
        if n not in POLICIES:
            raise EdgeSeError(f"unknown policy {n!r}; valid: {', '.join(POLICIES)} (combine with commas)")
    if not names:
        raise EdgeSeError(f"empty policy; valid: {', '.join(POLICIES)}")
    return names


def resolve_policy(policy: str | Sequence[str]) -> PolicyPlan:
    """Merge policy names into one :class:`PolicyPlan`.

    Raises:
        EdgeSeError: unknown names, or two names that set the same aspect (``se-float,auto``).
    """
    names = parse_policy(policy)
    taken: dict[str, str] = {}
    for n in names:
        aspect = POLICIES[n][0]
        if aspect and aspect in taken and taken[aspect] != n:
            raise EdgeSeError(f"policies {taken[aspect]!r} and {n!r} both set the {aspect}; pick one")
        if aspect:
            taken[aspect] = n
    if "rounding" in taken and taken.get("island") == "auto":
        # auto measures each recipe on its own graph, and tries qat itself last, on the graph it chose
        raise EdgeSeError(f"policies 'auto' and {taken['rounding']!r} do not combine: auto scores graphs with "
                          f"nearest rounding and tries qat itself, last; use {taken['rounding']} with a fixed recipe")
    observer = taken.get("observer", "act-histogram").removeprefix("act-")
    return PolicyPlan(
        names=names,
        selection="gate-coverage" if "selection" in taken else "random",
        act_observer=observer,
        fixed_gate="gate" in taken,
        island=taken.get("island", "none"),
        bias_correction={"bias-correction": "full", "bias-correction-fast": "fast"}.get(taken.get("bias", ""), "none"),
        own_squeeze="squeeze" in taken,
        float_sensitive="mixed" in taken,
        adaround=taken.get("rounding") == "adaround",
        qat=taken.get("rounding") == "qat",
        equalize="equalization" in taken,
    )


#: Tensors kept fp32 by ``float-sensitive`` when ``--float-layers`` is not given (:mod:`quantize.mixed_precision`).
DEFAULT_FLOAT_LAYERS = 4


def float_layers_for(policy: str | Sequence[str], k: int | None) -> int | None:
    """How many tensors ``float-sensitive`` keeps fp32 under ``policy`` (None: the policy is not named).

    Raises:
        EdgeSeError: ``k`` given without policy ``float-sensitive``, or ``k < 1``.
    """
    named = "float-sensitive" in parse_policy(policy)
    if k is not None and not named:
        raise EdgeSeError(f"--float-layers {k} needs --policy float-sensitive (it says how many tensors that policy "
                          "keeps fp32)")
    if not named:
        return None
    k = DEFAULT_FLOAT_LAYERS if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EdgeSeError(f"bad --float-layers {k!r}: need a count of tensors >= 1")
    return k


#: ``auto`` keeps an fp32 island only if its artifact runs within this many percent of plain int8's
#: (measured by ``export.latency_probe``; ``--latency-budget-pct``).
DEFAULT_LATENCY_BUDGET_PCT = 5.0


def check_latency_budget(policy: str | Sequence[str], pct: float | None) -> float | None:
    """``pct`` if it is a valid ``--latency-budget-pct`` for ``policy`` (None stays None).

    Raises:
        EdgeSeError: a budget without policy ``auto``, or a budget <= 0 (or not finite).
    """
    if pct is None:
        return None
    if "auto" not in parse_policy(policy):
        raise EdgeSeError(f"--latency-budget-pct {pct:g} needs --policy auto (it bounds auto's fp32 islands)")
    if not pct > 0 or pct == float("inf"):
        raise EdgeSeError(f"bad --latency-budget-pct {pct:g}: need a percentage > 0 over plain int8's latency")
    return float(pct)
