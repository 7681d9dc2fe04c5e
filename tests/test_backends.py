"""The backend registry (export/backends): one module per format, the CLI's choices from it, and
export/verify reaching a format only through its backend (fast: a tiny model, no converter)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from contract.errors import ContractError
from contract.files import sha256_file
from contract.formats import FORMATS
from contract.manifest import read_manifest
from export import backends
from export.backends.base import Artifact, Backend, Lowered, graph_output_scale
from export.pipeline import ExportOptions, ParityFailure, export_one
from export.verify import verify_artifact
from quantize.quantizers import QUANTIZER_TARGETS, TARGETS

ROOT = Path(__file__).resolve().parents[1]


def test_registry_names_are_the_contract_formats():
    # contract.formats.FORMATS is the torch-free table the on-device runner reads (it cannot import
    # export): every format there has a backend module here, and no other module is one.
    assert backends.names() == tuple(FORMATS)
    assert TARGETS == tuple(QUANTIZER_TARGETS) == tuple(FORMATS)
    from export.cli import FORMAT_CHOICES

    assert FORMAT_CHOICES == (*FORMATS, "all")


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_backend_is_registered_under_its_format(name):
    backend = backends.get(name)
    assert isinstance(backend, Backend) and backend.name == name
    assert backend.spec == FORMATS[name]
    assert backends.get(name) is backend
    assert type(backend).__module__ == f"export.backends.{name}"


def test_layouts():
    assert backends.get("pte").layout(True) == "NCHW"  # ExecuTorch takes NCHW whatever is asked
    assert backends.get("tflite").layout(True) == "NHWC"
    assert backends.get("tflite").layout(False) == "NCHW"


def test_unknown_format_is_one_line_naming_the_valid_ones():
    with pytest.raises(ContractError) as info:
        backends.get("onnx")
    assert str(info.value) == "unknown format 'onnx'; valid: pte, tflite"
    with pytest.raises(ContractError, match="unknown format 'base'"):
        backends.get("base")  # the interface module is not a format


def test_registry_and_cli_import_without_torch():
    code = ("import sys, export, export.cli, edge_se.cli\n"
            "from export import backends\n"
            "assert backends.names() == ('pte', 'tflite'), backends.names()\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'executorch', 'litert_torch', 'ai_edge_litert') "
            "if m in sys.modules)\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_third_format_is_one_new_module(tmp_path, monkeypatch):
    (tmp_path / "fake.py").write_text(textwrap.dedent("""
        from export.backends import register
        from export.backends.base import Backend


        class FakeBackend(Backend):
            name = "fake"
            lower = io = tensor_specs = run = partitions = delegation = None  # not called here


        register(FakeBackend())
    """))
    monkeypatch.setattr(backends, "__path__", [*backends.__path__, str(tmp_path)])
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.delitem(sys.modules, "export.backends.fake", raising=False)
    try:
        assert backends.names() == (*FORMATS, "fake")
        assert type(backends.get("fake")).__name__ == "FakeBackend"
        assert "export.backends.fake" in sys.modules
    finally:
        sys.modules.pop("export.backends.fake", None)


def test_register_refuses_a_second_backend_for_a_format(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.get("pte")

    class Other(_InProcess):
        name = "pte"

    with pytest.raises(ContractError, match="already has a backend"):
        backends.register(Other())


# --- the pipeline and verify through a backend alone -----------------------------------------


class _InProcess(Backend):
    """A test format: the artifact is the pickled module, its 'runtime' PyTorch in this process.

    Registered in place of ``pte`` so that the manifest stays valid under the schema: if export or
    verify reached ExecuTorch other than through the backend, they would fail on these bytes.
    """

    name = "pte"
    offset = 0.0  # a broken runtime adds this much to every output

    def lower(self, module: Any, example_inputs: tuple[torch.Tensor, ...], *, quantized: Any,
              layout: str) -> Lowered:
        buf = io.BytesIO()
        torch.save(module, buf)
        return Lowered(buf.getvalue(), delegation={"backend": "in-process"}, rewrites=["none"],
                       warnings=["a warning from the lowering"])

    def _module(self, artifact: Artifact) -> Any:
        data = artifact if isinstance(artifact, bytes) else Path(artifact).read_bytes()
        return torch.load(io.BytesIO(data), weights_only=False)

    def io(self, artifact: Artifact) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        y = self._module(artifact)(torch.zeros(1, 3, 8, 8))
        return [{"shape": [1, 3, 8, 8], "dtype": "float32"}], [{"shape": list(y.shape), "dtype": "float32"}]

    def tensor_specs(self, artifact: Artifact, *, layout: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        ins, outs = self.io(artifact)
        return ([{"name": "x", **ins[0], "layout": layout, "scale": None, "zero_point": None}],
                [{"name": "y", **outs[0], "scale": None, "zero_point": None}])

    @torch.no_grad()
    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        module = self._module(artifact)
        return [module(torch.from_numpy(x)).numpy() + self.offset for x in inputs]

    def partitions(self, artifact: Artifact, dtype: str | None = None) -> dict[str, Any]:
        return {"kind": "in-process", "partitions": 1, "dtype": dtype}

    def delegation(self, lowered: Lowered, partitions: dict[str, Any]) -> dict[str, Any]:
        assert lowered.delegation is not None
        return {**lowered.delegation, "partitions": partitions["partitions"]}


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()


@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", {**backends._REGISTRY, "pte": _InProcess()})
    return backends._REGISTRY["pte"]


def test_export_and_verify_go_through_the_backend(tmp_path, in_process, capsys):
    rec = export_one(_tiny(), name="tiny", fmt="pte", dtype="fp32", out_dir=tmp_path, opts=ExportOptions(resolution=8))
    assert "warning: tiny fp32: a warning from the lowering" in capsys.readouterr().err
    assert rec["parity"]["passed"] is True and rec["parity"]["max_abs_error"] == 0.0
    assert rec["layout"] == "NCHW" and rec["format"] == "pte"
    m = read_manifest(rec["path"])
    assert m["sha256"] == sha256_file(rec["path"]) and m["size_bytes"] == rec["size_bytes"]
    assert m["backend"] == "xnnpack" and m["quantization"] is None
    assert m["delegation"] == {"backend": "in-process", "partitions": 1}
    assert m["partitions"] == {"kind": "in-process", "partitions": 1, "dtype": "fp32"}
    assert m["graph_rewrites"] == ["none"]
    assert m["outputs"][0]["shape"] == [1, 5] and m["inputs"][0]["layout"] == "NCHW"
    assert m["params"] == sum(p.numel() for p in _tiny().parameters())
    assert verify_artifact(rec["path"])["parity"]["passed"] is True
    in_process.offset = 1.0  # the runtime now answers wrongly: verify must see it
    assert verify_artifact(rec["path"])["parity"]["passed"] is False


def test_a_wrong_runtime_fails_parity_and_writes_nothing(tmp_path, in_process):
    in_process.offset = 1.0
    with pytest.raises(ParityFailure) as info:
        export_one(_tiny(), name="tiny", fmt="pte", dtype="fp32", out_dir=tmp_path, opts=ExportOptions(resolution=8))
    assert info.value.record["parity"]["passed"] is False
    assert list(tmp_path.iterdir()) == []


def test_unchecked_export_writes_no_parity_data(tmp_path, in_process):
    rec = export_one(_tiny(), name="tiny", fmt="pte", dtype="fp32", out_dir=tmp_path,
                     opts=ExportOptions(resolution=8, check=False))
    assert rec["parity"] == {"passed": None, "skipped": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_xnnpack_fp32.pte", "tiny_xnnpack_fp32.pte.json"]
    assert read_manifest(rec["path"])["parity"]["golden"] is None


def test_export_one_rejects_an_unknown_format(tmp_path):
    with pytest.raises(ContractError, match="unknown format 'onnx'; valid: pte, tflite"):
        export_one(_tiny(), name="tiny", fmt="onnx", dtype="fp32", out_dir=tmp_path, opts=ExportOptions(resolution=8))


def test_output_scale_rules():
    outs = [{"name": "y", "shape": [1, 5], "dtype": "int8", "scale": 0.25, "zero_point": -3}]
    assert backends.get("tflite").output_scale(outs, None) == 0.25  # the artifact's own output tensor
    assert backends.get("pte").output_scale(outs, None) is None  # float I/O: the PT2E graph's, here none
    assert graph_output_scale(object()) is None


@pytest.mark.slow
@pytest.mark.export
def test_fp32_pte_of_a_hardsigmoid_se_network_is_one_partition_with_nothing_outside(tmp_path):
    # nn.Hardsigmoid lifts its 3 and 6 as tensor constants behind dim-order copies the delegate does
    # not take: unfolded, MobileNetV3 ran 2 portable kernels per SE block outside XNNPACK. Folded at
    # export, nothing stays outside, and the outputs are those of the unfolded program bit for bit.
    from cut_networks import cut_mobilenet
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from export.backends.pte import lower_pte, run_pte
    from export.partitions import pte_report

    torch.manual_seed(0)
    model = cut_mobilenet().eval()  # three hard-sigmoid SE blocks: the property is per block
    example = (torch.randn(1, 3, 32, 32),)
    data, summary, rewrites = lower_pte(model, example)
    path = tmp_path / "m.pte"
    path.write_bytes(data)
    report = pte_report(path)
    assert report["partitions"] == 1 and report["ops_outside_delegate"] == {}, report
    assert any(r.startswith("constant-fold:") for r in rewrites), rewrites
    plain = to_edge_transform_and_lower(torch.export.export(model, example, strict=False),
                                        partitioner=[XnnpackPartitioner()])
    unfolded = bytes(plain.to_executorch().buffer)
    (tmp_path / "u.pte").write_bytes(unfolded)
    assert pte_report(tmp_path / "u.pte")["ops_outside_delegate"], "the unfolded program proves nothing"
    x = [example[0].numpy()]
    assert np.array_equal(run_pte(data, x)[0], run_pte(unfolded, x)[0])
