"""Release gates: limits a sweep's measured figures must meet, so a CI job fails on a regression.

A ``[gates]`` table in the sweep config sets global limits; ``gates`` inside a ``[[models]]``
table overrides them for that model (and its no-SE twin)::

    [gates]
    min_sqnr_db = 25.0            # int8 logits SQNR against float, dB
    min_top1_agreement = 0.99     # int8 top-1 agreement with float (0..1)
    max_p50_ms = { local = 5.0 }  # median latency per device, ms (emulated devices: not timed, ignored)
    max_int8_fp32_ratio = 1.0     # int8 p50 / fp32 p50 of the same model, format and device
    max_artifact_bytes = 5000000  # artifact file size, bytes
    parity = true                 # every artifact's runtime check must have passed

Pure functions of a run's collected rows (:mod:`pipeline.collect`): :func:`check` returns one
:class:`Violation` per (cell, gate) that fails; ``edge-se run`` prints one line each and exits 1.
A gate whose figure was not measured (a failed cell) is a violation too: a missing number never
passes a release. int8 fidelity is the artifact's manifest ``fidelity``: measured by running the
artifact itself in its runtime on held-out images (the artifact is the truth).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from contract.files import write_text
from edge_se.errors import EdgeSeError
from edge_se.registry import NOSE_SUFFIX
from pipeline.collect import RunResults, artifact_rows, bench_rows


@dataclass(frozen=True)
class Gates:
    """The limits; ``None`` (or an empty mapping, or ``parity = false``) leaves a gate off."""

    min_sqnr_db: float | None = None
    min_top1_agreement: float | None = None
    max_p50_ms: tuple[tuple[str, float], ...] = ()  # (device, ms), sorted by device
    max_int8_fp32_ratio: float | None = None
    max_artifact_bytes: int | None = None
    parity: bool = False

    @property
    def active(self) -> bool:
        """Any gate set."""
        return self != Gates()

    def p50_limit(self, device: str) -> float | None:
        """The max_p50_ms of ``device`` (ms), or None where the device has none."""
        return dict(self.max_p50_ms).get(device)

    def to_dict(self) -> dict[str, Any]:
        """As a JSON object (``gates.json``)."""
        return asdict(self) | {"max_p50_ms": dict(self.max_p50_ms)}


_NUMBERS = {"min_sqnr_db": (float, None), "min_top1_agreement": (float, (0.0, 1.0)),
            "max_int8_fp32_ratio": (float, (0.0, math.inf)), "max_artifact_bytes": (int, (1, math.inf))}


def parse_gates(doc: Any, where: str, base: Gates | None = None) -> Gates:
    """Gates from a TOML table; keys not given keep ``base``'s values (the global table).

    Raises:
        EdgeSeError: one line naming ``where`` and the key (``demo.toml: [gates].min_sqnr_db: ...``).
    """
    base = base or Gates()
    if not isinstance(doc, dict):
        raise EdgeSeError(f"{where}: must be a table, got {type(doc).__name__}")
    valid = [f.name for f in fields(Gates)]
    for key in doc:
        if key not in valid:
            raise EdgeSeError(f"{where}.{key}: unknown gate; valid: {', '.join(valid)}")
    changes: dict[str, Any] = {}
    for key, (kind, bounds) in _NUMBERS.items():
        if key not in doc:
            continue
        value = doc[key]
        allowed = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed) or value != value:
            raise EdgeSeError(f"{where}.{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise EdgeSeError(f"{where}.{key}: {value!r} outside {bounds[0]}..{bounds[1]}")
        changes[key] = kind(value)
    if "max_p50_ms" in doc:
        table = doc["max_p50_ms"]
        if not isinstance(table, dict) or not table:
            raise EdgeSeError(f"{where}.max_p50_ms: expected a table of device = ms, e.g. {{ local = 5.0 }}")
        for device, ms in table.items():
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms <= 0:
                raise EdgeSeError(f"{where}.max_p50_ms.{device}: expected a number of ms > 0, got {ms!r}")
        merged = dict(base.max_p50_ms) | {d: float(v) for d, v in table.items()}
        changes["max_p50_ms"] = tuple(sorted(merged.items()))
    if "parity" in doc:
        if not isinstance(doc["parity"], bool):
            raise EdgeSeError(f"{where}.parity: expected true or false, got {doc['parity']!r}")
        changes["parity"] = doc["parity"]
    return replace(base, **changes)


@dataclass(frozen=True)
class Violation:
    """One gate one cell did not meet."""

    cell: str
    gate: str
    measured: float | str | None
    limit: float | str

    def line(self) -> str:
        """``gate min_sqnr_db: export/m/pte/int8/ptq: measured 21.3, limit >= 25``."""
        shown = "not measured" if self.measured is None else _num(self.measured)
        if self.gate.startswith(("min_", "max_")):
            limit = f"{'>=' if self.gate.startswith('min_') else '<='} {_num(self.limit)}"
        else:
            limit = str(self.limit)
        return f"gate {self.gate}: {self.cell}: measured {shown}, limit {limit}"

    def to_dict(self) -> dict[str, Any]:
        """As a JSON object (``gates.json`` in the run directory)."""
        return {"cell": self.cell, "gate": self.gate, "measured": self.measured, "limit": self.limit}


def _num(v: float | str) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _base(model: str) -> str:
    return model.removesuffix(NOSE_SUFFIX)


def check(res: RunResults, gates: Gates, per_model: Mapping[str, Gates] | None = None) -> list[Violation]:
    """Every violated (cell, gate) of the run, in a stable order (cell id, then gate).

    Args:
        res: the run's results (:func:`pipeline.collect.load_cells`).
        gates: the global gates.
        per_model: a model's own gates (already merged over the global ones), by model name.
    """
    per_model = per_model or {}

    def of(model: str) -> Gates:
        return per_model.get(_base(model), gates)

    out: list[Violation] = []
    out += _fidelity(res, of)
    arts = artifact_rows(res)
    for a in arts:
        g = of(a["model"])
        if g.max_artifact_bytes is not None and not (a.get("size_bytes") or math.inf) <= g.max_artifact_bytes:
            out.append(Violation(a["id"], "max_artifact_bytes", a.get("size_bytes"), g.max_artifact_bytes))
        if g.parity and a.get("parity_passed") is not True:
            out.append(Violation(a["id"], "parity", "failed" if a.get("parity_passed") is False else None, "pass"))
    benches = [b for b in bench_rows(res) if b.get("model") is not None]
    fp32 = {(b["model"], b["format"], b["device"]): b.get("p50_ms") for b in benches if b.get("dtype") == "fp32"}
    for b in benches:
        g = of(b["model"])
        cell = "/".join(["bench", b["model"], b["format"], b["dtype"], str(b["policy"]), b["device"]])
        if b["emulated"]:
            continue  # emulated latency is instructions, not time: no latency gate applies
        limit = g.p50_limit(b["device"])
        if limit is not None and not (b.get("p50_ms") or math.inf) <= limit:
            out.append(Violation(cell, "max_p50_ms", b.get("p50_ms"), limit))
        if g.max_int8_fp32_ratio is not None and b.get("dtype") == "int8":
            ref = fp32.get((b["model"], b["format"], b["device"]))
            ratio = b["p50_ms"] / ref if b.get("p50_ms") and ref else None
            if ratio is None or ratio > g.max_int8_fp32_ratio:
                out.append(Violation(cell, "max_int8_fp32_ratio", ratio, g.max_int8_fp32_ratio))
    out += _unmeasured(res, of, {v.cell for v in out})
    return sorted(out, key=lambda v: (v.cell, v.gate))


def _fidelity(res: RunResults, of: Any) -> list[Violation]:
    """min_sqnr_db and min_top1_agreement, from each int8 artifact's manifest ``fidelity``."""
    out = []
    for r in res.stage("export"):
        if r.get("params", {}).get("dtype") != "int8":
            continue
        g = of(r["model"])
        fid = (r.get("manifest") or {}).get("fidelity") or {}
        for gate, key in (("min_sqnr_db", "sqnr_db"), ("min_top1_agreement", "top1_agreement")):
            limit = getattr(g, gate)
            if limit is not None and not (fid.get(key) is not None and fid[key] >= limit):
                out.append(Violation(r["id"], gate, fid.get(key), limit))
    return out


def _unmeasured(res: RunResults, of: Any, flagged: set[str]) -> list[Violation]:
    """Cells that failed or were blocked, where a gate would have judged them: a missing figure fails."""
    out = []
    for cid, entry in res.index.get("cells", {}).items():
        if entry.get("status") not in ("failed", "blocked") or cid in flagged:
            continue
        stage, model = entry.get("stage"), entry.get("model", "")
        g = of(model)
        judged = {
            "export": (g.parity or g.max_artifact_bytes is not None or g.min_sqnr_db is not None
                       or g.min_top1_agreement is not None),
            "bench": bool(g.max_p50_ms) or g.max_int8_fp32_ratio is not None,
        }.get(stage, False)
        if judged:
            out.append(Violation(cid, "measured", None, "a finished cell"))
    return out


VERDICT_FILE = "gates.json"


def write_verdict(run_dir: str | Path, gates: Gates, per_model: Mapping[str, Gates],
                  violations: Sequence[Violation]) -> Path:
    """Write ``gates.json`` (the gates, the violations, ``passed``) into the run directory, atomically."""
    doc = {
        "passed": not violations,
        "gates": {"global": gates.to_dict(), "models": {m: g.to_dict() for m, g in sorted(per_model.items())}},
        "violations": [v.to_dict() for v in violations],
    }
    return write_text(Path(run_dir) / VERDICT_FILE, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def read_verdict(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``gates.json``, or None when the sweep had no gates."""
    path = Path(run_dir) / VERDICT_FILE
    return json.loads(path.read_text()) if path.is_file() else None
