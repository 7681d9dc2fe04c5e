"""Peer artifacts from torchvision models through the standard ExecuTorch and litert-torch recipes.

Runs in the main venv::

    .venv/bin/python -m benchmarks.peers.torch_peers --out artifacts/peers [--arch efficientnet_b0]

Per architecture, four artifacts (each with a manifest beside it):
    * ``.pte`` fp32: ``torch.export`` -> ``to_edge_transform_and_lower([XnnpackPartitioner()])``;
    * ``.pte`` int8: PT2E with ExecuTorch's ``XNNPACKQuantizer`` and
      ``get_symmetric_quantization_config(is_per_channel=True)``, then the same lowering;
    * ``.tflite`` fp32: ``litert_torch.convert(model, (x,)).export(path)``;
    * ``.tflite`` int8: litert-torch's ``PT2EQuantizer`` with
      ``get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)``,
      ``convert_pt2e(fold_quantize=False)``, ``litert_torch.convert(..., quant_config=...)``.
No edge-se rewrite touches them: these are the recipes an outside user would follow.

Also writes edge-se's own random weights for the same architectures (``--edge-se-weights``), with
the same BatchNorm randomisation, so ``edge-se export --weights`` sees comparable numerics.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.peers.manifests import (
    ARCHS,
    builder_parser,
    peer_artifact_name,
    peer_manifest,
    tensor_entry,
)
from contract.errors import first_line
from contract.files import publish
from contract.manifest import write_manifest
from contract.provenance import dist_versions

TORCHVISION = {"efficientnet_b0": "efficientnet_b0", "mobilenetv3_large_100": "mobilenet_v3_large"}
"""edge-se architecture -> torchvision builder name."""

CALIB_IMAGES = 8
BN_IMAGES = 8
"""Generated images the randomised BatchNorm statistics are estimated on."""
"""Generated calibration images (N(0, 1), seeded): enough to set ranges; latency does not depend on them."""


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, *, seed: int, resolution: int = 224) -> int:
    """Randomise every BatchNorm's affine parameters and fit its statistics to generated images.

    A freshly initialised torchvision MobileNetV3 gives logits near 1e-10 (PLATFORM.md): its
    BatchNorms are the identity and the activations shrink layer by layer. Random statistics
    alone are not enough either: a random ``bias`` then dominates and the output no longer
    depends on the input (seen here: logits differing by 1e-8 between two images). So: weight
    U(0.5, 1.5), bias N(0, 0.25), then running mean/variance re-estimated on ``BN_IMAGES``
    seeded N(0, 1) images (``export.sources.reestimate_batchnorm``). Every layer then carries an
    input-dependent signal of order 1, which is what int8 ranges and timings should see.

    Returns:
        The number of BatchNorm layers changed.
    """
    from export.sources import reestimate_batchnorm

    g = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.25)
    images = torch.randn(BN_IMAGES, 3, resolution, resolution, generator=g)
    return reestimate_batchnorm(model, [images])


def torchvision_model(arch: str, *, seed: int) -> nn.Module:
    """The torchvision model of ``arch`` with random weights and randomised BatchNorm, in eval mode."""
    import torchvision

    if arch not in TORCHVISION:
        raise ValueError(f"no torchvision peer for {arch!r}; valid: {', '.join(TORCHVISION)}")
    torch.manual_seed(seed)
    model = getattr(torchvision.models, TORCHVISION[arch])(weights=None)
    randomize_batchnorm(model, seed=seed)
    return model.eval()


def calibration_images(resolution: int, *, seed: int) -> list[torch.Tensor]:
    """``CALIB_IMAGES`` seeded N(0, 1) images ``[1, 3, R, R]`` (normalised-image scale)."""
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(1, 3, resolution, resolution, generator=g) for _ in range(CALIB_IMAGES)]


def quantize_pt2e(model: nn.Module, quantizer: Any, calib: list[torch.Tensor], *, fold: bool) -> nn.Module:
    """Standard PT2E: export, ``prepare_pt2e``, one pass per calibration image, ``convert_pt2e``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = torch.export.export(model, (calib[0],)).module()
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert_pt2e(prepared, fold_quantize=fold)


def build_pte(model: nn.Module, example: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    """ExecuTorch's standard XNNPACK lowering; returns the program bytes and export's delegation summary."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from export.backends.pte import delegation_summary

    ep = torch.export.export(model, (example,))
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    summary = delegation_summary(edge)
    return bytes(edge.to_executorch().buffer), summary


def build_tflite(model: nn.Module, example: torch.Tensor, path: Path, *, quantizer: Any = None) -> None:
    """``litert_torch.convert(model, (x,)).export(path)``, with ``QuantConfig`` for int8."""
    import litert_torch

    kwargs: dict[str, Any] = {}
    if quantizer is not None:
        from litert_torch.quantize.quant_config import QuantConfig

        kwargs["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints progress on stdout
        litert_torch.convert(model, (example,), **kwargs).export(str(tmp))
    publish(path, tmp.read_bytes())
    tmp.unlink()


def _versions() -> dict[str, str | None]:
    return dist_versions(("torch", "torchvision", "executorch", "torchao", "litert-torch", "ai-edge-litert"))


def build_arch(arch: str, out: Path, *, resolution: int = 224, seed: int = 0) -> list[dict[str, Any]]:
    """Build the four torchvision peer artifacts of ``arch`` in ``out``; return one record per artifact.

    A failed build is recorded (``error``) and the others go on: the table shows the failure.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
    )
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        get_symmetric_quantization_config as et_config,
    )
    from litert_torch.quantize import pt2e_quantizer as lq

    from export.backends.pte import pte_io
    from export.backends.tflite import delegation_summary as tflite_delegation
    from export.backends.tflite import tflite_io

    model = torchvision_model(arch, seed=seed)
    calib = calibration_images(resolution, seed=seed)
    example = calib[0]
    params = sum(p.numel() for p in model.parameters())
    source = f"torchvision.models.{TORCHVISION[arch]}"
    versions = _versions()
    records = []
    for recipe, fmt in (("executorch", "pte"), ("litert-torch", "tflite")):
        for dtype in ("fp32", "int8"):
            path = out / peer_artifact_name(arch, recipe, dtype, fmt)
            t0 = time.perf_counter()
            record: dict[str, Any] = {"arch": arch, "recipe": recipe, "format": fmt, "dtype": dtype,
                                      "artifact": str(path)}
            try:
                quant: dict[str, Any] | None = None
                if fmt == "pte":
                    graph: nn.Module = model
                    if dtype == "int8":
                        q = XNNPACKQuantizer().set_global(et_config(is_per_channel=True))
                        graph = quantize_pt2e(model, q, calib, fold=True)
                        quant = {"engine": "torchao-pt2e", "quantizer": "executorch XNNPACKQuantizer",
                                 "config": "get_symmetric_quantization_config(is_per_channel=True)",
                                 "calibration": {"source": "random", "samples": len(calib)}}
                    data, delegation = build_pte(graph, example)
                    publish(path, data)
                    ins, outs = pte_io(path)
                    inputs = [tensor_entry("x", i["shape"], i["dtype"], layout="NCHW") for i in ins]
                    outputs = [tensor_entry(f"output_{k}", o["shape"], o["dtype"]) for k, o in enumerate(outs)]
                else:
                    quantizer = None
                    graph = model
                    if dtype == "int8":
                        quantizer = lq.PT2EQuantizer().set_global(
                            lq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
                        graph = quantize_pt2e(model, quantizer, calib, fold=False)
                        quant = {"engine": "torchao-pt2e", "quantizer": "litert-torch PT2EQuantizer",
                                 "config": "get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)",
                                 "calibration": {"source": "random", "samples": len(calib)}}
                    build_tflite(graph, example, path, quantizer=quantizer)
                    ins, outs = tflite_io(path)
                    inputs = [{**i, "layout": "NCHW"} for i in ins]
                    outputs = list(outs)
                    delegation = tflite_delegation(path)
                doc = peer_manifest(path, fmt=fmt, dtype=dtype, arch=arch, recipe=recipe, resolution=resolution,
                                    inputs=inputs, outputs=outputs, source=source, versions=versions,
                                    delegation=delegation, quantization=quant, params=params)
                write_manifest(path, doc)
                record.update(size_bytes=doc["size_bytes"], build_s=round(time.perf_counter() - t0, 1))
            except Exception as exc:  # noqa: BLE001 - a converter failure is a result of the benchmark
                record["error"] = first_line(exc, limit=10_000)
                print(f"torch_peers: {path.name}: build failed: {record['error']}", file=sys.stderr)
            records.append(record)
            print(json.dumps(record), flush=True)
    return records


def write_edge_se_weights(arch: str, path: Path, *, seed: int = 0) -> Path:
    """edge-se's own model of ``arch`` with random weights and randomised BatchNorm, as a state dict file."""
    from edge_se.registry import build_model

    torch.manual_seed(seed)
    model = build_model(arch)
    randomize_batchnorm(model, seed=seed)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    publish(path, buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> int:
    """Build the peers (and edge-se weights) for the chosen architectures; JSON lines on stdout."""
    p = builder_parser("python -m benchmarks.peers.torch_peers", __doc__,
                       "seed of weights, BatchNorm draws and calibration images")
    p.add_argument("--edge-se-weights", default=None,
                   help="also write edge-se's random weights per architecture into this folder")
    p.add_argument("--skip-peers", action="store_true", help="only write the edge-se weights")
    args = p.parse_args(argv)
    out = Path(args.out)
    failed = 0
    for arch in args.arch or ARCHS:
        if args.edge_se_weights:
            w = write_edge_se_weights(arch, Path(args.edge_se_weights) / f"{arch}_random_bn.pt", seed=args.seed)
            print(json.dumps({"arch": arch, "edge_se_weights": str(w)}), flush=True)
        if not args.skip_peers:
            failed += sum("error" in r for r in build_arch(arch, out, resolution=args.resolution, seed=args.seed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
