"""Expand a :class:`RunConfig` into cells: one unit of cached work each, with its dependencies.

Pure: no I/O. A cell's identity (``id``) is readable (``export/mobilenetv3_small_100/pte/int8/ptq``);
its cache key is computed at run time from its inputs and its dependencies' outputs
(:mod:`pipeline.store`), so a changed weights file re-runs everything downstream of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from device_bench.transports import emulated
from edge_se.registry import NOSE_SUFFIX
from pipeline.config import ModelCfg, RunConfig

STAGES = ("info", "train", "export", "compile", "bench", "baseline")

#: The baseline devices whose ``torch.compile`` may run in a CPU cell of its own before the timing cell
#: (``[baseline] compile_ahead``): compiling needs no quiet machine, timing does (a CUDA baseline
#: compiles on its GPU, in its own cell). It pays only where CPU cells have cores to spare. In
#: ``make demo`` on 2 cores the four cold compiles took 60-121 s each beside other cells (inductor
#: compiles its kernels on every core) against 45-65 s alone, so the CPU phase grew by 201 s while
#: the timing phase shrank by 145 s: off by default.
COMPILED_AHEAD = ("cpu",)

# A no-SE twin has no SE blocks for an SE-aware policy to act on: it gets plain PTQ only.
TWIN_POLICY = "ptq"


@dataclass(frozen=True)
class Cell:
    """One unit of work.

    Attributes:
        stage: one of :data:`STAGES`.
        model: registry name (twins end in ``_nose``).
        params: the stage's own inputs (format, dtype, policy, device, ...), JSON-ready.
        deps: ids of the cells whose outputs this one reads.
    """

    stage: str
    model: str
    params: tuple[tuple[str, object], ...] = ()
    deps: tuple[str, ...] = ()
    meta: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        """Readable identity: ``stage/model/value/value...``."""
        return "/".join([self.stage, self.model, *(str(v) for _, v in self.params)])

    def param(self, key: str) -> object:
        """One of the stage's own inputs."""
        return dict(self.params)[key]


def _variants(m: ModelCfg) -> list[str]:
    return [m.name, m.name + NOSE_SUFFIX] if m.twin else [m.name]


def plan_cells(cfg: RunConfig) -> list[Cell]:
    """Every cell of the sweep, dependencies before dependants."""
    cells: list[Cell] = []
    for m in cfg.models:
        resolution = m.resolution or cfg.resolution
        for name in _variants(m):
            twin = name.endswith(NOSE_SUFFIX)
            common = {"resolution": resolution, "base": m.name, "twin": twin}
            cells.append(Cell("info", name, (("resolution", resolution),), meta=common))
            weight_deps: tuple[str, ...] = ()
            if m.train_epochs:
                train = Cell("train", name, (("epochs", m.train_epochs), ("resolution", resolution)), meta=common)
                cells.append(train)
                weight_deps = (train.id,)
            policies = (TWIN_POLICY,) if twin else cfg.policies
            # int8 is quantised once, inside its export cell: the artifact's fidelity is measured on
            # the artifact itself (its manifest's `fidelity`), so no separate quantize cell runs.
            int8 = "int8" in cfg.dtypes and m.quantize
            exports: list[Cell] = []
            for fmt in cfg.formats:
                if "fp32" in cfg.dtypes:
                    exports.append(
                        Cell(
                            "export",
                            name,
                            (("format", fmt), ("dtype", "fp32"), ("policy", "-")),
                            weight_deps,
                            meta=common,
                        )
                    )
                if int8:
                    for policy in policies:
                        exports.append(
                            Cell(
                                "export",
                                name,
                                (("format", fmt), ("dtype", "int8"), ("policy", policy)),
                                weight_deps,
                                meta=common,
                            )
                        )
            cells += exports
            for exp in exports:
                for device in m.devices or cfg.devices:
                    if emulated(device) and exp.param("dtype") not in cfg.emulated_dtypes:
                        continue
                    cells.append(Cell("bench", name, exp.params + (("device", device),), (exp.id,), meta=common))
            for device in cfg.baseline_devices:
                compile_deps: tuple[str, ...] = ()
                if cfg.compile_ahead and device in COMPILED_AHEAD:
                    # torch.compile's first call (40-70 s here) fills an inductor cache in a CPU cell
                    # that shares the machine; the timing cell loads it and only times
                    warm = Cell("compile", name, (("device", device),), meta=common)
                    cells.append(warm)
                    compile_deps = (warm.id,)
                cells.append(Cell("baseline", name, (("device", device),), compile_deps, meta=common))
    order = {s: i for i, s in enumerate(STAGES)}
    ids = [c.id for c in cells]
    if len(ids) != len(set(ids)):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"the sweep lists cell {dup!r} twice (a model repeated in [[models]]?)")
    return sorted(cells, key=lambda c: order[c.stage])
