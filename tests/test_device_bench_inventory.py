"""Device inventory parsing and ``edge-se devices`` probing."""

from __future__ import annotations

import json

import pytest

from device_bench import inventory
from device_bench.transports.base import DeviceError
from edge_se.cli import main

GOOD = """
[devices.here]
transport = "local"
threads = 2
runtimes = ["tflite"]

[devices.pi]
transport = "ssh://pi@127.0.0.1:1"
threads = 4
connect_timeout_s = 3
ssh_options = ["-o", "StrictHostKeyChecking=no"]

[devices.arm]
transport = "qemu-aarch64"
"""


def test_load_valid(tmp_path):
    p = tmp_path / "d.toml"
    p.write_text(GOOD)
    inv = inventory.load(p)
    assert list(inv) == ["here", "pi", "arm"]
    assert inv["here"].threads == 2 and inv["here"].runtimes == ("tflite",)
    assert inv["pi"].options["ssh_options"] == ["-o", "StrictHostKeyChecking=no"]
    assert inv["arm"].runtimes == inventory.RUNTIMES


@pytest.mark.parametrize("text, match", [
    ('[devices.x]\ntransport = "local"\nthreds = 2\n', "unknown key 'threds'"),
    ('[devices.x]\nthreads = 2\n', "devices.x: missing required key 'transport'"),
    ('[devices.x]\ntransport = "local"\nthreads = "four"\n', r"devices.x.threads: expected int"),
    ('[devices.x]\ntransport = "local"\nruntimes = ["onnx"]\n', r"devices.x.runtimes: unknown \['onnx'\]"),
    ('[devices.x]\ntransport = "local"\nthreads = 0\n', "must be >= 1"),
    ("not toml [", "not valid TOML"),
])
def test_load_errors_name_the_field(tmp_path, text, match):
    p = tmp_path / "d.toml"
    p.write_text(text)
    with pytest.raises(DeviceError, match=match):
        inventory.load(p)


def test_devices_command_probes_each(tmp_path, capsys, monkeypatch):
    p = tmp_path / "d.toml"
    p.write_text(GOOD)
    monkeypatch.setenv("EDGE_SE_ARM_EMU", str(tmp_path / "no-emu"))
    assert main(["devices", "--inventory", str(p)]) == 0
    recs = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert recs["here"]["probe"]["reachable"] is True and recs["here"]["probe"]["machine"]
    assert recs["pi"]["probe"]["reachable"] is False and "connection refused" in recs["pi"]["probe"]["error"]
    assert recs["arm"]["probe"]["reachable"] is False and "make arm-emu" in recs["arm"]["probe"]["error"]
    assert main(["devices", "--inventory", str(p), "--no-probe"]) == 0
    assert all("probe" not in json.loads(x) for x in capsys.readouterr().out.splitlines())
