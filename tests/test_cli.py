"""The ``edge-se`` CLI contract of the foundation: models, info, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edge_se
from edge_se.cli import main

EDGE_SE = str(Path(sys.executable).with_name("edge-se"))


def test_models_lists_every_name_once(capsys):
    assert main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert names == sorted(set(names))
    for required in [
        "efficientnet_b0",
        "efficientnet_b7",
        "mobilenetv3_large_100",
        "mobilenetv3_small_100",
        "seresnet50",
        "resnet50",
        "efficientnet_b0_nose",
        "seresnet50_nose",
    ]:
        assert required in names
    assert "resnet50_nose" not in names  # no SE, no twin


def test_info_json_has_the_contract_keys(capsys):
    assert main(["info", "efficientnet_b0", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    for key in ("name", "resolution", "params", "macs", "se_params", "se_macs"):
        assert key in obj
    assert obj["resolution"] == 224 and obj["params"] == 5_288_548
    assert main(["info", "efficientnet_phi1.5", "--json", "--resolution", "128"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["resolution"] == 128 and obj["macs"] == edge_se.count(edge_se.get_spec("efficientnet_phi1.5"), 128).macs


def test_info_table_shows_se_share(capsys):
    assert main(["info", "mobilenetv3_small_100", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "SE" in out and "blocks.0.se.fc1" in out and "%" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["info", "efficientnet_b9"], "unknown model 'efficientnet_b9'; valid: efficientnet_b0"),
        (["info", "resnet50_nose"], "has no SE blocks"),
        (["info", "resnet50", "--resolution", "16"], "bad resolution 16"),
        (["info", "resnet50", "--resolution", "x"], "--resolution must be an integer"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, needle, tmp_path):
    proc = subprocess.run([EDGE_SE, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_weights_file_on_the_cli(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not torch")
    proc = subprocess.run(
        [EDGE_SE, "info", "efficientnet_b0", "--weights", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bad.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_info_checks_good_weights(tmp_path, capsys):
    model = edge_se.build_model("mobilenetv3_small_050", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert main(["info", "mobilenetv3_small_050", "--weights", str(tmp_path / "w.pt"), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["weights"]["source"] == "edge_se" and obj["weights"]["num_classes"] == 10


def test_import_edge_se_does_not_pull_upper_layers():
    upper = "('quantize', 'export', 'device_bench')"
    code = f"import sys, edge_se, edge_se.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {upper}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    ).stdout
    assert out.strip() == "[]"


def test_import_edge_se_and_help_do_not_load_torch():
    """``import edge_se`` and ``edge-se --help`` stay light: torch is loaded when a network is built."""
    code = ("import sys, edge_se, edge_se.cli; edge_se.cli.build_parser(); "
            "edge_se.count(edge_se.get_spec('efficientnet_b0')); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"



@pytest.mark.parametrize("package", ["edge_se", "quantize", "export"])
def test_no_lazy_name_is_also_a_submodule(package):
    """Importing a submodule binds its name on the package, over a lazy attribute of the same name.

    ``edge_se.build`` (the function) was also ``edge_se/build.py``: once anything imported that
    module, ``edge_se.build(spec)`` called a module ("'module' object is not callable").
    """
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not set(pkg._LAZY) & submodules
    for name in pkg._LAZY:  # and the names resolve to what the table says, not to a module
        assert not isinstance(getattr(pkg, name), type(pkg)), name

def test_help_never_says_default_none():
    from edge_se.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert "(default: None)" not in parser.format_help(), name


def test_exit_code_2_for_bad_input_3_for_a_failed_stage(monkeypatch, capsys):
    """Bad input is the user's to fix (2); a toolchain stage failing on valid input is not (3)."""
    from edge_se.errors import StageError

    assert main(["info", "no_such_model"]) == 2
    assert "error:" in capsys.readouterr().err

    def broken_lowering(args):
        raise StageError("lower (ExecuTorch/XNNPACK)", "RuntimeError: unsupported op", operator="aten.foo")

    monkeypatch.setattr("edge_se.commands.run_models", broken_lowering)  # bound when the parser is built
    assert main(["models"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lower (ExecuTorch/XNNPACK) failed at operator aten.foo" in err
    with pytest.raises(StageError):
        main(["--traceback", "models"])
