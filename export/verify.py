"""Re-check an existing artifact against its manifest: checksum, I/O shapes, then parity.

Order matters: the sha256 is checked before anything parses the file, so a truncated or corrupt
artifact is reported as such instead of crashing a runtime; then the runtime's own view of the
inputs and outputs must match the manifest (a manifest from another export is caught here); then
the stored parity inputs (``{artifact}.parity.npz``) run again and are compared with the stored
reference outputs under the same rules as at export time (:mod:`export.parity`). The runtime is the
format's backend (:mod:`export.backends`), chosen by the manifest's ``format``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import ContractError
from contract.files import sha256_bytes, sha256_file
from contract.manifest import Manifest, read_manifest
from device_bench.manifest import load_golden
from edge_se.errors import EdgeSeError
from export import backends
from export import parity as par
from export.backends.base import Backend


def _check_io(kind: str, runtime: list[dict[str, object]], manifest: list[dict[str, Any]], path: str) -> None:
    if len(runtime) != len(manifest):
        raise EdgeSeError(f"{path}: the artifact has {len(runtime)} {kind}, its manifest lists {len(manifest)}")
    for i, (r, m) in enumerate(zip(runtime, manifest, strict=True)):
        if list(r["shape"]) != list(m["shape"]):  # type: ignore[call-overload]
            raise EdgeSeError(
                f"{path}: {kind}[{i}] has shape {r['shape']} in the artifact but {m['shape']} in its manifest "
                "(manifest from another export?)"
            )
        if str(r["dtype"]) != str(m["dtype"]):
            raise EdgeSeError(f"{path}: {kind}[{i}] is {r['dtype']} in the artifact but {m['dtype']} in its manifest")


def _load_golden(artifact: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    try:
        return load_golden(artifact, manifest)
    except ContractError as exc:
        raise EdgeSeError(str(exc)) from None


def verify_artifact(artifact: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-run the parity check of ``artifact`` in its runtime against its manifest.

    Returns:
        ``{path, format, dtype, sha256_ok, parity}`` with ``parity["passed"]``.

    Raises:
        EdgeSeError: a missing, truncated or corrupt artifact, a manifest that does not describe
            it, or missing parity data; the message names the file and the mismatch.
    """
    path = Path(artifact)
    if not path.is_file():
        raise EdgeSeError(f"artifact {str(path)!r} does not exist")
    manifest = read_manifest(path)
    if manifest["artifact"] != path.name:
        raise EdgeSeError(f"manifest beside {str(path)!r} describes {manifest['artifact']!r}")
    size = path.stat().st_size
    if size != manifest["size_bytes"]:
        raise EdgeSeError(
            f"{str(path)!r} is {size} bytes but its manifest says {manifest['size_bytes']} (truncated or replaced)"
        )
    if sha256_file(path) != manifest["sha256"]:
        raise EdgeSeError(f"{str(path)!r} does not match the sha256 in its manifest (corrupt or replaced)")
    fmt, dtype = manifest["format"], manifest["dtype"]
    backend = backends.get(fmt)
    ins, outs = backend.io(path)
    _check_io("inputs", ins, manifest["inputs"], str(path))
    _check_io("outputs", outs, manifest["outputs"], str(path))
    golden = _load_golden(path, manifest)
    inputs = list(golden["inputs"])
    expect_shape = list(manifest["inputs"][0]["shape"])
    if list(inputs[0].shape) != expect_shape:
        raise EdgeSeError(f"parity data of {str(path)!r} has inputs of shape {list(inputs[0].shape)}, "
                          f"the manifest says {expect_shape}")
    actual = backend.run(path, inputs)
    reference = list(golden["reference"])
    if dtype == "fp32":
        figures = par.fp32_parity(actual, reference, real_images=list(golden["real"]))
    else:
        vq = (manifest["parity"] or {}).get("vs_quantized") or {}
        figures = par.int8_parity(actual, reference, list(golden["float_reference"]),
                                  output_scale=vq.get("output_scale"), real_images=list(golden["real"]),
                                  gate_top1=(manifest.get("weights") or {}).get("source") == "file",
                                  gate_float=(manifest["parity"] or {}).get("float_gated", True))
    result = {"path": str(path), "format": fmt, "dtype": dtype, "sha256_ok": True, "parity": figures}
    if manifest.get("fidelity"):
        result["fidelity"] = _remeasure_fidelity(path, manifest, backend)
    return result


def _remeasure_fidelity(path: Path, manifest: Manifest, backend: Backend) -> dict[str, Any]:
    """Run the artifact again on the fidelity images (regenerated from the recorded source) and compare.

    The float logits and labels come from ``fidelity.npz`` (checked by sha256), so no float model
    is needed; the images are the recorded source's test split at the manifest's resolution.
    """
    from edge_se.data import load_images
    from export import fidelity

    block = manifest["fidelity"]
    npz_path = path.parent / str(block["file"])
    if not npz_path.is_file():
        raise EdgeSeError(f"fidelity data {str(npz_path)!r} is missing")
    data = npz_path.read_bytes()
    if sha256_bytes(data) != block["sha256"]:
        raise EdgeSeError(f"fidelity data {str(npz_path)!r} does not match the sha256 in its manifest")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        float_logits = z["float_logits"]
        labels = z["labels"] if "labels" in z.files else None
    seed = int((manifest.get("calibration") or {}).get("seed", 0))
    held = load_images(str(block["source"]), int(manifest["resolution"]), split=block["split"], seed=seed)
    n = int(block["images"])
    if len(held) < n or float_logits.shape[0] != n:
        raise EdgeSeError(f"{str(path)!r}: fidelity source {block['source']!r} gives {len(held)} images, "
                          f"the manifest measured {n}")
    if labels is not None and held.labels is not None and not np.array_equal(held.labels[:n].numpy(), labels):
        raise EdgeSeError(f"{str(path)!r}: the images of {block['source']!r} are not the ones measured "
                          "(labels differ): the data changed since export")
    layout = str(manifest["inputs"][0].get("layout") or "NCHW")
    actual = fidelity.run_batched(lambda xs: backend.run(path, xs), held.images[:n], layout)
    fresh = fidelity.figures(float_logits, actual, labels)
    return {"figures": fresh, **fidelity.compare(block, fresh)}


__all__ = ["verify_artifact"]
