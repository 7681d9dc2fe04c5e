"""Device-vs-host parity rules (pure numpy) and the golden parity data they read.

The golden rule judges an int8 device run that failed the one-step rule against the int8 error
itself; these tests build the three outputs (float model, host, device) by hand so each verdict is
known in advance.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from contract.errors import ContractError
from contract.files import sha256_bytes
from device_bench import parity
from device_bench.manifest import load_golden

RNG = np.random.default_rng(0)
#: 8 golden inputs of 10 logits each, as the export writes them ([1, classes] per input).
FLOAT = [RNG.standard_normal((1, 10)) * 4.0 for _ in range(8)]


def _noisy(ref: list[np.ndarray], rel: float, seed: int) -> list[np.ndarray]:
    """``ref`` plus Gaussian noise of ``rel`` times its RMS (SQNR about -20 log10(rel) dB)."""
    rng = np.random.default_rng(seed)
    rms = math.sqrt(float(np.mean(np.concatenate([r.ravel() for r in ref]) ** 2)))
    return [r + rng.standard_normal(r.shape) * rel * rms for r in ref]


def test_sqnr_db_known_values():
    x = [np.array([3.0, 4.0])]
    assert parity.sqnr_db(x, x) == math.inf
    # signal 25, noise 0.25: 20 dB exactly
    assert parity.sqnr_db([np.array([3.5, 4.0])], x) == pytest.approx(20.0, abs=1e-12)
    assert parity.sqnr_db([np.array([1.0])], [np.array([0.0])]) == -math.inf


def test_golden_rule_passes_jitter_below_the_int8_error():
    host = _noisy(FLOAT, 0.1, 1)  # int8 error: about 20 dB vs float
    device = _noisy(host, 0.03, 2)  # rounding jitter: about 30 dB vs host
    g = parity.golden_compare(host, device, FLOAT)
    assert g["passed"], g
    assert g["sqnr_db_device_vs_host"] > g["sqnr_db_host_vs_float"] + 5.0, "the jitter is ~10 dB below the int8 error"
    assert not g["bit_identical"] and g["samples"] == 8
    json.dumps(g)  # JSON-ready


def test_golden_rule_fails_a_wrong_kernel():
    host = _noisy(FLOAT, 0.1, 1)
    device = _noisy(host, 0.5, 3)  # departs from the host five times as far as int8 from float (~6 dB)
    g = parity.golden_compare(host, device, FLOAT)
    assert not g["passed"], g
    assert g["sqnr_db_device_vs_host"] < g["sqnr_db_host_vs_float"]
    assert g["sqnr_db_device_vs_float"] < g["sqnr_db_host_vs_float"]


def test_golden_rule_identical_and_bad_lengths():
    host = _noisy(FLOAT, 0.1, 1)
    g = parity.golden_compare(host, [h.copy() for h in host], FLOAT)
    assert g["passed"] and g["bit_identical"] and g["sqnr_db_device_vs_host"] == "inf" and g["max_abs_diff"] == 0.0
    with pytest.raises(ValueError, match="one host, device and float output per input"):
        parity.golden_compare(host, host[:3], FLOAT)


def _golden_files(tmp_path, arrays: dict[str, np.ndarray], *, sha: str | None = None) -> dict:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (tmp_path / "m.pte.parity.npz").write_bytes(buf.getvalue())
    return {"dtype": "int8", "parity": {"golden": {"file": "m.pte.parity.npz",
                                                    "sha256": sha or sha256_bytes(buf.getvalue())}}}


def test_load_golden_reads_and_refuses(tmp_path):
    art = tmp_path / "m.pte"
    full = {"inputs": np.zeros((2, 1, 3, 4, 4), np.float32), "reference": np.zeros((2, 1, 10), np.float32),
            "real": np.zeros(2, bool), "float_reference": np.ones((2, 1, 10), np.float32)}
    got = load_golden(art, _golden_files(tmp_path, full))
    assert got["float_reference"].shape == (2, 1, 10)
    with pytest.raises(ContractError, match="has no parity.golden"):
        load_golden(art, {"dtype": "int8", "parity": {}})
    with pytest.raises(ContractError, match=r"m\.pte\.parity\.npz.*sha256"):
        load_golden(art, _golden_files(tmp_path, full, sha="0" * 64))
    no_float = {k: v for k, v in full.items() if k != "float_reference"}
    with pytest.raises(ContractError, match="lacks array.*float_reference"):
        load_golden(art, _golden_files(tmp_path, no_float))
    (tmp_path / "m.pte.parity.npz").unlink()
    with pytest.raises(ContractError, match="is missing"):
        load_golden(art, {"dtype": "int8", "parity": {"golden": {"file": "m.pte.parity.npz", "sha256": "x"}}})
