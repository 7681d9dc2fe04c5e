"""Tiny conv + SE artifacts (.pte and .tflite, fp32 and int8) with manifests, for device_bench tests.

A stand-in until the export package writes them: the model is a 3x3 conv, an SE block
(mean, 1x1 reduce, ReLU, 1x1 expand, sigmoid gate, multiply), global pooling and a linear head
on a 1x3x16x16 input. Built once per test session into a folder keyed by the tool versions;
each test module calls :func:`build_artifacts`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import exclusive
from contract.manifest import write_manifest as contract_write_manifest

RESOLUTION = 16
NUM_CLASSES = 10
NAMES = ("tiny_se_xnnpack_fp32.pte", "tiny_se_xnnpack_int8.pte", "tiny_se_litert_fp32.tflite",
         "tiny_se_litert_int8.tflite")


def _model():  # -> torch.nn.Module
    import torch
    from torch import nn

    class SE(nn.Module):
        def __init__(self, ch: int, mid: int) -> None:
            super().__init__()
            self.reduce = nn.Conv2d(ch, mid, 1)
            self.expand = nn.Conv2d(mid, ch, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x.mean((2, 3), keepdim=True)
            return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.se = SE(16, 4)
            self.head = nn.Linear(16, NUM_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.se(torch.relu(self.conv(x)))
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    return Tiny().eval()


def gate_stats(channels: int = 16, name: str = "se", threshold: float = 0.5) -> dict:
    """A hand-made gate-stats dict for :func:`_model`'s SE block (identity covariance: the score is
    the distance to the mean), as tests of the gate outputs and of both runners' score use it."""
    import numpy as np

    return {"schema": "edge-se/gate-stats/1", "method": "ppca-mahalanobis", "combine": "sum-z",
            "threshold": threshold, "fpr": 0.05, "fit_images": 0, "source": "hand-made (test)",
            "blocks": [{"name": name, "channels": channels, "mean": [0.5] * channels,
                        "components": np.eye(channels).tolist(), "eigenvalues": [0.01] * channels,
                        "residual_variance": 1.0, "norm_mean": 0.0, "norm_std": 1.0}]}


def _calib():  # -> list[torch.Tensor]
    import torch

    g = torch.Generator().manual_seed(1)
    return [torch.rand(1, 3, RESOLUTION, RESOLUTION, generator=g) * 2 - 1 for _ in range(8)]


def _export_pte(model, example, int8: bool) -> bytes:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if int8:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        gm = torch.export.export(model, (example,)).module()
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
        prepared = prepare_pt2e(gm, quantizer)
        for x in _calib():
            prepared(x)
        model = convert_pt2e(prepared)
    ep = torch.export.export(model, (example,))
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def _export_tflite(model, example, path: Path, int8: bool) -> None:
    import litert_torch

    if not int8:
        litert_torch.convert(model, (example,)).export(str(path))
        return
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    gm = torch.export.export(model, (example,)).module()
    prepared = prepare_pt2e(gm, quantizer)
    for x in _calib():
        prepared(x)
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))


def _io_from_tflite(path: Path) -> tuple[list[dict], list[dict]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))

    def spec(d: dict) -> dict:
        scale, zp = d["quantization"]
        return {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "layout": "NCHW", "scale": float(scale) if scale else None, "zero_point": int(zp) if scale else None}

    return [spec(d) for d in interp.get_input_details()], [spec(d) for d in interp.get_output_details()]


def write_manifest(artifact: Path, *, fmt: str, dtype: str, inputs: list[dict], outputs: list[dict]) -> Path:
    """Write ``artifact.json`` per docs/manifest.md (the fields device_bench reads, plus provenance)."""
    data = artifact.read_bytes()
    doc = {
        "schema": "edge-se/manifest/1",
        "artifact": artifact.name,
        "format": fmt,
        "backend": "xnnpack" if fmt == "pte" else "litert",
        "dtype": dtype,
        "model": "tiny_se",
        "variant": {"family": "test", "se": True},
        "resolution": RESOLUTION,
        "inputs": inputs,
        "outputs": outputs,
        "quantization": None,
        "params": None,
        "macs": None,
        "se_params": None,
        "se_macs": None,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "versions": {d: importlib.metadata.version(d) for d in ("torch", "executorch", "litert-torch")},
        "parity": {"passed": None, "skipped": True, "reason": "test artifact"},
        "delegation": None,
    }
    return contract_write_manifest(artifact, doc)  # validated against the schema, like every manifest


def build_artifacts(folder: Path) -> dict[str, Path]:
    """Build the four artifacts and manifests into ``folder`` unless already there; return name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: folder / n for n in NAMES}
    with exclusive(folder / "build"):  # pytest-xdist workers share the cache: one builds, the others wait
        if not all(p.exists() and p.with_name(p.name + ".json").exists() for p in paths.values()):
            _build(paths)
    return paths


def _build(paths: dict[str, Path]) -> None:
    import torch

    model = _model()
    example = torch.zeros(1, 3, RESOLUTION, RESOLUTION)
    f32_in = [{"name": "x", "shape": [1, 3, RESOLUTION, RESOLUTION], "dtype": "float32", "layout": "NCHW",
               "scale": None, "zero_point": None}]
    f32_out = [{"name": "output_0", "shape": [1, NUM_CLASSES], "dtype": "float32", "scale": None, "zero_point": None}]
    for name in NAMES:
        path, int8 = paths[name], "int8" in name
        if name.endswith(".pte"):
            path.write_bytes(_export_pte(model, example, int8))
            write_manifest(path, fmt="pte", dtype="int8" if int8 else "fp32", inputs=f32_in, outputs=f32_out)
        else:
            _export_tflite(model, example, path, int8)
            ins, outs = _io_from_tflite(path)
            write_manifest(path, fmt="tflite", dtype="int8" if int8 else "fp32", inputs=ins, outputs=outs)


def _cache_key() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    for dist in ("torch", "executorch", "litert-torch", "ai-edge-litert", "torchao"):
        h.update(importlib.metadata.version(dist).encode())
    return h.hexdigest()[:16]


try:
    import pytest

    @pytest.fixture(scope="session")
    def artifacts(request, tmp_path_factory) -> dict[str, Path]:
        """The four tiny artifacts, cached in pytest's cache folder by source and tool versions."""
        cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
        base = Path(cache.mkdir("device_bench_artifacts")) if cache else tmp_path_factory.mktemp("artifacts")
        return build_artifacts(base / _cache_key())

except ImportError:  # pragma: no cover - used outside pytest
    pass


def blocker(*modules: str, why: str = "the device runner must not import it") -> str:
    """Python source to run first in a child process: importing ``modules`` (or their submodules) raises ImportError."""
    return f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + '.') for m in {modules!r}):
            raise ImportError(f'{{name}} is blocked: {why}')
sys.meta_path.insert(0, _Block())
"""


#: Importing torch or edge_se raises ImportError: the on-device runner works with numpy and a runtime only.
BLOCKER = blocker("torch", "edge_se")


def pte_with_and_without(monkeypatch: Any, patch: str, *, model: Any = None,
                         example: tuple[Any, ...] | None = None) -> tuple[bytes, bytes]:
    """A network's ``.pte`` (default: the tiny one) as shipped, then with ``export.backends.pte.<patch>`` a no-op.

    For the toolchain patches (export/fx_provenance.py, export/xnnpack_anchored_passes.py), which
    must not change a byte of the artifact.
    """
    import contextlib

    import torch

    from export.backends import pte

    torch.manual_seed(0)
    model = (model if model is not None else _model()).eval()
    example = example or (torch.randn(1, 3, RESOLUTION, RESOLUTION),)
    patched, _, _ = pte.lower_pte(model, example)
    monkeypatch.setattr(pte, patch, contextlib.nullcontext)
    plain, _, _ = pte.lower_pte(model, example)
    return patched, plain
