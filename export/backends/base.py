"""The contract every artifact format meets: lower, describe its I/O, run, quantiser, delegation report.

:func:`export.pipeline.export_one` and :func:`export.verify.verify_artifact` call only these
methods, never a format's own module, so neither names a format. A backend is a stateless object;
its module imports its converter and runtime inside the methods, so importing one costs little.

Artifacts are passed as ``bytes`` (in memory, before anything is written) or a path (``verify``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from contract.formats import FormatSpec, format_spec

if TYPE_CHECKING:
    import numpy as np
    import torch

    from quantize.core import QuantizedModel
    from quantize.quantizers import QuantizerOptions

Artifact = bytes | str | os.PathLike[str]
"""An artifact in memory or on disk."""

TensorInfo = dict[str, Any]
"""One tensor as the runtime sees it: at least ``shape`` (list of int) and ``dtype`` (numpy name)."""


@dataclass
class Lowered:
    """What :meth:`Backend.lower` returns.

    Attributes:
        data: the artifact's bytes.
        delegation: the converter's own view of the delegation (``None`` when the format reads it
            from the artifact instead; see :meth:`Backend.delegation`).
        rewrites: graph rewrites applied on the way (manifest ``graph_rewrites``).
        warnings: one line each, logged by the exporter (e.g. operators outside the delegate).
    """

    data: bytes
    delegation: dict[str, Any] | None = None
    rewrites: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Backend(ABC):
    """One artifact format: its converter, its runtime and what it records in the manifest.

    Subclasses set :attr:`name` (a key of :data:`contract.formats.FORMATS`) and implement the
    abstract methods; the module that defines one calls :func:`export.backends.register` on an
    instance.
    """

    name: ClassVar[str]
    #: The converter quantises an int8 graph's outputs itself (int8 outputs, scale and zero point in
    #: :meth:`tensor_specs`): a gate output needs no dequantize-free graph (``--gate-layout quantized``).
    quantizes_outputs: ClassVar[bool] = False

    @property
    def spec(self) -> FormatSpec:
        """The format's row of the contract table: ``backend`` (file names, manifest) and ``ext``."""
        return format_spec(self.name)

    def layout(self, channels_last: bool) -> str:
        """The input layout of the artifact for ``ExportOptions.channels_last``: ``NCHW`` unless overridden."""
        return "NCHW"

    @abstractmethod
    def lower(
        self,
        module: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        *,
        quantized: QuantizedModel | None,
        layout: str,
    ) -> Lowered:
        """Convert ``module`` (the eval model, or ``quantized.graph`` for int8) to the artifact's bytes.

        Args:
            module: what to convert: the float model, or the converted PT2E graph for int8.
            example_inputs: NCHW inputs to trace with (batch 1: the artifact's fixed shape).
            quantized: how ``module`` was quantised (int8), or ``None`` (fp32).
            layout: the input layout from :meth:`layout`.

        Raises:
            StageError: the converter failed (its first message line kept).
        """

    @abstractmethod
    def io(self, artifact: Artifact) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """The inputs and outputs as the artifact's runtime reports them (``verify`` checks the manifest's)."""

    @abstractmethod
    def tensor_specs(self, artifact: Artifact, *, layout: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The manifest's ``inputs`` and ``outputs``: ``{name, shape, dtype, scale, zero_point}`` (+ ``layout``)."""

    @abstractmethod
    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the artifact in its own runtime once per float input (in its layout); output 0 of each as float32."""

    def run_all(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """Every output of each run, as float32 (dequantised), in the artifact's output order.

        Raises:
            NotImplementedError: the format reads only output 0 (``--gate-outputs`` needs more).
        """
        raise NotImplementedError(f"format {self.name!r} cannot read outputs beyond output 0")

    @abstractmethod
    def partitions(self, artifact: Artifact, dtype: str | None = None) -> dict[str, Any]:
        """The partition report read from the artifact (:mod:`export.partitions`; manifest ``partitions``).

        Raises:
            ValueError: the artifact cannot be read.
        """

    @abstractmethod
    def delegation(self, lowered: Lowered, partitions: dict[str, Any]) -> dict[str, Any]:
        """The manifest's ``delegation`` block, from the lowering and/or the partition report."""

    def output_scale(self, outputs: Sequence[dict[str, Any]], reference: Any) -> float | None:
        """The quantisation step of output 0, for the int8 parity check and the manifest.

        Default: the artifact's own output tensor's scale; a format with float outputs reads it from
        the PT2E reference graph instead (:func:`graph_output_scale`).
        """
        return outputs[0].get("scale") if outputs else None

    def quantizer(self, options: QuantizerOptions | None = None) -> object:
        """The PT2E quantizer for this target (:func:`quantize.quantizers.make_quantizer`)."""
        from quantize.quantizers import make_quantizer

        return make_quantizer(self.name, options)


def graph_output_scale(gm: Any) -> float | None:
    """The quantisation step of a converted PT2E graph's output (its final dequantize), if any."""
    for node in getattr(getattr(gm, "graph", None), "nodes", []):
        if node.op == "output":
            first = node.args[0]
            first = first[0] if isinstance(first, (tuple, list)) else first
            name = str(getattr(first, "target", ""))
            if "dequantize_per_tensor" in name and len(first.args) > 1:
                scale = first.args[1]
                return float(scale) if isinstance(scale, (int, float)) else None
    return None


@contextlib.contextmanager
def on_disk(artifact: Artifact, ext: str) -> Iterator[Path]:
    """The artifact's path; bytes are written to a temporary ``artifact.{ext}`` first (removed after)."""
    if not isinstance(artifact, bytes):
        yield Path(artifact)
        return
    with tempfile.TemporaryDirectory(prefix="edge_se_partitions_") as tmp:
        path = Path(tmp) / f"artifact.{ext}"
        path.write_bytes(artifact)
        yield path


__all__ = ["Artifact", "Backend", "Lowered", "TensorInfo", "graph_output_scale", "on_disk"]
