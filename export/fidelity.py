"""An int8 artifact's fidelity, measured in its own runtime on held-out images: what the manifest says.

The artifact is the truth: its logits come from running the written bytes in their runtime
(ExecuTorch or LiteRT), compared with the float PyTorch model on images the calibration never
saw (the source's test split). Per SE block, gate errors cannot be read out of a fused
artifact, so ``gate_sqnr_db_min`` is measured on the quantised PyTorch graph that was lowered
(the same quantisation parameters; ``gate_measured_on`` says so).

``fidelity.npz`` beside the artifact keeps the float logits and labels of those images, so
``edge-se verify`` re-runs the artifact on the same images (regenerated from the recorded source)
and re-measures every figure without the float model.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from quantize.calibration import Calibration

FIDELITY_IMAGES = 360
"""Held-out images measured per int8 artifact (the digits test split holds 360)."""

FIGURES = ("sqnr_db", "sqnr_db_median", "sqnr_db_worst", "top1_agreement", "accuracy", "float_accuracy", "cosine")
"""The output figures of the manifest's ``fidelity`` (with ``gate_sqnr_db_min`` and ``images``)."""

REMEASURE_TOLERANCE = {"db": 0.01, "share": 1e-6}
"""How far a re-measurement of the same bytes on the same images may move: the runtimes are
deterministic on one machine (seen: identical to the last digit), the margin absorbs float
summation order across CPUs; dB figures in dB, agreement/accuracy/cosine as shares."""


def held_out(calib: Calibration | None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The images (and labels) fidelity is measured on, or None when the source has none (random)."""
    if calib is None or not calib.real or calib.held_out is None or not len(calib.held_out):
        return None
    n = min(FIDELITY_IMAGES, len(calib.held_out))
    labels = calib.held_out_labels[:n] if calib.held_out_labels is not None else None
    return calib.held_out[:n], labels


def figures(float_logits: np.ndarray, artifact_logits: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """The output figures of ``artifact_logits`` against ``float_logits`` ``[N, classes]`` (and labels)."""
    from quantize.metrics import logits_report

    report = logits_report(torch.from_numpy(float_logits), torch.from_numpy(artifact_logits),
                           None if labels is None else torch.from_numpy(labels))
    return {k: report[k] for k in (*FIGURES, "images")}


def run_batched(run: Callable[[Sequence[np.ndarray]], list[np.ndarray]], images: torch.Tensor,
                layout: str) -> np.ndarray:
    """``[N, classes]`` logits of the artifact, one image per inference (its batch is 1)."""
    xs = []
    for img in images:
        x = img.unsqueeze(0).float().numpy()
        xs.append(np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x)
    return np.concatenate([np.asarray(y, dtype=np.float32).reshape(1, -1) for y in run(xs)])


@torch.no_grad()
def measure(run: Callable[[Sequence[np.ndarray]], list[np.ndarray]], *, model: torch.nn.Module,
            quantized: Any, calib: Calibration | None, layout: str) -> tuple[dict[str, Any], bytes] | None:
    """The ``fidelity`` block of an int8 artifact and the bytes of its ``fidelity.npz``, or None.

    Args:
        run: runs the artifact in its runtime on a list of ``[1, ...]`` inputs.
        model: the float model (the reference).
        quantized: the ``QuantizedModel`` that was lowered (its graph gives the gate errors).
        calib: the calibration (its ``held_out`` images are measured).
        layout: the artifact's input layout (``NCHW`` or ``NHWC``).
    """
    from quantize.evaluate import evaluate

    data = held_out(calib)
    if data is None or quantized is None:
        return None
    images, labels = data
    float_logits = torch.cat([model(images[i : i + 32]) for i in range(0, len(images), 32)]).float().numpy()
    actual = run_batched(run, images, layout)
    block = figures(float_logits, actual, None if labels is None else labels.numpy())
    gates = evaluate(quantized, images, labels)
    assert calib is not None
    block |= {
        "gate_sqnr_db_min": gates.get("gate_sqnr_db_min"),
        "gate_measured_on": "the quantised PyTorch graph that was lowered",
        "source": calib.source,
        "split": "test",
    }
    buf = io.BytesIO()
    arrays = {"float_logits": float_logits}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return block | {"gate_error": gates.get("gate_error", [])}, buf.getvalue()


def compare(recorded: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """Recorded vs re-measured figures: ``passed`` when each is within :data:`REMEASURE_TOLERANCE`."""
    diffs: dict[str, float | None] = {}
    ok = True
    for key in FIGURES:
        a, b = recorded.get(key), fresh.get(key)
        if a is None or b is None:
            diffs[key] = None
            ok &= a is None and b is None
            continue
        diff = abs(float(a) - float(b))
        diffs[key] = diff
        ok &= diff <= (REMEASURE_TOLERANCE["db"] if key.startswith("sqnr") else REMEASURE_TOLERANCE["share"])
    return {"passed": bool(ok), "abs_diff": diffs, "tolerance": REMEASURE_TOLERANCE}
