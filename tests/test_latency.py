"""Latency tables and latency-aware compound scaling: kernels, the predictor, the search, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contract.measure import timing_order
from edge_se.accounting import count
from edge_se.errors import EdgeSeError
from edge_se.latency_key import FEATURES, kernel_features, kernels
from edge_se.probes import probe_module
from edge_se.registry import build_model, get_spec
from latency import table as lt
from latency.build import parse_points, variant
from latency.search import frange, make_grid, search

EDGE_SE = str(Path(sys.executable).with_name("edge-se"))
MODELS = [("efficientnet_b0", 224), ("efficientnet_phi-1.5", 160), ("mobilenetv3_small_100", 96),
          ("seresnet50", 64)]

# A synthetic device: a kernel costs these (ms per feature unit), exactly linear in the features.
TRUE_WEIGHTS = {"macs_dense": 2e-8, "macs_dw3": 9e-8, "macs_dw5": 7e-8, "macs_se": 3e-7, "elems": 4e-8,
                "se_blocks": 0.004, "one": 0.01}
# The fits are exact on exact data; 1e-6 relative is float64 least squares on features up to 1e8.
FIT_RTOL = 1e-6


def _true_ms(k) -> float:
    f = kernel_features(k)
    return sum(TRUE_WEIGHTS[n] * f[n] for n in FEATURES)


@pytest.mark.parametrize("name,res", MODELS)
def test_kernels_cover_the_network_exactly(name, res):
    spec = get_spec(name)
    ks = kernels(spec, res)
    macs = sum(kernel_features(k)[n] for k in ks for n in ("macs_dense", "macs_dw3", "macs_dw5", "macs_se"))
    assert macs == count(spec, res).macs  # every MAC of the accounting, none twice
    params = sum(sum(p.numel() for p in probe_module(k).parameters()) for k in ks)
    assert params == count(spec, res).params  # the probes hold exactly the network's layers


def test_probe_output_shapes_chain_like_the_network():
    spec = get_spec("efficientnet_phi-2")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for k in kernels(spec, 64):
            assert x.shape[1:] == (k.input_channels, k.size, k.size)
            x = probe_module(k)(x)
    assert x.shape == build_model("efficientnet_phi-2")(torch.randn(1, 3, 64, 64)).shape


def test_keys_name_the_computation_not_the_position():
    ks = kernels(get_spec("efficientnet_b0"), 224)
    assert len(ks) == 18 and len({k.key for k in ks}) == 14  # repeats within a stage are the same kernel
    assert ks[0].key == "stem:i3-o32-k3-s2-silu@224"
    other = kernels(get_spec("efficientnet_b0"), 256)
    assert not {k.key for k in ks} & {k.key for k in other}  # the input size is part of the key


def _synthetic_table(points, *, scale=1.1, offset=0.05):
    build = [(variant(phi, res), res) for phi, res in points]
    uniq = {k.key: k for spec, res in build for k in kernels(spec, res)}
    measured = [(k, _true_ms(k), {"stability": "stable", "cv_pct": 1.0}) for k in uniq.values()]
    networks = [(spec, res, scale * sum(_true_ms(k) for k in kernels(spec, res)) + offset) for spec, res in build]
    return lt.build_table(device="synthetic", fmt="pte", dtype="int8", threads=1, family="efficientnet", unit="ms",
                          measured=measured, networks=networks, meta={"note": "test"})


def test_predictor_exact_on_entries_and_recovers_a_linear_device():
    table = _synthetic_table([(-2, 96), (0, 160), (1, 224)])
    for key, entry in table.entries.items():
        k = next(k for spec, res in [(variant(-2, 96), 96), (variant(0, 160), 160), (variant(1, 224), 224)]
                 for k in kernels(spec, res) if k.key == key)
        assert table.predict_kernel(k) == entry.value  # exact: the entry itself
    scale, per_mb, per_streamed, offset = table.assembly
    assert (scale, offset) == pytest.approx((1.1, 0.05), rel=FIT_RTOL) and per_mb == pytest.approx(0.0, abs=1e-6)
    assert per_streamed == 0.0 and table.llc_bytes is None  # no cache size given: no network streams
    # An unseen network (other widths, depths and sizes): every kernel from the regression.
    spec, res = variant(0.55, 200), 200
    assert not any(k.key in table.entries for k in kernels(spec, res))
    truth = 1.1 * sum(_true_ms(k) for k in kernels(spec, res)) + 0.05
    assert table.predict(spec, res) == pytest.approx(truth, rel=1e-4)  # NNLS on exact data, float64


def test_refit_is_the_table_its_subset_of_measurements_builds():
    from latency.build import refit

    full = _synthetic_table([(-2, 96), (0, 160), (1, 224)])
    # The same kernels and networks, fitted without the 96 px point: exactly the table built from them.
    cut, direct = refit(full, [(0, 160), (1, 224)]), _synthetic_table([(0, 160), (1, 224)])
    assert set(cut.entries) == set(direct.entries) < set(full.entries)
    assert cut.coefficients == direct.coefficients and cut.assembly == direct.assembly
    assert cut.meta["build"] == ["0@160", "1@224"]
    # All its own points: the table itself.
    same = refit(full, [(-2, 96), (0, 160), (1, 224)])
    assert same.coefficients == full.coefficients and same.assembly == full.assembly
    with pytest.raises(EdgeSeError, match="0.5@192.*not in the table's build set"):
        refit(full, [(0.5, 192)])


def test_table_round_trips_and_bad_files_are_one_line(tmp_path):
    table = _synthetic_table([(-1, 128), (0.5, 192)])
    path = tmp_path / "t.json"
    lt.save(table, path)
    again = lt.load(path)
    spec = variant(0.2, 176)
    assert again.predict(spec, 176) == table.predict(spec, 176)
    assert again.entries == table.entries and again.meta == {"note": "test"}
    with pytest.raises(EdgeSeError, match="latency table not found"):
        lt.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(EdgeSeError, match="bad.json: not valid JSON"):
        lt.load(tmp_path / "bad.json")
    doc = json.loads(path.read_text())
    del doc["assembly"]
    with pytest.raises(EdgeSeError, match="missing field 'assembly'"):
        lt.from_json(doc)
    with pytest.raises(EdgeSeError, match="not a latency table"):
        lt.from_json({"schema": "x"})
    with pytest.raises(EdgeSeError, match="covers the efficientnet family, not mobilenetv3"):
        table.predict(get_spec("mobilenetv3_small_100"), 96)


def test_assembly_fit_cases():
    assert lt.fit_assembly([]) == (1.0, 0.0, 0.0, 0.0)
    assert lt.fit_assembly([{"kernel_sum": 2.0, "measured": 3.0, "weight_mb": 5.0}]) == (1.5, 0.0, 0.0, 0.0)
    # A device that streams weights at 0.05 ms/MB besides its kernels: recovered exactly (the
    # weight sizes vary apart from the kernel sums, as phi and resolution make them).
    pts = [(1.0, 4.0), (4.0, 5.0), (9.0, 30.0), (6.0, 12.0)]
    nets = [{"kernel_sum": s, "weight_mb": mb, "measured": 0.9 * s + 0.05 * mb + 0.1} for s, mb in pts]
    assert lt.fit_assembly(nets) == pytest.approx((0.9, 0.05, 0.0, 0.1), rel=FIT_RTOL, abs=1e-9)
    # Two networks: kernel and weight terms, no offset.
    two = [{"kernel_sum": s, "weight_mb": mb, "measured": 1.2 * s + 0.02 * mb} for s, mb in pts[:2]]
    assert lt.fit_assembly(two) == pytest.approx((1.2, 0.02, 0.0, 0.0), rel=FIT_RTOL)
    # A device whose large networks also stream their weights (0.03 ms per streamed MB): all four
    # terms recovered from five networks, two of them past the cache.
    five = [(1.0, 4.0, 0.0), (4.0, 5.0, 0.0), (9.0, 30.0, 30.0), (6.0, 12.0, 0.0), (3.0, 40.0, 40.0)]
    nets = [{"kernel_sum": s, "weight_mb": mb, "streamed_mb": st, "measured": 0.9 * s + 0.01 * mb + 0.03 * st + 0.1}
            for s, mb, st in five]
    assert lt.fit_assembly(nets) == pytest.approx((0.9, 0.01, 0.03, 0.1), rel=FIT_RTOL)
    # Weight MB as an artifact holds them: 4 bytes a parameter in fp32, 1 in int8.
    spec = variant(0, 224)
    assert lt.weight_mb(spec, "fp32") == pytest.approx(4 * lt.weight_mb(spec, "int8"), rel=1e-12)
    assert lt.weight_mb(spec, "int8") == count(spec).params / 1e6


def _grid(predict):
    return make_grid(lambda phi, res, w, d: variant(phi, res, width=w, depth=d), predict,
                     phis=frange(-2, 2, 0.5), resolutions=list(range(96, 257, 32)), factors=(0.9, 1.0))


@pytest.mark.parametrize("bias", [1.0, 1.3, 0.8])
def test_search_finds_the_known_optimum_of_a_synthetic_device(bias):
    # The device costs 1 ms per 100 M MACs; the predictor is off by `bias` (1.3: optimistic ... 0.8:
    # pessimistic): the search must still end on the largest network the *device* runs under budget.
    def device_ms(c):
        return c.macs / 1e8

    grid = _grid(lambda spec, res: count(spec, res).macs / 1e8 / bias)
    budget = 4.0
    best = max((c for c in grid if device_ms(c) <= budget), key=lambda c: c.macs)
    calls = []

    def measure(cands):
        calls.append(len(cands))
        return [device_ms(c) for c in cands]

    result = search(grid, measure, budget, top=3, max_rounds=6)
    assert result.chosen is not None and result.chosen.macs == best.macs
    assert all(n <= 3 for n in calls) and sum(calls) < len(grid) / 4  # it measures few, not the grid


def test_search_rejects_bad_budgets_and_reports_no_choice():
    grid = _grid(lambda spec, res: count(spec, res).macs / 1e8)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(EdgeSeError, match="--budget-ms must be > 0"):
            search(grid, lambda cs: [1.0] * len(cs), bad)
    # a device far slower than predicted: after one round the corrected predictions rule out the rest
    result = search(grid, lambda cs: [1e9] * len(cs), 5.0, top=2, max_rounds=2)
    assert result.chosen is None and len(result.measured) == 2 and result.rounds == 1


def test_parse_points_and_variant_errors():
    assert parse_points("-1@192, 0.5@160") == [(-1.0, 192), (0.5, 160)]
    for bad in ("1", "a@3", "1@x", ""):
        with pytest.raises(EdgeSeError, match="--build"):
            parse_points(bad)
    with pytest.raises(EdgeSeError, match="multiple of 8"):
        variant(0, 100)
    assert variant(1, 240).name == "efficientnet_phi1" and variant(1, 240, width=0.9).name.endswith("_w0.9_d1")
    # on the compound rule and at its resolution, exactly the registry's network (dropout included)
    spec = get_spec("efficientnet_phi1.5")
    assert variant(1.5, spec.resolution) == spec and variant(1.5, 256).stages == spec.stages


def _cli(*argv, cwd=None, timeout=120):
    return subprocess.run([EDGE_SE, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("argv,needle", [
    (["--budget-ms", "0"], "--budget-ms must be > 0"),
    (["--budget-ms", "-3"], "--budget-ms must be > 0"),
    (["--budget-ms", "5", "--family", "mobilenetv3"], "--family 'mobilenetv3': no latency tables for it"),
    (["--budget-ms", "5", "--device", "nosuchboard"], "device 'nosuchboard' is neither"),
    (["--budget-ms", "5"], "no latency table for efficientnet on local"),
])
def test_scale_bad_input_is_one_line(tmp_path, argv, needle):
    args = ["scale", "--device", "local", *argv]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_latency_table_bad_build_is_one_line(tmp_path):
    proc = _cli("latency-table", "--device", "local", "--build", "0@96,zz", cwd=tmp_path)
    assert proc.returncode == 2 and "--build: bad point 'zz'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.export
def test_table_and_scale_on_a_tiny_shape_set(tmp_path):
    """A real table (pte fp32, local) on one tiny network's kernels, then `edge-se scale` with a measured check."""
    table_path = tmp_path / "t.json"
    # The native runner, as bench-scale's tables use: the Python one spends ~7 s per artifact importing
    # ExecuTorch's pybindings (they import torch), most of this test's time.
    proc = _cli("latency-table", "--device", "local", "--format", "pte", "--dtype", "fp32", "--build=-8@32",
                "--out", str(table_path), "--work", str(tmp_path / "w"), "--repeats", "1", "--passes", "1",
                "--min-seconds", "0.05", "--jobs", "2", "--runner", "native", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = lt.load(table_path)
    spec = variant(-8, 32)
    ks = kernels(spec, 32)
    assert len(table.entries) == len({k.key for k in ks})
    for k in ks:
        assert table.predict_kernel(k) == table.entries[k.key].value  # exact on its own entries
    # one network: the assembly is its measured/kernel-sum ratio, so the table predicts it exactly
    assert table.predict(spec, 32) == pytest.approx(table.networks[0]["measured"], rel=1e-9)
    assert table.meta["system"]["cpu_flags"] and table.meta["measure"]["repeats"] == 1 and table.meta["passes"] == 1
    assert table.meta["runner"] == "native"  # and scale's measured check below times with the table's runner

    budget = 2 * table.networks[0]["measured"]
    proc = _cli("scale", "--device", "local", "--format", "pte", "--dtype", "fp32", "--budget-ms", f"{budget}",
                "--table", str(table_path), "--work", str(tmp_path / "w"), "--phi-range=-8:-8:1",
                "--resolution-range", "32:40:8", "--top", "2", "--rounds", "1", "--repeats", "1", "--passes", "1",
                "--min-seconds", "0.05", "--json", "--plot", str(tmp_path / "p.png"), cwd=tmp_path, timeout=900)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["grid_size"] == 2 and len(doc["candidates"]) == 2
    assert all(c["measured_ms"] > 0 and c["predicted_ms"] > 0 for c in doc["candidates"])
    if doc["chosen"] is not None:
        assert doc["chosen"]["measured_ms"] <= budget
        assert set(doc["chosen"]) >= {"name", "phi", "resolution", "macs", "predicted_ms", "measured_ms"}
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_time_all_takes_the_median_of_shuffled_passes(tmp_path, monkeypatch):
    # A machine whose speed drifts between passes: each artifact's value is the median of its
    # passes, every pass's value is kept, and every pass times all artifacts in its own order.
    import device_bench.bench as db
    from latency.measure import Target, time_all

    paths = [tmp_path / f"a{i}.pte" for i in range(5)]
    drift = [1.0, 1.3, 0.9]  # pass r runs at drift[r] x the artifact's true time
    orders: list[list[str]] = []

    def fake_bench(artifacts, devices, inventory, opts, out, *, threads_given, order, order_seed):
        # As bench does: time in the shuffled order (recorded so), return records in the order given.
        assert order == "shuffled" and order_seed == opts.measure.seed + len(orders)
        r = len(orders)
        orders.append([artifacts[i] for i in timing_order(len(artifacts), order=order, seed=order_seed)])
        return [{"status": "ok", "p50_ms": drift[r] * (1 + int(Path(a).stem[1:])), "pass": r, "order_mode": order}
                for a in artifacts]

    monkeypatch.setattr(db, "bench", fake_bench)
    out = time_all(paths, Target(device="local", fmt="pte", dtype="fp32", passes=3), tmp_path)
    assert len(orders) == 3 and all(sorted(o) == sorted(map(str, paths)) for o in orders)
    assert all(rec["order_mode"] == "shuffled" for _, _, rec in out)
    assert len({tuple(o) for o in orders}) > 1  # the passes are shuffled apart
    for i, (value, unit, rec) in enumerate(out):
        assert unit == "ms" and value == pytest.approx(1.0 * (1 + i))  # median of 0.9x, 1.0x, 1.3x
        assert rec["pass"] == 0 and rec["passes"] == 3
        assert sorted(rec["pass_values"]) == pytest.approx(sorted(d * (1 + i) for d in drift))
    with pytest.raises(EdgeSeError, match="--passes must be >= 1"):
        Target(device="local", fmt="pte", dtype="fp32", passes=0)
    from latency.measure import TABLE_PASSES, default_passes

    assert (default_passes("local"), default_passes("qemu-aarch64")) == (TABLE_PASSES, 1)
    assert default_passes("qemu-aarch64", 2) == 2 and default_passes("local", 1) == 1  # asked for: as asked


def test_time_all_counts_side_by_side_only_on_an_emulated_device(tmp_path, monkeypatch):
    # Instruction counts do not move with load, wall times do: with jobs=2 an emulated device runs
    # two bench calls at once (a barrier both must reach proves they overlap), each artifact once,
    # and every record comes back to its own artifact; a timed device still runs one call.
    import threading

    import device_bench.bench as db
    from latency.measure import Target, time_all

    paths = [tmp_path / f"a{i}.tflite" for i in range(7)]
    calls: list[list[str]] = []
    barrier = threading.Barrier(2, timeout=10)

    def fake_bench(artifacts, devices, inventory, opts, out, *, threads_given, order, order_seed):
        calls.append(list(artifacts))
        if devices == ["qemu-aarch64"]:
            assert order == "given"
            barrier.wait()  # raises BrokenBarrierError if the other part never runs beside this one
            return [{"status": "ok", "emulated": True, "instructions_per_inference": 1e6 * (1 + int(Path(a).stem[1:]))}
                    for a in artifacts]
        return [{"status": "ok", "p50_ms": 1.0 + int(Path(a).stem[1:])} for a in artifacts]

    monkeypatch.setattr(db, "bench", fake_bench)
    out = time_all(paths, Target(device="qemu-aarch64", fmt="tflite", dtype="int8", jobs=2, passes=1), tmp_path)
    assert len(calls) == 2 and sorted(a for c in calls for a in c) == sorted(map(str, paths))
    assert abs(len(calls[0]) - len(calls[1])) <= 1
    assert [(v, u) for v, u, _ in out] == [(1e6 * (1 + i), "instructions") for i in range(len(paths))]
    calls.clear()
    out = time_all(paths, Target(device="local", fmt="tflite", dtype="int8", jobs=2, passes=1), tmp_path)
    assert len(calls) == 1 and [v for v, _, _ in out] == [1.0 + i for i in range(len(paths))]


def test_a_table_written_before_the_weight_term_still_loads():
    table = _synthetic_table([(-1, 128), (0.5, 192)])
    doc = lt.to_json(table)
    doc["assembly"] = {"scale": 1.2, "offset": 0.1}  # the earlier file: no per_weight_mb, no per_streamed_mb
    del doc["llc_bytes"]
    old = lt.from_json(doc)
    assert old.assembly == (1.2, 0.0, 0.0, 0.1) and old.llc_bytes is None
    spec = variant(0.2, 176)
    assert old.predict(spec, 176) == pytest.approx(1.2 * old.kernel_sum(kernels(spec, 176))[0] + 0.1, rel=1e-12)


def test_streamed_weights_follow_the_working_set_against_the_cache(tmp_path):
    # phi 1 at 224 px in fp32: 36.4 MB of weights and 8.3 MB of its largest kernel's activations.
    spec = variant(1, 224)

    def streamed(res, llc):
        return lt.memory_mb(spec, res, "fp32", llc)["streamed_mb"]

    ws = lt.memory_mb(spec, 224, "fp32", None)["working_set_mb"]
    assert ws == pytest.approx(lt.weight_mb(spec, "fp32") + lt.activation_mb(spec, 224, "fp32"), rel=1e-12)
    assert lt.activation_mb(spec, 224, "fp32") == pytest.approx(4 * lt.activation_mb(spec, 224, "int8"), rel=1e-12)
    assert lt.memory_mb(spec, 224, "fp32", None)["weight_mb"] == lt.weight_mb(spec, "fp32")
    below, above = int(ws * 1e6) + 1, int(ws * 1e6) - 1  # cache just larger / just smaller than the working set
    assert streamed(224, below) == 0.0
    assert streamed(224, above) == lt.weight_mb(spec, "fp32")
    assert streamed(224, None) == 0.0 == streamed(224, 0)
    # The activations decide near the knee: the same weights at a larger size no longer fit.
    assert lt.memory_mb(spec, 288, "fp32", None)["working_set_mb"] > ws
    # A table with a cache size predicts with the streamed term and keeps the size in its file.
    table = _synthetic_table([(-1, 128), (0.5, 192)])
    table = lt.LatencyTable(**{**table.__dict__, "dtype": "fp32", "assembly": (1.0, 0.0, 0.5, 0.0), "llc_bytes": above})
    base = table.kernel_sum(kernels(spec, 224))[0]
    assert table.predict(spec, 224) == pytest.approx(base + 0.5 * lt.weight_mb(spec, "fp32"), rel=1e-12)
    lt.save(table, tmp_path / "t.json")
    assert lt.load(tmp_path / "t.json").llc_bytes == above


def test_last_level_cache_is_read_from_sysfs(tmp_path):
    from device_bench.sysinfo import llc_bytes

    for index, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                                 (2, "Unified", "1024K"), (3, "Unified", "32768K")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert llc_bytes(tmp_path) == 32 * 2**20
    assert llc_bytes(tmp_path / "missing") == 0  # unknown: no weights count as streamed
