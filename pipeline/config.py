"""The sweep configuration (``edge-se run CONFIG.toml``): parsed into frozen dataclasses, validated by key.

A malformed config raises :class:`~edge_se.errors.EdgeSeError` naming the file and the key
(``demo.toml: [export].formats[1]: unknown format 'onnx'; valid: pte, tflite``).

Example config::

    [run]
    resolution = 64            # input side for every model (pixels)
    threads = 1                # benchmark threads
    executor = "local"         # local | ray (pipeline.executors); `edge-se run --executor` overrides
    jobs = 2                   # CPU cells at once (default: the usable cores); timing cells run alone

    [data]
    source = "digits"          # digits | a folder of class sub-folders | random (smoke only)
    calib_size = 64

    [[models]]
    name = "mobilenetv3_small_100"
    train_epochs = 30          # 0: random weights; weights = "file.pt" to load instead
    twin = true                # also the same network without SE, trained the same way
    devices = ["local"]        # optional: overrides [bench].devices for this model and its twin

    [quantize]
    policies = ["ptq", "gate-fixed"]
    engine = "torchao"

    [export]
    formats = ["pte", "tflite"]
    dtypes = ["fp32", "int8"]

    [bench]
    devices = ["local", "qemu-aarch64"]
    emulated_dtypes = ["int8"]   # emulation is slow: count instructions of the int8 artifacts only
    runs = 20                  # every other key: a contract.measure.MeasureSpec field (warmup, runs,
    repeats = 2                # min_seconds, max_runs, repeats, cooldown_s, affinity, seed,
                               # unstable_pct; cooldown = cooldown_s); unset ones take its defaults
    profile = false            # true: also a per-operator profile of each run (edge-se bench --profile)

    [baseline]
    devices = ["cpu", "cuda"]  # cuda is recorded as skipped where there is none
    compile_ahead = false      # true: torch.compile in a CPU cell of its own, the cpu timing cell loads its
                               # inductor cache (pays where CPU cells have cores to spare: a Ray cluster)

    [gates]                    # release gates (pipeline.gates, docs/ci.md); `edge-se run` exits 1 on a violation
    min_sqnr_db = 25.0
    max_p50_ms = { local = 5.0 }
    # and per model: gates = { max_artifact_bytes = 3000000 } inside its [[models]] table
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from contract.errors import ContractError
from contract.measure import MeasureSpec
from edge_se.errors import EdgeSeError
from pipeline.gates import Gates, parse_gates

FORMATS = ("pte", "tflite")
DTYPES = ("fp32", "int8")
ENGINES = ("torchao", "nncf")
EXECUTORS = ("local", "ray")  # pipeline.executors
BASELINE_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ModelCfg:
    """One model of the sweep."""

    name: str
    train_epochs: int = 0
    weights: str | None = None
    twin: bool = False
    resolution: int | None = None  # overrides [run].resolution
    quantize: bool = True  # False: fp32 artifacts only (int8 cells are left out)
    devices: tuple[str, ...] | None = None  # overrides [bench].devices for this model (and its twin)
    gates: Mapping[str, Any] | None = field(default=None, compare=False)  # its gates table, over [gates]

    @property
    def label(self) -> str:
        """The model name (the key every result carries)."""
        return self.name


@dataclass(frozen=True)
class RunConfig:
    """A whole sweep: models x dtypes x policies x formats x devices."""

    path: str
    resolution: int = 224
    threads: int = 1
    seed: int = 0
    executor: str = "local"  # [run].executor: how cells are scheduled (pipeline.executors)
    address: str | None = None  # [run].address: the Ray cluster ("auto", HOST:PORT); None starts a local head
    jobs: int | None = None  # [run].jobs: CPU cells at once; None: the usable cores
    data_source: str = "digits"
    calib_size: int = 64
    models: tuple[ModelCfg, ...] = ()
    policies: tuple[str, ...] = ("ptq",)
    engine: str = "torchao"
    formats: tuple[str, ...] = FORMATS
    dtypes: tuple[str, ...] = DTYPES
    devices: tuple[str, ...] = ("local",)
    measure: MeasureSpec = MeasureSpec()  # [bench]'s measurement keys; its threads are [run].threads
    profile: bool = False  # [bench].profile: edge-se bench --profile (per-operator profiles, device_bench.op_profile)
    emulated_dtypes: tuple[str, ...] = DTYPES  # dtypes benchmarked on emulated devices (qemu-*)
    baseline_devices: tuple[str, ...] = ("cpu",)
    # [baseline].compile_ahead: the cpu baseline's torch.compile runs in a ``compile`` CPU cell before it
    compile_ahead: bool = False
    gates: Gates = Gates()  # [gates]: release gates every model meets (pipeline.gates)
    model_gates: Mapping[str, Gates] = field(default_factory=dict)  # a model's own, merged over ``gates``
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class _Reader:
    """Typed access to one TOML table with errors naming ``file: [table].key``."""

    def __init__(self, path: str, table: str, data: Any) -> None:
        self.path, self.table = path, table
        if not isinstance(data, dict):
            raise self.error("", f"must be a table, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def error(self, key: str, msg: str) -> EdgeSeError:
        where = f"[{self.table}]" + (f".{key}" if key else "")
        return EdgeSeError(f"{self.path}: {where}: {msg}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {kinds[0].__name__}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {kinds[0].__name__}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, key: str, default: int, *, allow_zero: bool = False) -> int:
        value = self.get(key, int, default)
        if value < 0 or (value == 0 and not allow_zero):
            raise self.error(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")
        return int(value)

    def choices(
        self, key: str, valid: tuple[str, ...], default: tuple[str, ...], *, allow_empty: bool = False
    ) -> tuple[str, ...]:
        values = self.get(key, list, list(default))
        if not values and not allow_empty:
            raise self.error(key, f"must not be empty; valid: {', '.join(valid)}")
        for i, v in enumerate(values):
            if v not in valid:
                raise self.error(f"{key}[{i}]", f"unknown value {v!r}; valid: {', '.join(valid)}")
        return tuple(values)

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        values = self.get(key, list, list(default))
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                raise self.error(f"{key}[{i}]", f"expected a non-empty string, got {v!r}")
        return tuple(values)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], f"unknown key; valid: {', '.join(sorted(self.used))}")


_TABLES = ("run", "data", "models", "quantize", "export", "bench", "baseline", "gates")


def parse_config(text: str, path: str = "<config>") -> RunConfig:
    """Parse and validate a sweep config from TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EdgeSeError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - set(_TABLES))
    if unknown:
        raise EdgeSeError(f"{path}: unknown table [{unknown[0]}]; valid: {', '.join(_TABLES)}")

    run = _Reader(path, "run", doc.get("run", {}))
    resolution = run.positive("resolution", 224)
    if resolution < 32:
        raise run.error("resolution", f"need >= 32 pixels, got {resolution}")
    threads = run.positive("threads", 1)
    seed = run.positive("seed", 0, allow_zero=True)
    executor = run.get("executor", str, "local")
    if executor not in EXECUTORS:
        raise run.error("executor", f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    address = run.get("address", str, None)
    jobs = run.positive("jobs", 1) if "jobs" in run.data else None
    run.done()

    data = _Reader(path, "data", doc.get("data", {}))
    source = data.get("source", str, "digits")
    calib_size = data.positive("calib_size", 64)
    data.done()

    models_doc = doc.get("models")
    if not isinstance(models_doc, list) or not models_doc:
        raise EdgeSeError(f"{path}: [[models]]: need at least one model table")
    models = tuple(_model(path, i, m) for i, m in enumerate(models_doc))

    quant = _Reader(path, "quantize", doc.get("quantize", {}))
    policies = quant.strings("policies", ("ptq",))
    engine = quant.get("engine", str, "torchao")
    if engine not in ENGINES:
        raise quant.error("engine", f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    quant.done()

    export = _Reader(path, "export", doc.get("export", {}))
    formats = export.choices("formats", FORMATS, FORMATS)
    dtypes = export.choices("dtypes", DTYPES, DTYPES)
    export.done()

    bench = _Reader(path, "bench", doc.get("bench", {}))
    devices = bench.strings("devices", ("local",))
    emulated_dtypes = bench.choices("emulated_dtypes", DTYPES, DTYPES)
    measure = _measure(bench, threads, threads_given="threads" in run.data)
    profile = bench.get("profile", bool, False)
    bench.done()

    base = _Reader(path, "baseline", doc.get("baseline", {}))
    baseline_devices = base.choices("devices", BASELINE_DEVICES, ("cpu",), allow_empty=True)
    compile_ahead = base.get("compile_ahead", bool, False)
    base.done()

    gates = parse_gates(doc.get("gates", {}), f"{path}: [gates]")
    model_gates = {m.name: parse_gates(m.gates, f"{path}: [models[{i}]].gates", gates)
                   for i, m in enumerate(models) if m.gates is not None}

    return RunConfig(
        path=path,
        resolution=resolution,
        threads=measure.threads,
        seed=seed,
        executor=executor,
        address=address,
        jobs=jobs,
        data_source=source,
        calib_size=calib_size,
        models=models,
        policies=policies,
        engine=engine,
        formats=formats,
        dtypes=dtypes,
        devices=devices,
        measure=measure,
        profile=profile,
        emulated_dtypes=emulated_dtypes,
        baseline_devices=baseline_devices,
        compile_ahead=compile_ahead,
        gates=gates,
        model_gates=model_gates,
    )


# The TOML key of a MeasureSpec field where it is not the field's name too (the CLI's --cooldown).
_MEASURE_ALIASES = {"cooldown_s": "cooldown"}
_MEASURE_KINDS: dict[str, type | tuple[type, ...]] = {"int": int, "float": (float, int), "str | None": str}


def _measure(bench: _Reader, threads: int, *, threads_given: bool) -> MeasureSpec:
    """The [bench] table's :class:`MeasureSpec` (unset keys: its defaults; threads: ``[run].threads``)."""
    doc: dict[str, Any] = {"threads": threads}
    for f in fields(MeasureSpec):
        for key in (f.name, _MEASURE_ALIASES.get(f.name)):
            if key is None:
                continue
            value = bench.get(key, _MEASURE_KINDS[str(f.type)], None)
            if value is None:
                continue
            if f.name == "threads" and threads_given and value != threads:
                raise bench.error(key, f"{value} differs from [run].threads = {threads}; give threads once")
            if f.name != "threads" and f.name in doc:
                raise bench.error(key, f"{f.name} given twice ({key} is {f.name})")
            try:
                MeasureSpec(**{f.name: value})
            except ContractError as exc:
                raise bench.error(key, str(exc)) from None
            doc[f.name] = value
    return MeasureSpec.from_dict(doc, where=f"{bench.path}: [bench]")


def _model(path: str, index: int, doc: Any) -> ModelCfg:
    from edge_se.registry import get_spec

    r = _Reader(path, f"models[{index}]", doc)
    name = r.get("name", str, None)
    if name is None:
        raise r.error("name", "missing; every model needs a registry name")
    try:
        spec = get_spec(name)
    except EdgeSeError as exc:
        raise r.error("name", str(exc)) from None
    cfg = ModelCfg(
        name=name,
        train_epochs=r.positive("train_epochs", 0, allow_zero=True),
        weights=r.get("weights", str, None),
        twin=r.get("twin", bool, False),
        resolution=r.get("resolution", int, None),
        quantize=r.get("quantize", bool, True),
        devices=r.strings("devices", ()) or None,
        gates=r.get("gates", dict, None),
    )
    r.done()
    if cfg.twin and spec.se is None:
        raise r.error("twin", f"{name!r} has no SE blocks, so it has no no-SE twin")
    if cfg.weights and cfg.train_epochs:
        raise r.error("weights", "give either weights or train_epochs, not both")
    if cfg.resolution is not None and cfg.resolution < 32:
        raise r.error("resolution", f"need >= 32 pixels, got {cfg.resolution}")
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a sweep config file."""
    p = Path(path)
    if not p.is_file():
        raise EdgeSeError(f"config file {str(p)!r} does not exist")
    cfg = parse_config(p.read_text(encoding="utf-8"), str(p))
    check_devices(cfg)
    return cfg


def check_devices(cfg: RunConfig, inventory: dict[str, Any] | None = None) -> None:
    """Resolve every device the sweep names (URL or inventory name) before any cell runs.

    A bad ``ssh://`` URL or an unknown inventory name is found here, not after an hour of export;
    nothing is contacted (resolving a transport only parses it).

    Raises:
        EdgeSeError: one line naming the config file, the field and the device.
    """
    from device_bench import inventory as inv
    from device_bench.transports import resolve

    devices = inv.load() if inventory is None else inventory
    named = [("bench.devices", d) for d in cfg.devices]
    named += [(f"models[{i}].devices", d) for i, m in enumerate(cfg.models) for d in (m.devices or ())]
    for where, device in named:
        try:
            resolve(device, devices)
        except EdgeSeError as exc:
            raise EdgeSeError(f"{cfg.path}: {where}: {exc}") from None
