"""scripts/bench_scale.py's ``--merge``: tables of separate runs join one results file (nothing is measured here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from edge_se.errors import EdgeSeError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_scale  # noqa: E402

HOST_A = {"cpu_model": "CPU A", "machine": "x86_64", "cpu_count": 2, "cpu_flags": "avx avx2"}
HOST_B = {"cpu_model": "CPU B", "machine": "x86_64", "cpu_count": 2, "cpu_flags": "avx avx2 avx512_vnni"}


def _row(fmt: str, dtype: str, measured: float, system: dict, held_out: bool = True) -> dict:
    return {"format": fmt, "dtype": dtype, "device": "qemu-aarch64", "name": "efficientnet_phi0", "resolution": 96,
            "held_out": held_out, "macs": 1e8, "unit": "instructions", "predicted": measured * 1.02,
            "measured": measured, "error_pct": 2.0, "table_entries": 3, "table_s": 1.0, "system": system}


def test_merge_keeps_other_tables_with_their_own_host_and_replaces_the_rerun_ones(tmp_path):
    results = tmp_path / "r"
    lines = [_row("pte", "int8", 1e7, HOST_A), _row("pte", "fp32", 3e7, HOST_A), _row("tflite", "int8", 9e6, HOST_A)]
    results.with_suffix(".jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    kept = bench_scale.kept_lines(bench_scale.read_lines(results), device="qemu-aarch64",
                                  combos=[("tflite", "int8"), ("tflite", "fp32")], scale=False, where="r.jsonl")
    # the earlier tflite int8 line is the one this run measures again: dropped; the pte lines stay as they were
    assert [(r["format"], r["dtype"], r["measured"]) for r in kept] == [("pte", "int8", 1e7), ("pte", "fp32", 3e7)]
    assert all(r["system"] == HOST_A for r in kept)
    rows = kept + [_row("tflite", "int8", 8e6, HOST_B)]
    args = argparse.Namespace(
        device="qemu-aarch64", pte_runner="native", build="0@160", heldout=1, seed=5, phi_lo=-2.0, phi_hi=1.5,
        res_lo=96, res_hi=256, passes=None, jobs=2)
    md = bench_scale.markdown(rows, None, HOST_B, args)
    # each host is named with the tables it ran, so a merged file never passes one host's line off for both
    assert "CPU A (x86_64, 2 logical CPUs); flags: avx avx2 for pte int8, pte fp32" in md
    assert "CPU B (x86_64, 2 logical CPUs); flags: avx avx2 avx512_vnni for tflite int8" in md
    one = bench_scale.markdown(kept, None, HOST_B, args)
    assert "CPU: CPU A (x86_64" in one and "CPU B" not in one  # one host: the rows' own, not this run's


def test_merge_refuses_another_device_in_one_line(tmp_path):
    results = tmp_path / "r"
    results.with_suffix(".jsonl").write_text(json.dumps(_row("pte", "int8", 1e7, HOST_A) | {"device": "local"}) + "\n")
    with pytest.raises(EdgeSeError, match=r"r.jsonl: holds device local; --merge with --device qemu-aarch64"):
        bench_scale.kept_lines(bench_scale.read_lines(results), device="qemu-aarch64", combos=[("pte", "int8")],
                               scale=False, where="r.jsonl")
