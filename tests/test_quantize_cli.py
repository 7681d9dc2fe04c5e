"""``edge-se quantize`` / ``edge-se train`` (edge_se.commands): bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import pytest

from edge_se.cli import main


def _one_line_error(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert pattern in err[0], err[0]


def test_unknown_policy(capsys, tmp_path):
    argv = ["quantize", "mobilenetv3_small_100", "--policy", "ptq,magic", "--out", str(tmp_path / "q")]
    _one_line_error(capsys, argv, "unknown policy 'magic'")


@pytest.mark.parametrize("flag", ["--calib-size", "--calib-samples"])  # the new spelling and the deprecated one
def test_calibration_size_zero_is_an_argparse_error(capsys, tmp_path, flag):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "mobilenetv3_small_100", flag, "0", "--out", str(tmp_path / "q")])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "deprecated" not in line]
    assert len(err) == 1 and "--calib-size must be >= 1, got 0" in err[0], err


def test_bad_format_through_the_old_spelling(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "mobilenetv3_small_100", "--target", "onnx", "--out", str(tmp_path / "q")])
    assert exc.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


def test_empty_and_missing_data_folders(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, ["quantize", "mobilenetv3_small_100", "--calib", str(empty), "--out", str(tmp_path / "q")],
                    f"data folder {empty} holds no images")
    _one_line_error(capsys, ["train", "mobilenetv3_small_100", "--data", str(tmp_path / "nope"), "--out",
                             str(tmp_path / "w.pt")], "does not exist")


def test_unknown_model_and_malformed_weights(capsys, tmp_path):
    _one_line_error(capsys, ["train", "resnet9000", "--out", str(tmp_path / "w.pt")], "unknown model 'resnet9000'")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    (tmp_path / "bad.pt.json").write_text('{"model": "mobilenetv3_small_100", "num_classes": 10, "resolution": 32}')
    _one_line_error(capsys, ["quantize", "mobilenetv3_small_100", "--weights", str(bad), "--calib", "random",
                             "--out", str(tmp_path / "q")], f"weights file {bad} is not a readable state dict")


def test_bad_engine_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "mobilenetv3_small_100", "--engine", "tvm", "--out", "x"])
    assert exc.value.code == 2
    assert "invalid choice: 'tvm'" in capsys.readouterr().err


def test_unknown_int8_rewrite(capsys, tmp_path):
    argv = ["quantize", "mobilenetv3_small_100", "--int8-rewrites", "silu,swish", "--out", str(tmp_path / "q")]
    _one_line_error(capsys, argv, "--int8-rewrites: unknown int8 rewrite 'swish'")
