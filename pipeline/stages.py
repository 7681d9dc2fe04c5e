"""Run one cell of a sweep through the stage's own CLI contract, in a subprocess.

Each stage is the ``edge-se`` subcommand a user would type (``train``, ``export``,
``bench``, ``bench-torch``): the sweep exercises exactly the contracts users rely on, and a crash in
one cell (a converter abort, say) cannot take the whole run down. ``info`` is computed in-process.
Every path a result records is relative to its cell directory, which is renamed into the cache
when the cell finishes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from contract.files import sha256_file
from edge_se.accounting import count
from edge_se.registry import get_spec
from pipeline.cells import Cell
from pipeline.config import RunConfig

CELL_TIMEOUT_S = 3600.0  # a whole training run or a QEMU benchmark fits well inside an hour
_TOOLS = ("torch", "executorch", "torchao", "litert-torch", "ai-edge-litert", "nncf", "edge-se")


class StageError(RuntimeError):
    """A cell failed; the message is one line naming the command and its last error line."""


@dataclass(frozen=True)
class Dep:
    """A finished dependency: its directory in the cache and its result."""

    dir: Path
    result: Mapping[str, Any]


# The packages whose code computes each stage: their source digest is part of the stage's cache key,
# so a changed exporter re-runs the exports (and what depends on them) but not the training.
_STAGE_CODE = {
    "train": ("edge_se",),
    "export": ("edge_se", "quantize", "export"),
    "bench": ("contract", "device_bench"),  # contract: the measurement spec and the record the runner writes
    "compile": ("contract", "edge_se", "device_bench"),
    "baseline": ("contract", "edge_se", "device_bench"),
}

#: The inductor cache a ``compile`` cell leaves in its directory (``TORCHINDUCTOR_CACHE_DIR``).
INDUCTOR_CACHE = "inductor_cache"
_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_digest(packages: tuple[str, ...]) -> str:
    """sha256 (16 hex digits) of the Python/C++ sources of ``packages`` (paths and bytes)."""
    h = hashlib.sha256()
    for pkg in packages:
        for path in sorted((_ROOT / pkg).rglob("*")):
            if path.suffix in (".py", ".cpp", ".h", ".c") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(_ROOT)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def tool_versions() -> dict[str, str]:
    """Installed versions of every tool whose output a cell depends on (part of every cache key)."""
    out = {}
    for name in _TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def key_inputs(cell: Cell, cfg: RunConfig, deps: Mapping[str, Dep], versions: Mapping[str, str]) -> dict[str, Any]:
    """Everything a cell's output depends on: the cache key is the hash of this."""
    inputs: dict[str, Any] = {"stage": cell.stage, "model": cell.model, "params": dict(cell.params)}
    inputs["deps"] = {i: d.result.get("output_sha256") or d.result.get("key") for i, d in sorted(deps.items())}
    if cell.stage in ("train", "export"):
        inputs |= {"data": cfg.data_source, "calib_size": cfg.calib_size, "seed": cfg.seed, "engine": cfg.engine}
        inputs["resolution"] = cell.meta["resolution"]
    if cell.stage in ("bench", "baseline"):
        inputs |= {"measure": cfg.measure.to_dict(), "resolution": cell.meta["resolution"]}
    if cell.stage == "compile":  # what the compiled kernels depend on (not the number of timed runs)
        inputs |= {"threads": cfg.measure.threads, "seed": cfg.measure.seed, "resolution": cell.meta["resolution"]}
    if cell.stage == "bench" and cfg.profile:  # only when on: cells cached without it keep their keys
        inputs["profile"] = True
    if cell.stage != "info":
        inputs["versions"] = dict(versions)
        inputs["code"] = code_digest(_STAGE_CODE[cell.stage])
    return inputs


def _cli(args: Sequence[str], workdir: Path, *, timeout: float = CELL_TIMEOUT_S,
         env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Run ``edge-se ARGS`` (``env``: extra environment) with logs to ``workdir/log.txt``; return its JSON lines."""
    cmd = [sys.executable, "-m", "edge_se.cli", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(workdir / "log.txt", "ab") as log:
        log.write(("$ edge-se " + " ".join(args) + "\n").encode())
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise StageError(f"edge-se {args[0]} timed out after {timeout:.0f} s") from None
        log.write(proc.stdout)
    if proc.returncode != 0:
        lines = (workdir / "log.txt").read_text(errors="replace").strip().splitlines()
        # The CLI's own one-line error ("edge-se export: error: ...") first, then any error line.
        errors = [ln for ln in lines if ": error:" in ln] or [ln for ln in lines if "error" in ln.lower()]
        errors = errors or lines or ["(no output)"]
        raise StageError(f"edge-se {args[0]} exited {proc.returncode}: {errors[-1][:400]}")
    records = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines results file (none if the stage wrote no file)."""
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def _weights_arg(deps: Mapping[str, Dep], cell: Cell) -> list[str]:
    for dep_id, dep in deps.items():
        if dep_id.startswith("train/"):
            return ["--weights", str(dep.dir / dep.result["weights"])]
    return []


def _relative(path: str | Path, workdir: Path) -> str:
    """``path`` (absolute, or relative to the current directory as the CLI printed it) relative to ``workdir``."""
    return str(Path(path).resolve().relative_to(workdir.resolve()))


def run_cell(cell: Cell, cfg: RunConfig, deps: Mapping[str, Dep], workdir: Path) -> dict[str, Any]:
    """Compute one cell into ``workdir``; return its result (JSON-ready)."""
    t0 = time.perf_counter()
    result = _STAGES[cell.stage](cell, cfg, deps, workdir)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result |= {"stage": cell.stage, "model": cell.model, "params": dict(cell.params), "meta": cell.meta}
    return result


def _info(cell: Cell, cfg: RunConfig, deps: Mapping[str, Dep], workdir: Path) -> dict[str, Any]:
    spec = get_spec(cell.model)
    acc = count(spec, int(cell.param("resolution")))  # type: ignore[call-overload]
    return {
        "accounting": acc.summary(),
        "phi": spec.phi,
        "family": spec.family,
        "width": spec.width,
        "depth": spec.depth,
    }


def _train(cell: Cell, cfg: RunConfig, deps: Mapping[str, Dep], workdir: Path) -> dict[str, Any]:
    out = workdir / "weights.pt"
    recs = _cli(
        [
            "train",
            cell.model,
            "--data",
            cfg.data_source,
            "--epochs",
            str(cell.param("epochs")),
            "--resolution",
            str(cell.param("resolution")),
            "--seed",
            str(cfg.seed),
            "--out",
            str(out),
        ],
        workdir,
    )
    if not out.is_file():
        raise StageError(f"edge-se train printed success but wrote no {out.name}")
    return {"weights": out.name, "output_sha256": sha256_file(out), "train": recs[-1] if recs else {}}


def _export(cell: Cell, cfg: RunConfig, deps: Mapping[str, Dep], workdir: Path) -> dict[str, Any]:
    args = [
        "export",
        cell.model,
        "--format",
        str(cell.param("format")),
        "--dtype",
        str(cell.param("dtype")),
        "--out",
        str(workdir),
        "--resolution",
        str(cell.meta["resolution"]),
        "--calib",
        cfg.data_source,
        "--calib-size",
        str(cfg.calib_size),
        "--seed",
        str(cfg.seed),
        *_weights_arg(deps, cell),
    ]
    if cell.param("dtype") == "int8":
        args += ["--policy", str(cell.param("policy")), "--engine", cfg.engine]
    recs = _cli(args, workdir)
    if len(recs) != 1:
        raise StageError(f"edge-se export printed {len(recs)} artifact lines, expected 1")
    rec = recs[0]
    artifact = _relative(rec["path"], workdir)
    manifest = _relative(rec["manifest"], workdir)
    doc = json.loads((workdir / manifest).read_text())
    return {
        "artifact": artifact,
        "manifest_file": manifest,
        "export": rec,
        "manifest": doc,
        # int8: the artifact's own fidelity (measured in its runtime on held-out images) and its gates
        "metrics": doc.get("fidelity"),
        "output_sha256": sha256_file(workdir / artifact),
    }


def _bench(cell: Cell, cfg: RunConfig, deps: Mapping[str, Dep], workdir: Path) -> dict[str, Any]:
    (dep,) = deps.values()
    artifact = dep.dir / dep.result["artifact"]
    out = workdir / "bench.jsonl"
    _cli(
        [
            "bench",
            str(artifact),
            "--device",
            str(cell.param("device")),
            *cfg.measure.to_argv(),
            *(["--profile"] if cfg.profile else []),
            "--out",
            str(out),
        ],
        workdir,
    )
    lines = _read_jsonl(out)
    if not lines:
        raise StageError("edge-se bench wrote no result line")
    if not cfg.profile:
        return {"bench": lines[-1]}
    profiles = _read_jsonl(Path(lines[-1]["profile_file"]))
    return {"bench": lines[-1], "profile": profiles[-1] if profiles else None}


def _torch_args(cell: Cell, cfg: RunConfig) -> list[str]:
    return ["bench-torch", cell.model, "--torch-device", str(cell.param("device")),
            "--resolution", str(cell.meta["resolution"]), *cfg.measure.to_argv()]


def _compile(cell: Cell, cfg: RunConfig, deps: Mapping[str, Dep], workdir: Path) -> dict[str, Any]:
    """``torch.compile`` the baseline's configurations into an inductor cache in this cell's directory."""
    cache = workdir / INDUCTOR_CACHE
    cache.mkdir()
    warm = _cli([*_torch_args(cell, cfg), "--warm-only"], workdir, env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
    return {"warm": warm, "inductor_cache": INDUCTOR_CACHE,
            "inductor_cache_bytes": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())}


def _baseline(cell: Cell, cfg: RunConfig, deps: Mapping[str, Dep], workdir: Path) -> dict[str, Any]:
    out = workdir / "baseline.jsonl"
    # the sweep's one measurement spec, as for its bench cells; the cpu cell times the CPU,
    # so a cuda cell on a machine without CUDA records a skip instead of timing it again
    args = [*_torch_args(cell, cfg), "--without-cuda", "skip", "--out", str(out)]
    warmed = [(i, d) for i, d in deps.items() if i.startswith("compile/")]
    if not warmed:
        _cli(args, workdir)
        return {"baseline": _read_jsonl(out)}
    ((dep_id, dep),) = warmed
    # A private copy of the compile cell's cache: loading writes into it, and the cache is committed.
    with tempfile.TemporaryDirectory(prefix="edge-se-inductor-") as tmp:
        cache = Path(tmp) / INDUCTOR_CACHE
        shutil.copytree(dep.dir / dep.result["inductor_cache"], cache)
        _cli(args, workdir, env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
    return {"baseline": _read_jsonl(out), "compiled_by": dep_id, "warm": dep.result.get("warm", [])}


_STAGES = {
    "info": _info,
    "train": _train,
    "export": _export,
    "compile": _compile,
    "bench": _bench,
    "baseline": _baseline,
}
