"""The SE ablation study's spec: a TOML config, the variant axes and the cache keys (pure, no torch).

A study is data: one base model, one dataset and recipe, a few seeds, and the axes the SE
literature argues about: the no-SE twin, the reduction ratio r, the placement and the gate.
:func:`variants` turns the base :class:`~edge_se.specs.ArchSpec` into one spec per variant by
pure transformation (``dataclasses.replace``; the base spec is never touched), and
:func:`cell_key` names each (variant, seed) cell by the content that decides its numbers, so a
rerun is served from the cache. Running the cells is :mod:`studies.ablation_run`, the table and
verdicts :mod:`studies.ablation_report`.

Example:
    >>> from edge_se.registry import get_spec
    >>> cfg = StudyConfig(model="mobilenetv3_small_100", ratios=(16,), placements=(), gates=())
    >>> [v.name for v in variants(get_spec(cfg.model, num_classes=10), cfg)]
    ['base', 'no-se', 'r16']
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, cast

from edge_se.errors import EdgeSeError
from edge_se.init import DEFAULT_INIT, LINEAR_INITS
from edge_se.plan import resolve
from edge_se.registry import check_resolution, get_spec
from edge_se.specs import GATES, PLACEMENTS, ArchSpec, Gate, Placement

STUDY_SCHEMA = "edge-se/study-ablation/1"
"""Schema of every JSON line the study writes (bump when a field changes meaning)."""

DATA_SOURCES = ("digits", "textures")
"""Datasets a study may train on (both bundled: no downloads)."""

Axis = Literal["base", "no-se", "ratio", "placement", "gate"]


@dataclass(frozen=True)
class StudyConfig:
    """One ablation study, as ``configs/study_ablation.toml`` declares it.

    Attributes:
        model: registry name of the base network (it must have SE blocks).
        data: ``digits`` or ``textures`` (:mod:`edge_se.data`); the held-out split is its test split.
        resolution: input side in pixels (>= 32).
        epochs: training epochs per cell.
        seeds: seeds 0 .. seeds-1 per variant (initialisation, shuffling, augmentation).
        init: Linear-layer initialisation (:data:`edge_se.init.LINEAR_INITS`).
        lr: peak learning rate (None: the recipe's, :data:`edge_se.train.LR`).
        threads: torch threads while training and in the timed runtimes.
        nose: include the no-SE twin.
        ratios: reduction ratios r = SE input channels / reduced channels (see :func:`with_ratio`).
        placements: SE placements (:data:`edge_se.specs.PLACEMENTS`).
        gates: SE gates (:data:`edge_se.specs.GATES`).
        export: int8 export (both formats) and local latency for one seed per variant.
        formats: export formats.
        export_variants: variant labels to export (None: every variant); a shorter list saves
            time on a slow machine, and the table shows ``-`` for the others.
        calib_size: calibration images for int8.
        fallback_policy: quantisation policy tried when plain PTQ fails for a variant (the
            export check refuses it, or a runtime cannot load it), e.g. ``se-float`` for a softmax
            gate LiteRT's int8 SOFTMAX cannot hold; None: the failure is the result. The table
            marks such a row with the policy that exported.
        bench_runs: timed inferences per repeat; bench_repeats: timed repeats; bench_warmup: untimed.
    """

    model: str = "mobilenetv3_small_100"
    data: str = "digits"
    resolution: int = 32
    epochs: int = 6
    seeds: int = 3
    init: str = DEFAULT_INIT
    lr: float | None = None
    threads: int = 1
    nose: bool = True
    ratios: tuple[float, ...] = (4, 8, 16, 32)
    placements: tuple[str, ...] = PLACEMENTS
    gates: tuple[str, ...] = GATES
    export: bool = True
    formats: tuple[str, ...] = ("pte", "tflite")
    export_variants: tuple[str, ...] | None = None
    calib_size: int = 64
    fallback_policy: str | None = None
    bench_runs: int = 30
    bench_repeats: int = 3
    bench_warmup: int = 5

    def with_(self, **changes: Any) -> StudyConfig:
        """A copy with ``changes`` (the CLI's ``--seeds``/``--no-export``), validated again."""
        return validate(replace(self, **changes), where="command line")


@dataclass(frozen=True)
class Variant:
    """One network of the study: its spec and the axis value that made it.

    Attributes:
        name: short label (``base``, ``no-se``, ``r16``, ``pre``, ``softmax``).
        axis: the axis it varies (``base`` is the family's own design).
        spec: the network (frozen; a transformed copy of the base).
        ratio: nominal r (None without SE); placement, gate: the SE options (None without SE).
        also: other axis labels this spec equals (the base is also ``r4``/``standard``/``hsigmoid``).
    """

    name: str
    axis: Axis
    spec: ArchSpec
    ratio: float | None
    placement: str | None
    gate: str | None
    also: tuple[str, ...] = ()


def _fail(where: str, key: str, message: str) -> EdgeSeError:
    return EdgeSeError(f"{where}: {key}: {message}")


_SECTIONS = {"study": ("model", "data", "resolution", "epochs", "seeds", "init", "lr", "threads"),
             "variants": ("nose", "ratios", "placements", "gates"),
             "export": ("enabled", "formats", "variants", "calib_size", "fallback_policy"),
             "bench": ("runs", "repeats", "warmup")}
_RENAME = {("export", "enabled"): "export", ("export", "variants"): "export_variants",
           ("bench", "runs"): "bench_runs", ("bench", "repeats"): "bench_repeats",
           ("bench", "warmup"): "bench_warmup"}


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML (sections ``[study]``, ``[variants]``, ``[export]``, ``[bench]``).

    Raises:
        EdgeSeError: a missing or unreadable file, an unknown section or key, or a bad value, in
            one line naming the file and the key.
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise EdgeSeError(f"study config {p} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeSeError(f"study config {p} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgeSeError(f"study config {p} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, body in doc.items():
        if section not in _SECTIONS:
            raise _fail(str(p), f"[{section}]", f"unknown section; valid: {', '.join(_SECTIONS)}")
        if not isinstance(body, dict):
            raise _fail(str(p), section, "must be a table [section]")
        for key, value in body.items():
            if key not in _SECTIONS[section]:
                raise _fail(str(p), f"{section}.{key}", f"unknown key; valid: {', '.join(_SECTIONS[section])}")
            name = _RENAME.get((section, key), key)
            values[name] = tuple(value) if isinstance(value, list) else value
    return validate(StudyConfig(**values), where=str(p))


def _int(where: str, key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(where, key, f"need an integer >= {low}, got {value!r}")


def validate(cfg: StudyConfig, *, where: str) -> StudyConfig:
    """Check every field of ``cfg``; return it unchanged.

    Raises:
        EdgeSeError: the first bad field, naming ``where`` (the file) and the key.
    """
    try:
        spec = get_spec(cfg.model) if isinstance(cfg.model, str) else None
    except EdgeSeError as exc:
        raise _fail(where, "study.model", str(exc)) from None
    if spec is None or spec.se is None:
        raise _fail(where, "study.model", f"{cfg.model!r} has no SE blocks; an SE ablation needs a model with SE")
    if cfg.data not in DATA_SOURCES:
        raise _fail(where, "study.data", f"unknown dataset {cfg.data!r}; valid: {', '.join(DATA_SOURCES)}")
    try:
        check_resolution(cfg.resolution)
    except EdgeSeError as exc:
        raise _fail(where, "study.resolution", str(exc)) from None
    for key, low in (("epochs", 1), ("seeds", 1), ("threads", 1), ("calib_size", 1), ("bench_runs", 1),
                     ("bench_repeats", 1), ("bench_warmup", 0)):
        _int(where, key, getattr(cfg, key), low)
    if cfg.init not in LINEAR_INITS:
        raise _fail(where, "study.init", f"unknown init {cfg.init!r}; valid: {', '.join(LINEAR_INITS)}")
    if cfg.lr is not None and (isinstance(cfg.lr, bool) or not isinstance(cfg.lr, (int, float)) or cfg.lr <= 0):
        raise _fail(where, "study.lr", f"need a number > 0, got {cfg.lr!r}")
    for key in ("nose", "export"):
        if not isinstance(getattr(cfg, key), bool):
            raise _fail(where, key, f"need true or false, got {getattr(cfg, key)!r}")
    if cfg.fallback_policy is not None:
        from quantize.policies import parse_policy

        try:
            parse_policy(cfg.fallback_policy)
        except EdgeSeError as exc:
            raise _fail(where, "export.fallback_policy", str(exc)) from None
    if cfg.export_variants is not None and not isinstance(cfg.export_variants, tuple):
        raise _fail(where, "export.variants", f"need a list of variant labels, got {cfg.export_variants!r}")
    for key in ("ratios", "placements", "gates", "formats"):
        if not isinstance(getattr(cfg, key), tuple):
            raise _fail(where, key, f"need a list, got {getattr(cfg, key)!r}")
    for r in cfg.ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0:
            raise _fail(where, "variants.ratios", f"bad reduction ratio {r!r}: need a number r > 0")
    for key, valid in (("placements", PLACEMENTS), ("gates", GATES)):
        for value in getattr(cfg, key):
            if value not in valid:
                raise _fail(where, f"variants.{key}", f"unknown {key[:-1]} {value!r}; valid: {', '.join(valid)}")
    for fmt in cfg.formats:
        if fmt not in ("pte", "tflite"):
            raise _fail(where, "export.formats", f"unknown format {fmt!r}; valid: pte, tflite")
    return cfg


def with_ratio(spec: ArchSpec, r: float) -> ArchSpec:
    """``spec`` with reduction ratio r: reduced = (SE base channels) / r, then the family's rounding.

    edge-se's ``SESpec.ratio`` is reduced / base channels, so r maps to ``ratio = 1 / r``; the
    base (``se_in`` for MobileNetV3 and SE-ResNet, ``block_in`` for EfficientNet) and the divisor
    (8 for MobileNetV3: ``make_divisible``, never below 8) stay the family's. The effective
    per-block r can therefore differ from the nominal one where rounding bites (see
    :func:`effective_ratios`).
    """
    if spec.se is None:
        raise EdgeSeError(f"{spec.name!r} has no SE blocks; a reduction ratio does not apply")
    if r <= 0:
        raise EdgeSeError(f"bad reduction ratio {r!r}: need r > 0")
    return spec.with_(se=replace(spec.se, ratio=1.0 / r))


def with_se_option(spec: ArchSpec, *, placement: str | None = None, gate: str | None = None) -> ArchSpec:
    """``spec`` with another SE placement and/or gate (validated against the spec table's choices)."""
    if spec.se is None:
        raise EdgeSeError(f"{spec.name!r} has no SE blocks; placement/gate do not apply")
    if placement is not None and placement not in PLACEMENTS:
        raise EdgeSeError(f"unknown placement {placement!r}; valid: {', '.join(PLACEMENTS)}")
    if gate is not None and gate not in GATES:
        raise EdgeSeError(f"unknown gate {gate!r}; valid: {', '.join(GATES)}")
    se = replace(spec.se, placement=cast(Placement, placement or spec.se.placement),
                 gate=cast(Gate, gate or spec.se.gate))
    return spec.with_(se=se)


def without_se(spec: ArchSpec) -> ArchSpec:
    """The no-SE twin of ``spec`` (every SE block removed, everything else equal)."""
    return spec.with_(se=None)


def nominal_ratio(spec: ArchSpec) -> float | None:
    """The nominal r = 1 / ``SESpec.ratio`` (None without SE)."""
    return None if spec.se is None else round(1.0 / spec.se.ratio, 6)


def effective_ratios(spec: ArchSpec) -> tuple[float, float] | None:
    """(min, max) over blocks of the resolved r = channels seen / reduced channels (None without SE)."""
    rs = [b.se.reduction for b in resolve(spec) if b.se is not None]
    return (round(min(rs), 3), round(max(rs), 3)) if rs else None


def _label(r: float) -> str:
    return f"r{r:g}"


def variants(base: ArchSpec, cfg: StudyConfig) -> list[Variant]:
    """Every variant of the study, in table order: base, no-SE, ratios, placements, gates.

    A variant whose spec equals an earlier one (r=4 is MobileNetV3's own design) is not trained
    twice: its label goes to that variant's ``also``. Every variant but the base is renamed
    ``{base}_{label}`` (``mobilenetv3_small_100_r16``, ``..._nose``) for its artifacts and logs.
    """
    if base.se is None:
        raise EdgeSeError(f"{base.name!r} has no SE blocks; an SE ablation needs a model with SE")
    candidates: list[tuple[str, Axis, ArchSpec]] = [("base", "base", base)]
    if cfg.nose:
        candidates.append(("no-se", "no-se", without_se(base)))
    candidates += [(_label(r), "ratio", with_ratio(base, r)) for r in cfg.ratios]
    candidates += [(p, "placement", with_se_option(base, placement=p)) for p in cfg.placements]
    candidates += [(g, "gate", with_se_option(base, gate=g)) for g in cfg.gates]
    out: list[Variant] = []
    for name, axis, spec in candidates:
        same = next((v for v in out if v.spec.with_(name=base.name) == spec.with_(name=base.name)), None)
        if same is not None:
            out[out.index(same)] = replace(same, also=(*same.also, name))
            continue
        s = spec.se
        named = spec if axis == "base" else spec.with_(name=f"{base.name}_{name.replace('-', '')}")
        out.append(Variant(name=name, axis=axis, spec=named, ratio=nominal_ratio(spec),
                           placement=None if s is None else s.placement, gate=None if s is None else s.gate))
    return out


def spec_json(spec: ArchSpec) -> dict[str, Any]:
    """The spec as a JSON-ready dict (``notes`` left out: they do not decide a number)."""
    d = asdict(spec)
    d.pop("notes", None)
    return d


def recipe(cfg: StudyConfig) -> dict[str, Any]:
    """The training recipe of every cell: every input besides the spec and seed that decides accuracy."""
    from edge_se import train as tr  # torch-free constants would be nicer; train.py imports torch

    return {"data": cfg.data, "data_split_seed": 0, "resolution": cfg.resolution, "epochs": cfg.epochs,
            "init": cfg.init, "lr": cfg.lr or tr.LR, "batch_size": tr.BATCH_SIZE, "weight_decay": tr.WEIGHT_DECAY,
            "label_smoothing": tr.LABEL_SMOOTHING, "threads": cfg.threads}


def cell_key(kind: str, payload: dict[str, Any]) -> str:
    """A content key: sha256 of ``kind`` and the canonical JSON of ``payload`` (first 16 hex digits)."""
    text = json.dumps({"kind": kind, "schema": STUDY_SCHEMA, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_json(cfg: StudyConfig) -> dict[str, Any]:
    """The resolved config as JSON (printed at start-up and kept in the table's header)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


__all__ = [
    "DATA_SOURCES",
    "STUDY_SCHEMA",
    "StudyConfig",
    "Variant",
    "cell_key",
    "config_json",
    "effective_ratios",
    "load_config",
    "nominal_ratio",
    "recipe",
    "spec_json",
    "validate",
    "variants",
    "with_ratio",
    "with_se_option",
    "without_se",
]
