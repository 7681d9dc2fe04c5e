"""Every quantisation policy gives a graph that lowers to ExecuTorch (XNNPACK) and to TFLite.

A tiny two-block SE network at 32 px keeps each conversion to a few seconds; the real families
are exported by the export package's tests and measured by ``make bench-quant``. To bound the
run time the policies are lowered in combinations (one conversion per combination and format)
that together name every policy: ``test_combos_cover_every_policy`` fails when a new policy is
added without being lowered here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edge_se
from quantize import POLICIES, quantize_model
from quantize.metrics import sqnr_db
from tests.nets import with_data_statistics

RES = 32
# The artifact runs the same int8 arithmetic as the quantised reference up to rounding of
# requantisation steps: a few LSBs on some logits, far above 20 dB; a broken lowering is < 5 dB.
ARTIFACT_VS_REFERENCE_MIN_SQNR_DB = 20.0


class TinySE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.se1 = edge_se.SqueezeExcite(16, 8, act="relu", gate="hsigmoid")
        self.conv = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.Hardswish())
        self.se2 = edge_se.SqueezeExcite(24, 8, act="silu", gate="sigmoid")
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.se2(self.conv(self.se1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return with_data_statistics(TinySE(), RES)


def _run_pte(qm, x):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    program = to_edge_transform_and_lower(torch.export.export(qm.graph, (x[:1],)),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    delegated = [n for n in program.exported_program().graph.nodes if "call_delegate" in str(n.target)]
    assert delegated, "nothing was delegated to XNNPACK"
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    return torch.cat([method.execute([x[i : i + 1]])[0] for i in range(x.shape[0])])


def _run_tflite(qm, x, tmp_path):
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter
    from litert_torch.quantize.quant_config import QuantConfig

    path = tmp_path / "m.tflite"
    litert_torch.convert(qm.graph, (x[:1],), quant_config=QuantConfig(pt2e_quantizer=qm.quantizer)).export(str(path))
    it = Interpreter(str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].numpy()
        if inp["dtype"] == np.int8:
            scale, zp = inp["quantization"]
            xi = np.clip(np.round(xi / scale) + zp, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            scale, zp = out["quantization"]
            y = (y - zp) * scale
        rows.append(torch.from_numpy(y))
    return torch.cat(rows)


# Policy combinations lowered: each sets different aspects (see quantize.policies), so each combo
# is a valid recipe, and together they name every policy.
COMBOS = (
    "ptq",
    "gate-fixed,gate-coverage,act-percentile,se-squeeze-grid,cle",  # cle: the SE FC pair (reduce -> relu -> expand)
    "se-float,act-minmax,qat,bias-correction-fast",  # trained weights, then corrected biases, in the artifact
    "se-float-mul,adaround",  # learned weight integers must reach the artifact in both formats
    # corrected bias constants must reach the artifact, fp32 islands inside int8 lower in both formats
    "act-outlier,bias-correction,float-sensitive",
    "auto",
)


def test_combos_cover_every_policy():
    named = {p for combo in COMBOS for p in combo.split(",")}
    assert named == set(POLICIES), f"policies never lowered: {sorted(set(POLICIES) - named)}"


@pytest.fixture(scope="module")
def images():
    return torch.randn(20, 3, RES, RES, generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
@pytest.mark.export
@pytest.mark.parametrize("target", ["pte", "tflite"])
@pytest.mark.parametrize("policy", COMBOS)
def test_policy_lowers(tiny, images, policy, target, tmp_path):
    calib, held = images[:12], images[12:]
    qm = quantize_model(tiny, (calib[:1],), [calib], target=target, policy=policy, calib_size=8)
    assert len(qm.se_blocks) == 2
    if policy == "auto":  # no latency probe here: auto takes no tensor off the grid (stage 3 needs a measured budget)
        assert not any(s["float_tensors"] for s in qm.steps) and qm.latency_budget_pct is None
    with torch.no_grad():
        ref = qm.graph(held)
    got = _run_pte(qm, held) if target == "pte" else _run_tflite(qm, held, tmp_path)
    s = sqnr_db(ref, got)
    assert s >= ARTIFACT_VS_REFERENCE_MIN_SQNR_DB, (
        f"{target}/{policy}: artifact vs quantised reference {s:.1f} dB, "
        f"max abs err {float((ref - got).abs().max()):.4f}, mean {float((ref - got).abs().mean()):.4f}")
