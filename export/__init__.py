"""Verified deployable artifacts: ExecuTorch ``.pte`` (XNNPACK) and TFLite ``.tflite`` (LiteRT), fp32 and int8.

Every artifact is run in its own runtime and compared with its PyTorch reference before it is
written; a manifest (docs/manifest.md) and the parity data ``verify`` re-checks go beside it.
Each format is one backend module in :mod:`export.backends` (``get(fmt)``, ``names()``); the
pipeline and ``verify`` reach a format only through it. Converters and runtimes are imported
inside the functions that use them.

Example:
    >>> from export import ExportOptions, export_one, verify_artifact
    >>> from export.sources import load_calibration, prepare_model
    >>> calib = load_calibration("random", 64)
    >>> model, weights = prepare_model("mobilenetv3_small_100", weights=None, calib=calib, resolution=64)
    >>> rec = export_one(model, name="mobilenetv3_small_100", fmt="pte", dtype="fp32", out_dir="out",
    ...                  opts=ExportOptions(resolution=64), calib=calib, weights=weights)
    >>> rec["path"], rec["parity"]["passed"]
    ('out/mobilenetv3_small_100_xnnpack_fp32.pte', True)
    >>> verify_artifact(rec["path"])["parity"]["passed"]
    True
"""

from __future__ import annotations

from edge_se.lazy import lazy_attributes

# Names -> the submodule that defines them, imported on first use (PEP 562): `export.partitions`
# must import without torch (it also runs in the TensorFlow-only .venv-peers).
_LAZY = {
    "SCHEMA": "contract.manifest",
    "artifact_name": "contract.formats",
    "manifest_path": "contract.formats",
    "read_manifest": "contract.manifest",
    "Calibration": "export.pipeline",
    "ExportOptions": "export.pipeline",
    "ParityFailure": "export.pipeline",
    "export_one": "export.pipeline",
    "verify_artifact": "export.verify",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "SCHEMA",
    "Calibration",
    "ExportOptions",
    "ParityFailure",
    "artifact_name",
    "export_one",
    "manifest_path",
    "read_manifest",
    "verify_artifact",
]
