"""Peer artifacts from Keras applications through TensorFlow's TFLite converter.

Runs only in the benchmark-only environment ``.venv-peers`` (TensorFlow never enters the main
venv); the harness calls it as a subprocess::

    .venv-peers/bin/python -m benchmarks.peers.keras_peers --out artifacts/peers [--arch ...]

Per architecture: fp32, and full-integer int8 (``optimizations=[Optimize.DEFAULT]``, a
representative dataset, ``supported_ops=[TFLITE_BUILTINS_INT8]``, int8 input and output). The
Keras model has a fixed batch of 1: with a dynamic batch the converter adds
SHAPE/STRIDED_SLICE/PACK/RESHAPE around every SE block and the graph is split (PLATFORM.md).
One JSON line per artifact on stdout; logs on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

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

REPRESENTATIVE_IMAGES = 8
"""Images in the representative dataset (generated, seeded): ranges only, latency does not depend on them."""


def input_images(arch: str, n: int, resolution: int, *, seed: int) -> np.ndarray:
    """``n`` NHWC float32 images in the range the Keras model expects.

    Keras EfficientNetB0 has its own Rescaling + Normalization layers and takes pixels in
    [0, 255]; MobileNetV3Large is built with ``include_preprocessing=False`` and takes
    normalised N(0, 1)-scale input, like the torchvision models.
    """
    rng = np.random.default_rng(seed)
    shape = (n, resolution, resolution, 3)
    if arch == "efficientnet_b0":
        return rng.uniform(0.0, 255.0, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def keras_model(arch: str, resolution: int, *, seed: int) -> Any:
    """The Keras application of ``arch`` (batch fixed to 1, logits out) with randomised BatchNorm.

    BatchNorm: gamma U(0.5, 1.5), beta N(0, 0.25), moving statistics set to those of one batch of
    generated images (momentum 0 for one training-mode pass; dropout disabled meanwhile), the
    same scheme as the torchvision peers (see ``torch_peers.randomize_batchnorm``).
    """
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape=(resolution, resolution, 3), batch_size=1)
    if arch == "efficientnet_b0":
        model = keras.applications.EfficientNetB0(weights=None, input_tensor=inp, classifier_activation=None)
    elif arch == "mobilenetv3_large_100":
        model = keras.applications.MobileNetV3Large(weights=None, input_tensor=inp, classifier_activation=None,
                                                    include_preprocessing=False)
    else:
        raise ValueError(f"no Keras peer for {arch!r}; valid: {', '.join(ARCHS)}")
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in bns:
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                        (rng.standard_normal(beta.shape) * 0.25).astype(np.float32), mean, var])
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    momenta = [bn.momentum for bn in bns]
    rates = [d.rate for d in dropouts]
    for d in dropouts:
        d.rate = 0.0
    # The model takes batch 1, so the statistics are a cumulative average over single images:
    # Keras updates moving = moving * momentum + batch * (1 - momentum); momentum k / (k + 1) at
    # image k weighs every image the same.
    for k, img in enumerate(input_images(arch, REPRESENTATIVE_IMAGES, resolution, seed=seed + 7)):
        for bn in bns:
            bn.momentum = k / (k + 1)
        model(img[None], training=True)
    for bn, mom in zip(bns, momenta, strict=True):
        bn.momentum = mom
    for d, rate in zip(dropouts, rates, strict=True):
        d.rate = rate
    return model


def convert(model: Any, dtype: str, representative: np.ndarray) -> bytes:
    """``TFLiteConverter.from_keras_model``; full-integer int8 when ``dtype == "int8"``.

    ``from_keras_model`` freezes the weights into the graph. (A ``tf.function`` concrete function
    given together with the model keeps them as resource variables: 266 VAR_HANDLE/READ_VARIABLE
    ops and 65 partitions were seen for MobileNetV3Large.) The fixed batch of 1 comes from the
    model's ``Input(batch_size=1)``.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if dtype == "int8":
        def dataset() -> Any:
            for img in representative:
                yield [img[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints its captured inputs on stdout
        return bytes(converter.convert())


def tflite_tensors(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs/outputs of the converted model as manifest entries (index order; NHWC input)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()

    def entries(details: list[dict[str, Any]], prefix: str, layout: str | None) -> list[dict[str, Any]]:
        out = []
        for k, d in enumerate(sorted(details, key=lambda d: d["index"])):
            scale, zp = d["quantization"]
            q = np.dtype(d["dtype"]).kind in "iu" and scale != 0.0
            out.append(tensor_entry(f"{prefix}_{k}", list(d["shape"]), np.dtype(d["dtype"]).name, layout=layout,
                                    scale=scale if q else None, zero_point=zp if q else None))
        return out

    return entries(it.get_input_details(), "input", "NHWC"), entries(it.get_output_details(), "output", None)


def _versions() -> dict[str, str | None]:
    return dist_versions(("tensorflow-cpu", "keras", "ai-edge-litert"))


def build_arch(arch: str, out: Path, *, resolution: int = 224, seed: int = 0) -> list[dict[str, Any]]:
    """Build the fp32 and int8 ``.tflite`` of ``arch``; a failure is recorded (``error``), not raised."""
    from export.partitions import tflite_report

    model = keras_model(arch, resolution, seed=seed)
    representative = input_images(arch, REPRESENTATIVE_IMAGES, resolution, seed=seed + 1)
    source = {"efficientnet_b0": "keras.applications.EfficientNetB0",
              "mobilenetv3_large_100": "keras.applications.MobileNetV3Large"}[arch]
    records = []
    for dtype in ("fp32", "int8"):
        path = out / peer_artifact_name(arch, "tf-converter", dtype, "tflite")
        record: dict[str, Any] = {"arch": arch, "recipe": "tf-converter", "format": "tflite", "dtype": dtype,
                                  "artifact": str(path)}
        t0 = time.perf_counter()
        try:
            publish(path, convert(model, dtype, representative))
            inputs, outputs = tflite_tensors(path)
            quant = None if dtype == "fp32" else {
                "engine": "tensorflow TFLiteConverter", "policy": ["full-integer"],
                "calibration": {"source": "random", "samples": len(representative)}}
            doc = peer_manifest(path, fmt="tflite", dtype=dtype, arch=arch, recipe="tf-converter",
                                resolution=resolution, inputs=inputs, outputs=outputs, source=source,
                                versions=_versions(), delegation=tflite_report(path), quantization=quant,
                                params=int(model.count_params()))
            write_manifest(path, doc)
            record.update(size_bytes=doc["size_bytes"], build_s=round(time.perf_counter() - t0, 1))
        except Exception as exc:  # noqa: BLE001 - a converter failure is a result of the benchmark
            record["error"] = first_line(exc, limit=10_000)
            print(f"keras_peers: {path.name}: build failed: {record['error']}", file=sys.stderr)
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    """Build the Keras peers for the chosen architectures; JSON lines on stdout."""
    p = builder_parser("python -m benchmarks.peers.keras_peers", __doc__,
                       "seed of weights, BatchNorm draws and the dataset")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    failed = 0
    for arch in args.arch or ARCHS:
        failed += sum("error" in r for r in build_arch(arch, Path(args.out), resolution=args.resolution,
                                                       seed=args.seed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
