"""The sweep runner: config validation, caching, resume after an interruption, failures, the report."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edge_se
from edge_se.errors import EdgeSeError
from pipeline.cells import plan_cells
from pipeline.collect import pareto_front
from pipeline.config import parse_config
from pipeline.report import write_report
from pipeline.run import run_sweep

CONFIG = """
[run]
resolution = 64
[data]
source = "random"
calib_size = 8
[[models]]
name = "mobilenetv3_small_050"
train_epochs = 1
twin = true
[[models]]
name = "efficientnet_phi-1"
[[models]]
name = "efficientnet_phi0"
quantize = false
[quantize]
policies = ["ptq", "gate-fixed"]
[export]
formats = ["pte", "tflite"]
dtypes = ["fp32", "int8"]
[bench]
devices = ["local", "qemu-aarch64"]
[baseline]
devices = ["cpu", "cuda"]
compile_ahead = true
"""


def _cfg(tmp_path: Path, text: str = CONFIG):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return parse_config(text, str(path))


class FakeRunner:
    """Stands in for the real stages (which the slow end-to-end test runs): plausible outputs, counted calls."""

    def __init__(self, fail_on: str | None = None, interrupt_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on = fail_on
        self.interrupt_at = interrupt_at

    def __call__(self, cell, cfg, deps, workdir: Path) -> dict:
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            (workdir / "half-written.bin").write_bytes(b"\0" * 10)
            raise KeyboardInterrupt
        self.calls.append(cell.id)
        if self.fail_on and self.fail_on in cell.id:
            raise ValueError(f"converter rejected operator aten.fake for {cell.id}")
        spec = edge_se.get_spec(cell.model)
        acc = edge_se.count(spec, 64).summary()
        seed = int(hashlib.sha256(cell.id.encode()).hexdigest()[:6], 16) / 0xFFFFFF
        p = dict(cell.params)
        out = {"stage": cell.stage, "model": cell.model, "params": p, "meta": cell.meta, "seconds": 0.01}
        if cell.stage == "info":
            return out | {"accounting": acc, "phi": spec.phi}
        if cell.stage == "train":
            (workdir / "weights.pt").write_bytes(b"w")
            return out | {"weights": "weights.pt", "output_sha256": "ab" * 32}
        if cell.stage == "export":
            name = f"{cell.model}_{'xnnpack' if p['format'] == 'pte' else 'litert'}_{p['dtype']}.{p['format']}"
            (workdir / name).write_bytes(b"artifact")
            manifest = {
                "size_bytes": int(1e6 * (1 + seed)),
                "sha256": "cd" * 32,
                "params": acc["params"],
                "macs": acc["macs"],
                "resolution": 64,
                "parity": {"passed": True, "max_abs_err": 1e-4},
                "delegation": {"delegated_ops": {"conv": 10}, "non_delegated_ops": {"sigmoid": 1}},
            }
            if p["dtype"] == "int8":  # the artifact's fidelity, as edge-se export measures it in the runtime
                gates = [
                    {"block": f"blocks.{i}.se", "mean_abs": 0.01, "max_abs": 0.1, "cosine": 0.999,
                     "sqnr_db": 30 + 10 * seed - i}
                    for i in range(acc["se_blocks"])
                ]
                manifest["fidelity"] = {
                    "top1_agreement": 0.99 + 0.01 * seed, "cosine": 0.99, "sqnr_db": 20 + 10 * seed,
                    "sqnr_db_median": 25.0, "sqnr_db_worst": 5.0, "accuracy": 0.95, "float_accuracy": 0.96,
                    "gate_sqnr_db_min": min((g["sqnr_db"] for g in gates), default=None), "images": 360,
                    "gate_error": gates,
                }
            return out | {"artifact": name, "manifest": manifest, "metrics": manifest.get("fidelity"),
                          "output_sha256": "ef" * 32}
        if cell.stage == "bench":
            emulated = p["device"] == "qemu-aarch64"
            return out | {
                "bench": {
                    "latency_ms": {"p50": 1 + 5 * seed, "p90": 2 + 5 * seed, "min": 1.0},
                    "emulated": emulated,
                    "instructions_per_inference": 1e7 * (1 + seed) if emulated else None,
                }
            }
        if cell.stage == "compile":
            return out | {"warm": [{"dtype": "fp32", "batch": 1, "first_call_ms": 45_000.0, "status": "ok"}],
                          "inductor_cache": "inductor_cache"}
        if cell.stage == "baseline":
            if p["device"] == "cuda":
                return out | {"baseline": [{"device": "cuda", "skipped": "no CUDA device: CPU baseline only"}]}
            if not cfg.compile_ahead:
                return out | {"baseline": [{"device": "cpu", "dtype": "fp32", "batch": 1, "mode": "eager",
                                            "latency_ms": {"p50": 3.0}}]}
            assert [d for d in deps if d.startswith("compile/")] == [f"compile/{cell.model}/cpu"]
            return out | {
                "baseline": [
                    {"device": "cpu", "dtype": "fp32", "batch": 1, "mode": "eager", "latency_ms": {"p50": 3.0}},
                    {"device": "cpu", "dtype": "fp32", "batch": 1, "mode": "compile", "latency_ms": {"p50": 2.0},
                     "first_inference_ms": 7_700.0, "compile_cache": {"hits": 1, "misses": 0}},
                ],
                "warm": deps[f"compile/{cell.model}/cpu"].result["warm"],
            }
        raise AssertionError(cell.stage)


def test_plan_covers_the_sweep(tmp_path):
    cells = plan_cells(_cfg(tmp_path))
    ids = [c.id for c in cells]
    assert "export/mobilenetv3_small_050/pte/int8/gate-fixed" in ids
    assert "export/mobilenetv3_small_050_nose/tflite/int8/ptq" in ids
    assert "export/mobilenetv3_small_050_nose/tflite/int8/gate-fixed" not in ids  # no SE to act on
    assert "export/efficientnet_phi0/pte/int8/ptq" not in ids  # quantize = false
    assert "bench/efficientnet_phi0/tflite/fp32/-/qemu-aarch64" in ids
    assert len(ids) == len(set(ids))
    stages = [c.stage for c in cells]
    assert stages.index("bench") > max(i for i, s in enumerate(stages) if s == "export")
    # torch.compile runs in a CPU cell of its own before the cpu baseline that times it; a cuda
    # baseline compiles on its GPU in its own cell
    by_id = {c.id: c for c in cells}
    assert by_id["baseline/efficientnet_phi0/cpu"].deps == ("compile/efficientnet_phi0/cpu",)
    assert by_id["baseline/efficientnet_phi0/cuda"].deps == ()
    assert "compile/efficientnet_phi0/cuda" not in ids
    # off (the default): no compile cell, the baseline compiles in its own cell
    plain = plan_cells(_cfg(tmp_path, CONFIG.replace("compile_ahead = true", "")))
    assert not [c for c in plain if c.stage == "compile"]
    assert next(c for c in plain if c.id == "baseline/efficientnet_phi0/cpu").deps == ()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[run]\nresolution = 16\n[[models]]\nname='resnet50'", "[run].resolution: need >= 32"),
        ("[[models]]\nname='efficientnet_b9'", "[models[0]].name: unknown model 'efficientnet_b9'"),
        ("[[models]]\nname='resnet50'\ntwin=true", "[models[0]].twin"),
        ("[[models]]\nname='resnet50'\n[export]\nformats=['pte','onnx']", "[export].formats[1]: unknown value 'onnx'"),
        ("[[models]]\nname='resnet50'\n[bench]\nruns='many'", "[bench].runs: expected int"),
        ("[[models]]\nname='resnet50'\nepochs=3", "[models[0]].epochs: unknown key"),
        ("[model]\nname='resnet50'", "unknown table [model]"),
        ("[run]\nresolution = 64", "[[models]]: need at least one model"),
        ("[[models]\nname=", "not valid TOML"),
    ],
)
def test_malformed_config_names_the_key(tmp_path, text, needle):
    with pytest.raises(EdgeSeError) as err:
        parse_config(text, "bad.toml")
    assert needle in str(err.value) and str(err.value).startswith("bad.toml: ")
    assert "\n" not in str(err.value)


def test_malformed_config_on_the_cli_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]]\nname='resnet50'\n[quantize]\nengine='tensorrt'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_se.cli", "run", str(bad), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "[quantize].engine: unknown engine 'tensorrt'" in proc.stderr


def test_rerun_skips_finished_work(tmp_path):
    cfg = _cfg(tmp_path)
    first = FakeRunner()
    s1 = run_sweep(cfg, tmp_path / "run", runner=first)
    assert s1.ok and s1.count("done") == len(plan_cells(cfg)) == len(first.calls)
    second = FakeRunner()
    s2 = run_sweep(cfg, tmp_path / "run", runner=second)
    assert second.calls == [] and s2.count("cached") == len(first.calls)


def test_interrupted_run_resumes_without_redoing_finished_cells(tmp_path):
    cfg = _cfg(tmp_path)
    n = len(plan_cells(cfg))
    interrupted = FakeRunner(interrupt_at=17)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path / "run", runner=interrupted)
    assert len(interrupted.calls) == 17
    assert not list((tmp_path / "run").rglob("half-written.bin")), "the interrupted cell left files behind"
    resumed = FakeRunner()
    s = run_sweep(cfg, tmp_path / "run", runner=resumed)
    assert s.ok and s.count("cached") == 17 and len(resumed.calls) == n - 17
    assert not set(resumed.calls) & set(interrupted.calls)


def test_failing_cell_is_recorded_and_the_rest_goes_on(tmp_path):
    cfg = _cfg(tmp_path)
    runner = FakeRunner(fail_on="export/efficientnet_phi-1/tflite/int8/gate-fixed")
    s = run_sweep(cfg, tmp_path / "run", runner=runner)
    assert not s.ok and s.count("failed") == 1
    assert s.status["bench/efficientnet_phi-1/tflite/int8/gate-fixed/local"] == "blocked"
    assert s.count("done") == len(plan_cells(cfg)) - 1 - 2  # the failure and its two bench cells
    failed = json.loads(next((tmp_path / "run" / "failed").rglob("*.json")).read_text())
    assert "aten.fake" in failed["error"]
    # A re-run retries the failure (and only what it blocked); finished cells stay cached.
    retry = FakeRunner()
    s2 = run_sweep(cfg, tmp_path / "run", runner=retry)
    assert s2.ok and len(retry.calls) == 3


def test_pareto_front():
    pts = [(1.0, 10.0), (2.0, 30.0), (1.5, 5.0), (3.0, 25.0), (0.5, 1.0)]
    assert pareto_front(pts) == [4, 0, 1]


@pytest.mark.slow
def test_report_renders_in_a_real_headless_browser(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = tmp_path / "run"
    run_sweep(cfg, run_dir, runner=FakeRunner())
    paths = write_report(run_dir)
    md = Path(paths["markdown"]).read_text()
    for title in (
        "1. Latency against MACs",
        "2. Accuracy and agreement",
        "3. Per-SE-block gate error",
        "4. What SE costs",
        "5. Compound scaling",
        "6. Every artifact",
        "Desktop PyTorch baselines",
    ):
        assert title in md
    assert "SE adds" in md and "No measured results" not in md
    # the compiled baseline's first call loaded the compile cell's kernels; its cold compile is named
    assert "7700 (kernels cached; cold compile 45 s)" in md
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert pngs == [
        "compound_scaling.png",
        "fidelity_vs_latency.png",
        "gate_error.png",
        "latency_vs_macs.png",
        "se_cost.png",
    ]
    page = Path(paths["html"]).read_text()
    assert page.count("data:image/png;base64,") == 5 and "src='report" not in page

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make setup installs it from Debian's packages)")
    # A copy of the page with a probe: records script errors and whether every image decoded.
    probe = page.replace(
        "</body>",
        """<script>
      window.__errors = [];
      window.addEventListener('error', e => window.__errors.push(String(e.message)));
      window.addEventListener('load', () => {
        const imgs = [...document.images];
        const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
        document.body.setAttribute('data-probe', JSON.stringify({images: imgs.length, broken,
                                                                  errors: window.__errors}));
      });</script></body>""",
    )
    probe_path = run_dir / "probe.html"
    probe_path.write_text(probe)
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    marker = proc.stdout.split('data-probe="', 1)[1].split('"', 1)[0].replace("&quot;", '"')
    probe_result = json.loads(marker)
    assert probe_result == {"images": 5, "broken": 0, "errors": []}


def test_per_model_devices_and_emulated_dtypes(tmp_path):
    text = CONFIG.replace('[bench]\ndevices = ["local", "qemu-aarch64"]',
                          '[bench]\ndevices = ["local", "qemu-aarch64"]\nemulated_dtypes = ["int8"]')
    text = text.replace('name = "efficientnet_phi0"\n', 'name = "efficientnet_phi0"\ndevices = ["local"]\n')
    ids = [c.id for c in plan_cells(_cfg(tmp_path, text))]
    assert "bench/mobilenetv3_small_050/pte/int8/ptq/qemu-aarch64" in ids
    assert "bench/mobilenetv3_small_050/pte/fp32/-/qemu-aarch64" not in ids  # fp32 not emulated
    assert not [i for i in ids if i.startswith("bench/efficientnet_phi0/") and i.endswith("qemu-aarch64")]
    assert "bench/efficientnet_phi0/pte/fp32/-/local" in ids


def test_paths_printed_by_a_stage_are_made_relative_to_the_cell(tmp_path, monkeypatch):
    from pipeline.stages import _relative

    monkeypatch.chdir(tmp_path)
    cell = Path("runs/demo/cells/export/.tmp-1")  # a relative run dir, as `--out runs/demo` gives
    (tmp_path / cell).mkdir(parents=True)
    assert _relative("runs/demo/cells/export/.tmp-1/a.pte", cell) == "a.pte"
    assert _relative(str(tmp_path / cell / "a.pte.json"), cell) == "a.pte.json"


@pytest.mark.parametrize(
    ("devices", "needle"),
    [
        ('["ssh://-oProxyCommand=touch@host"]', "bench.devices"),
        ('["my-board"]', "neither a transport URL nor in the inventory"),
        ('["bluetooth://x"]', "bench.devices"),
    ],
)
def test_sweep_devices_are_validated_before_the_first_cell(tmp_path, devices, needle, monkeypatch):
    """A bad device URL or inventory name is a one-line error at load time, not after an hour of export."""
    from pipeline.config import load_config

    (tmp_path / "devices.toml").write_text("[devices]\n")  # an empty inventory: no names known
    monkeypatch.setenv("EDGE_SE_DEVICES", str(tmp_path / "devices.toml"))
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(f"[[models]]\nname='mobilenetv3_small_050'\n[bench]\ndevices = {devices}\n")
    with pytest.raises(EdgeSeError) as err:
        load_config(cfg)
    assert str(err.value).startswith(f"{cfg}: ") and needle in str(err.value) and "\n" not in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "edge_se.cli", "run", str(cfg), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr and not (tmp_path / "r").exists()
