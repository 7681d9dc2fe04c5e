"""A latency table for one (device, format, dtype, threads): measured kernels and the predictor built on them.

Pure: numpy and scipy, no torch, no I/O but :func:`save`/:func:`load`. What it holds:

- ``entries``: kernel key (:attr:`edge_se.latency_key.Kernel.key`) -> the value measured on a probe
  of that kernel alone (p50 ms, or instructions per inference on an emulated device).
- ``coefficients``: per kernel group (``stem``, ``block``, ``head``), non-negative weights of
  :data:`edge_se.latency_key.FEATURES`, fitted to the entries by non-negative least squares on the
  *relative* error (every row divided by its measured value, so a 0.05 ms kernel counts as much as a
  5 ms one). A kernel the table has not measured is predicted from them.
- ``assembly``: ``network = scale * sum(kernels) + per_weight_mb * weight MB + per_streamed_mb *
  streamed MB + offset``, fitted (non-negative, relative error) on whole networks measured when the
  table was built: the part of a network's latency that is not any one kernel's. The weight terms
  are what a network pays and its probes do not: a probe, timed alone in a loop, runs with its
  weights in cache; a network touches all of its weights (4 bytes a parameter in fp32, 1 in int8)
  once per inference. When its working set (weights and the largest kernel's activations,
  :func:`memory_mb`) exceeds the device's last-level cache (:attr:`LatencyTable.llc_bytes`, read
  on the device), a cyclic sweep over it evicts every weight before its next use, and the weights
  come from memory on every inference: its streamed MB are the weight MB then, 0 otherwise (and
  0 for every network when the cache size is unknown). Fitted values are in results/bench_scale.md.

A kernel's prediction is its entry when there is one (exact on the table's own entries), else the
group's regression; a network's is the assembly of its kernels'. nn-Meter predicts kernels with
random forests per kernel type; with the few dozen probes a table measures here, a linear model
in MACs by operator class and elements written extrapolates to unseen widths without overfitting.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.files import write_text
from edge_se.accounting import count
from edge_se.errors import EdgeSeError
from edge_se.latency_key import FEATURES, Kernel, kernel_features, kernels
from edge_se.specs import ArchSpec

SCHEMA = "edge-se/latency-table/1"

GROUPS: dict[str, tuple[str, ...]] = {
    "stem": ("macs_dense", "elems", "one"),
    "block": FEATURES,
    "head": ("macs_dense", "elems", "one"),
}
"""The features each kernel group is regressed on (stem and head have few entries: fewer features)."""


ASSEMBLY = ("scale", "per_weight_mb", "per_streamed_mb", "offset")
"""The assembly's coefficients, in order: per unit of kernel sum, per MB of weights, per MB of
weights streamed from memory (:func:`memory_mb`), constant."""

WEIGHT_BYTES = {"fp32": 4, "int8": 1}
"""Bytes a parameter takes in an artifact of each dtype (int8: the int32 biases and per-channel
scales are under 1% of a network's parameters and are left out)."""


def _value_bytes(dtype: str) -> int:
    """Bytes of one weight or activation value in a ``dtype`` artifact; an unknown dtype is one line naming it."""
    if dtype not in WEIGHT_BYTES:
        raise EdgeSeError(f"--dtype {dtype!r}: latency tables cover {', '.join(WEIGHT_BYTES)}")
    return WEIGHT_BYTES[dtype]


def weight_mb(spec: ArchSpec, dtype: str) -> float:
    """The network's weights in MB (10**6 bytes) as a ``dtype`` artifact holds them (:data:`WEIGHT_BYTES`)."""
    return count(spec).params * _value_bytes(dtype) / 1e6


def activation_mb(spec: ArchSpec, resolution: int, dtype: str) -> float:
    """The largest kernel's activations in MB: its input and every element it writes (:data:`WEIGHT_BYTES` each).

    A proxy for the activation memory live at once: the runtimes plan activation buffers for reuse,
    so the footprint follows the largest kernel, not the sum over the network.
    """
    size = _value_bytes(dtype)
    peak = max(k.input_channels * k.size * k.size + kernel_features(k)["elems"] for k in kernels(spec, resolution))
    return peak * size / 1e6


def memory_mb(spec: ArchSpec, resolution: int, dtype: str, llc_bytes: int | None) -> dict[str, float]:
    """A network's memory figures in MB, each walk of the spec made once.

    ``weight_mb`` (:func:`weight_mb`); ``working_set_mb``, what one inference touches: the weights
    and :func:`activation_mb`; ``streamed_mb``, the weight MB read from memory on every inference:
    all of them when the working set exceeds the last-level cache (``llc_bytes``), else 0, and 0
    when the cache size is unknown (None or 0).
    """
    weights = weight_mb(spec, dtype)
    working = weights + activation_mb(spec, resolution, dtype)
    streamed = weights if llc_bytes and working * 1e6 > llc_bytes else 0.0
    return {"weight_mb": weights, "working_set_mb": working, "streamed_mb": streamed}


def group_of(kind: str) -> str:
    """The regression group of a kernel kind: ``stem``, ``head`` or ``block`` (mbconv, bottleneck)."""
    return kind if kind in ("stem", "head") else "block"


@dataclass(frozen=True)
class Entry:
    """One measured kernel: its value (``unit``), kind, features and how stable its timing was."""

    value: float
    kind: str
    features: Mapping[str, float]
    stability: str | None = None
    cv_pct: float | None = None


@dataclass(frozen=True)
class LatencyTable:
    """Measured kernels of one (device, format, dtype, threads) and the fitted predictor.

    Attributes:
        device: the device name as given to ``edge-se bench`` (``local``, an inventory name, ...).
        format: ``pte`` or ``tflite``.
        dtype: ``fp32`` or ``int8``.
        threads: runtime threads the values were measured with.
        family: the model family whose shapes the table covers (``efficientnet``).
        unit: ``ms`` (p50 latency) or ``instructions`` (per inference, emulated devices).
        entries: kernel key -> :class:`Entry`.
        coefficients: group -> feature -> weight (``unit`` per feature unit).
        assembly: ``(scale, per_weight_mb, per_streamed_mb, offset)`` (:data:`ASSEMBLY`) from the sum
            of a network's kernels, its weight MB and its streamed weight MB (:func:`memory_mb`) to the
            network.
        networks: the whole networks the assembly was fitted on (name, resolution, measured, kernel
            sum, weight MB, working set MB, streamed MB).
        llc_bytes: the device's last-level cache in bytes (None: unknown; no weights count as streamed).
        meta: provenance: CPU and flags, versions, measurement spec, runner, commit, build set, time.
    """

    device: str
    format: str
    dtype: str
    threads: int
    family: str
    unit: str
    entries: Mapping[str, Entry]
    coefficients: Mapping[str, Mapping[str, float]]
    assembly: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    networks: Sequence[Mapping[str, Any]] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    llc_bytes: int | None = None

    def predict_kernel(self, k: Kernel) -> float:
        """The kernel's value: its measured entry when the table has one, else the group's regression."""
        entry = self.entries.get(k.key)
        if entry is not None:
            return entry.value
        group = group_of(k.kind)
        coef = self.coefficients.get(group)
        if not coef:
            raise EdgeSeError(f"latency table {self.describe()} has no {group} kernels to predict {k.key} from")
        f = kernel_features(k)
        return float(sum(w * f[name] for name, w in coef.items()))

    def kernel_sum(self, ks: Iterable[Kernel]) -> tuple[float, int, int]:
        """Sum of the kernels' values, how many kernels, and how many of them were table entries."""
        total, n, exact = 0.0, 0, 0
        for k in ks:
            total += self.predict_kernel(k)
            n += 1
            exact += k.key in self.entries
        return total, n, exact

    def predict(self, spec: ArchSpec, resolution: int | None = None) -> float:
        """Predicted value (``unit``) of the whole network ``spec`` at ``resolution``, without building it."""
        if spec.family != self.family:
            raise EdgeSeError(f"latency table {self.describe()} covers the {self.family} family, not {spec.family} "
                              f"({spec.name}); build one with `edge-se latency-table --family {spec.family}`")
        res = spec.resolution if resolution is None else resolution
        total, _, _ = self.kernel_sum(kernels(spec, res))
        mem = self.memory(spec, res)
        return self.assemble(total, mem["weight_mb"], mem["streamed_mb"])

    def memory(self, spec: ArchSpec, resolution: int) -> dict[str, float]:
        """:func:`memory_mb` of ``spec`` at ``resolution`` in this table's dtype, on its device's cache."""
        return memory_mb(spec, resolution, self.dtype, self.llc_bytes)

    def assemble(self, kernel_sum: float, weights_mb: float, streamed: float = 0.0) -> float:
        """A network's value from its kernel sum, weight MB and streamed MB (:attr:`assembly`), never below 0."""
        scale, per_mb, per_streamed, offset = self.assembly
        return max(scale * kernel_sum + per_mb * weights_mb + per_streamed * streamed + offset, 0.0)

    def predict_own(self, network: Mapping[str, Any]) -> float:
        """The prediction of one of :attr:`networks` (from its recorded kernel sum and MB figures)."""
        return self.assemble(float(network["kernel_sum"]), float(network.get("weight_mb", 0.0)),
                             float(network.get("streamed_mb", 0.0)))

    def assembly_dict(self) -> dict[str, float]:
        """:attr:`assembly` by name, as the table file holds it."""
        return dict(zip(ASSEMBLY, self.assembly, strict=True))

    def describe(self) -> str:
        """``device/format/dtype/threads`` for messages."""
        return f"{self.device}/{self.format}/{self.dtype}/{self.threads}t"


def _nnls_relative(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights minimising sum(((rows @ w) - y) / y)^2."""
    from scipy.optimize import nnls

    a = rows / y[:, None]
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0  # a feature no sample has: weight 0 either way
    w, _ = nnls(a / norms, np.ones_like(y))
    return w / norms


def fit_coefficients(entries: Mapping[str, Entry]) -> dict[str, dict[str, float]]:
    """Per group, the non-negative feature weights that best predict its entries (relative error)."""
    out: dict[str, dict[str, float]] = {}
    for group, names in GROUPS.items():
        members = [e for e in entries.values() if group_of(e.kind) == group and e.value > 0]
        if not members:
            continue
        rows = np.array([[e.features[n] for n in names] for e in members], dtype=np.float64)
        y = np.array([e.value for e in members], dtype=np.float64)
        out[group] = {n: float(w) for n, w in zip(names, _nnls_relative(rows, y), strict=True)}
    return out


def fit_assembly(networks: Sequence[Mapping[str, Any]]) -> tuple[float, float, float, float]:
    """The :data:`ASSEMBLY` coefficients fitted to whole networks (scale, weight MB, streamed MB, constant).

    Non-negative least squares on the relative error over whole networks. With fewer networks than
    coefficients the later ones stay 0: one network gives the ratio alone (the table then predicts
    it exactly), two the kernel and weight terms; none gives ``(1, 0, 0, 0)``. A term no network
    has (no network streams its weights) is 0 and does not count against that limit.
    """
    n_coef = len(ASSEMBLY)
    pts = [n for n in networks if n["measured"] > 0]
    if not pts:
        return 1.0, 0.0, 0.0, 0.0
    m = np.array([float(n["measured"]) for n in pts])
    full = np.array([[float(n["kernel_sum"]), float(n.get("weight_mb", 0.0)), float(n.get("streamed_mb", 0.0)), 1.0]
                     for n in pts])
    # A term no network has is 0 and takes no place; the rest in order, as many as there are networks.
    used = [j for j in range(n_coef) if j == 0 or np.any(full[:, j] != 0)][:len(pts)]
    w = _nnls_relative(full[:, used], m)
    if w[0] <= 0:  # a fit without the kernels is no assembly: keep the ratio
        return float(np.mean(m / full[:, 0])), 0.0, 0.0, 0.0
    out = [0.0] * n_coef
    for j, x in zip(used, w, strict=True):
        out[j] = float(x)
    return out[0], out[1], out[2], out[3]


def build_table(*, device: str, fmt: str, dtype: str, threads: int, family: str, unit: str,
                measured: Sequence[tuple[Kernel, float, Mapping[str, Any]]],
                networks: Sequence[tuple[ArchSpec, int, float]], meta: Mapping[str, Any],
                llc_bytes: int | None = None) -> LatencyTable:
    """A table from measured kernels and whole networks.

    Args:
        device: the device the values were measured on.
        fmt: ``pte`` or ``tflite``.
        dtype: ``fp32`` or ``int8``.
        threads: runtime threads.
        family: the model family the build set came from.
        unit: ``ms`` or ``instructions``.
        measured: ``(kernel, value, bench record)`` per probe (the record's ``stability``/``cv_pct`` are kept).
        networks: ``(spec, resolution, measured value)`` of whole networks, for the assembly fit.
        meta: provenance recorded as is.
        llc_bytes: the device's last-level cache in bytes (None: unknown), for :func:`memory_mb`.
    """
    entries: dict[str, Entry] = {}
    for k, value, rec in measured:
        if not (value > 0 and math.isfinite(value)):
            raise EdgeSeError(f"kernel {k.key}: measured value {value!r} is not a positive number")
        entries[k.key] = Entry(value=float(value), kind=k.kind, features=kernel_features(k),
                               stability=rec.get("stability"), cv_pct=rec.get("cv_pct"))
    coefficients = fit_coefficients(entries)
    partial = LatencyTable(device, fmt, dtype, threads, family, unit, entries, coefficients)
    nets = []
    for spec, res, value in networks:
        total, n, exact = partial.kernel_sum(kernels(spec, res))
        nets.append({"name": spec.name, "resolution": res, "measured": float(value), "kernel_sum": total,
                     **memory_mb(spec, res, dtype, llc_bytes), "kernels": n, "exact": exact})
    return LatencyTable(device, fmt, dtype, threads, family, unit, entries, coefficients,
                        assembly=fit_assembly(nets), networks=nets, meta=dict(meta), llc_bytes=llc_bytes)


def to_json(table: LatencyTable) -> dict[str, Any]:
    """The table as its JSON document (``edge-se/latency-table/1``)."""
    return {
        "schema": SCHEMA,
        "device": table.device,
        "format": table.format,
        "dtype": table.dtype,
        "threads": table.threads,
        "family": table.family,
        "unit": table.unit,
        "llc_bytes": table.llc_bytes,
        "assembly": table.assembly_dict(),
        "coefficients": {g: dict(c) for g, c in table.coefficients.items()},
        "networks": [dict(n) for n in table.networks],
        "meta": dict(table.meta),
        "entries": {key: {"value": e.value, "kind": e.kind, "features": dict(e.features),
                          "stability": e.stability, "cv_pct": e.cv_pct} for key, e in sorted(table.entries.items())},
    }


def from_json(doc: Mapping[str, Any], *, where: str = "latency table") -> LatencyTable:
    """Parse a table document; a missing or wrong field is one line naming it."""
    if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, Mapping) else type(doc).__name__
        raise EdgeSeError(f"{where}: not a latency table (schema {got!r}, expected {SCHEMA!r})")
    try:
        entries = {
            key: Entry(value=float(e["value"]), kind=str(e["kind"]),
                       features={n: float(e["features"][n]) for n in FEATURES},
                       stability=e.get("stability"), cv_pct=e.get("cv_pct"))
            for key, e in doc["entries"].items()
        }
        asm = doc["assembly"]
        assembly = (float(asm["scale"]), float(asm.get("per_weight_mb", 0.0)),  # earlier files lack the MB terms
                    float(asm.get("per_streamed_mb", 0.0)), float(asm["offset"]))
        llc = doc.get("llc_bytes")
        coefficients = {str(g): {str(n): float(w) for n, w in c.items()} for g, c in doc["coefficients"].items()}
        for g, c in coefficients.items():
            unknown = set(c) - set(GROUPS.get(g, ()))
            if g not in GROUPS or unknown:
                raise EdgeSeError(f"{where}: coefficients: unknown group {g!r} or features {sorted(unknown)}")
        return LatencyTable(
            device=str(doc["device"]), format=str(doc["format"]), dtype=str(doc["dtype"]),
            threads=int(doc["threads"]), family=str(doc["family"]), unit=str(doc["unit"]), entries=entries,
            coefficients=coefficients, assembly=assembly, networks=list(doc.get("networks", [])),
            meta=dict(doc.get("meta", {})), llc_bytes=None if llc is None else int(llc),
        )
    except KeyError as exc:
        raise EdgeSeError(f"{where}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise EdgeSeError(f"{where}: malformed field ({exc})") from None


def save(table: LatencyTable, path: str | os.PathLike[str]) -> None:
    """Write the table atomically (temp file + rename)."""
    write_text(path, json.dumps(to_json(table), indent=1, sort_keys=True) + "\n")


def load(path: str | os.PathLike[str]) -> LatencyTable:
    """Read a table file; a missing, unreadable or malformed file is one line naming it."""
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise EdgeSeError(f"{path}: latency table not found (build it with `edge-se latency-table`)") from None
    except OSError as exc:
        raise EdgeSeError(f"{path}: cannot read the latency table ({exc.strerror})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgeSeError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return from_json(doc, where=str(path))


__all__ = ["ASSEMBLY", "GROUPS", "SCHEMA", "WEIGHT_BYTES", "Entry", "LatencyTable", "activation_mb", "build_table",
           "fit_assembly", "fit_coefficients", "from_json", "group_of", "load", "memory_mb", "save", "to_json",
           "weight_mb"]
