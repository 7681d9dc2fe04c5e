"""One CLI vocabulary: a concept has the same flag, meaning and default in every subcommand (edge_se.cliargs)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edge_se import cliargs
from edge_se.cli import build_parser

EDGE_SE = str(Path(sys.executable).with_name("edge-se"))

# concept -> flag, in every subcommand that takes it
SHARED = {
    "quantization policy": "--policy",
    "PT2E engine": "--engine",
    "int8 rewrites": "--int8-rewrites",
    "calibration source": "--calib",
    "calibration size": "--calib-size",
    "weights file": "--weights",
    "input resolution": "--resolution",
    "seed": "--seed",
}
OLD_SPELLINGS = {"--target": "--format", "--calib-samples": "--calib-size"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _visible(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS


@pytest.fixture(scope="module")
def parsers():
    return _subparsers()


@pytest.mark.parametrize("concept", sorted(SHARED))
def test_quantize_and_export_share_flag_default_and_choices(parsers, concept):
    flag = SHARED[concept]
    q, e = _options(parsers["quantize"])[flag], _options(parsers["export"])[flag]
    assert q.dest == e.dest
    assert q.default == e.default, (concept, q.default, e.default)
    assert q.choices == e.choices
    assert _visible(q) and _visible(e)


def test_the_defaults_are_the_documented_ones(parsers):
    """Real data and plain PTQ by default: a default must never be worse than plain PTQ."""
    from quantize.policies import DEFAULT_POLICY

    assert DEFAULT_POLICY == ("ptq",)
    for name in ("quantize", "export"):
        opts = _options(parsers[name])
        assert opts["--policy"].default == "ptq", name
        assert opts["--calib"].default == "digits", name
        assert opts["--calib-size"].default == cliargs.DEFAULT_CALIB_SIZE == 64, name
        assert opts["--engine"].default == "torchao", name
        assert opts["--int8-rewrites"].default == "default", name
        assert opts["--seed"].default == 0, name
    assert _options(parsers["quantize"])["--format"].default == "pte"
    assert _options(parsers["export"])["--format"].default == "all"
    # the formats quantize can target are export's, less "all"
    q_formats = set(_options(parsers["quantize"])["--format"].choices)
    assert q_formats | {"all"} == set(_options(parsers["export"])["--format"].choices)


def test_every_subcommand_spells_a_concept_one_way(parsers):
    """No visible option of any subcommand uses a retired spelling; a shared flag has one dest and default."""
    for name, parser in parsers.items():
        opts = _options(parser)
        for old in OLD_SPELLINGS:
            if old in opts:
                assert not _visible(opts[old]), (name, old)
    defaults = {"--calib": cliargs.DEFAULT_CALIB, "--calib-size": cliargs.DEFAULT_CALIB_SIZE,
                "--seed": cliargs.DEFAULT_SEED, "--threads": cliargs.DEFAULT_THREADS, "--weights": None}
    for name in ("info", "train", "quantize", "export"):  # the subcommands built from edge_se.cliargs
        opts = _options(parsers[name])
        for flag, default in defaults.items():
            if flag in opts:
                assert opts[flag].dest == flag.lstrip("-").replace("-", "_"), (name, flag)
                assert opts[flag].default == default, (name, flag)
    assert {"--threads", "--seed", "--weights", "--resolution"} <= set(_options(parsers["train"]))


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["quantize", "m", "--target", "tflite", "--out", "q"], "format", "tflite"),
        (["export", "m", "--calib-samples", "8", "--out", "d"], "calib_size", 8),
        (["quantize", "m", "--calib-samples", "8", "--out", "q"], "calib_size", 8),
    ],
)
def test_old_spelling_parses_to_the_new_dest_with_one_warning_line(argv, dest, value, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    old = next(a for a in argv if a in OLD_SPELLINGS)
    assert not hasattr(args, old.lstrip("-").replace("-", "_"))  # nothing stored under the old name
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert old in err[0] and OLD_SPELLINGS[old] in err[0] and "deprecated" in err[0]


def test_new_spelling_prints_nothing(capsys):
    args = build_parser().parse_args(["quantize", "m", "--format", "tflite", "--calib-size", "8", "--out", "q"])
    assert (args.format, args.calib_size) == ("tflite", 8)
    assert capsys.readouterr().err == ""


def test_old_spelling_keeps_the_new_flags_checks(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["quantize", "m", "--target", "onnx", "--out", "q"])
    assert exc.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "m", "--calib-samples", "0", "--out", "d"])
    assert "--calib-size must be >= 1, got 0" in capsys.readouterr().err


def test_old_spellings_are_hidden_from_help(parsers):
    for name in ("quantize", "export"):
        text = parsers[name].format_help()
        assert "--target" not in text and "--calib-samples" not in text, name


def test_help_never_says_default_none_and_shows_the_real_defaults(parsers):
    for name, parser in parsers.items():
        assert "(default: None)" not in parser.format_help(), name
    text = " ".join(parsers["quantize"].format_help().split())
    assert "(default: ptq)" in text and "(default: digits)" in text and "(default: 64)" in text


def test_train_subcommand_parses_with_the_shared_groups(parsers):
    args = build_parser().parse_args(["train", "mobilenetv3_small_100", "--epochs", "2", "--threads", "1",
                                      "--seed", "3", "--out", "w.pt"])
    assert (args.model, args.data, args.epochs, args.resolution) == ("mobilenetv3_small_100", "digits", 2,
                                                                     cliargs.DEFAULT_RESOLUTION)
    assert (args.seed, args.threads, args.weights, args.out) == (3, 1, None, "w.pt")
    assert args.func.__module__ == "edge_se.commands"


def _readme_commands() -> list[list[str]]:
    """Every ``edge-se ...`` line of README.md's bash blocks, as argv (first of ``a|b`` alternatives, no ``[ ]``)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands, in_bash, pending = [], False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            in_bash = raw.strip() == "```bash"
            continue
        line = pending + raw.strip()
        pending = ""
        if not in_bash or not line.startswith("edge-se "):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        argv = [t.split("|")[0].strip("[]") for t in shlex.split(line, comments=True)[1:]]
        commands.append([t for t in argv if t])
    return commands


README_COMMANDS = _readme_commands()


def test_readme_lists_the_commands():
    names = {argv[0] for argv in README_COMMANDS}
    assert {"models", "info", "train", "quantize", "export", "verify", "bench", "run", "report"} <= names, names


@pytest.mark.parametrize("argv", README_COMMANDS, ids=[" ".join(a)[:60] for a in README_COMMANDS])
def test_readme_examples_parse_without_warnings(argv, capsys):
    """README.md's CLI examples parse (nothing runs) and use no deprecated spelling."""
    build_parser().parse_args(argv)
    assert capsys.readouterr().err == ""


def test_deprecation_line_on_the_real_command():
    """The installed command prints the notice once, on stderr, and then goes on (here: to --help)."""
    proc = subprocess.run([EDGE_SE, "quantize", "m", "--target", "pte", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stderr.strip().splitlines() == ["edge-se quantize: warning: --target is deprecated; use --format"]
