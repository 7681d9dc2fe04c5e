"""The SE ablation study: variant transformation, config errors, and the tiny study end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_se.accounting import count
from edge_se.cli import main
from edge_se.plan import resolve
from edge_se.registry import get_spec
from studies.ablation import StudyConfig, load_config, variants, with_ratio, with_se_option, without_se

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "study_tiny.toml"


def _by_name(vs):
    return {v.name: v for v in vs}


def test_ratio_16_gives_expected_reduced_channels():
    # mobilenetv3_small_100 block 4: 240 expanded channels; r=16 -> 240/16 = 15 -> make_divisible(15, 8) = 16;
    # the family's own r=4 -> 60 -> 64 (torchvision: _make_divisible(240 // 4, 8) = 64).
    base = get_spec("mobilenetv3_small_100", num_classes=10)
    assert resolve(base)[4].se.channels == 240 and resolve(base)[4].se.reduced == 64
    r16 = with_ratio(base, 16)
    assert resolve(r16)[4].se.reduced == 16
    from edge_se.network import build

    fc1 = dict(build(r16).named_modules())["blocks.4.se.fc1"]
    assert fc1.out_channels == 16 and fc1.in_channels == 240


def test_variants_are_pure_transformations():
    base = get_spec("mobilenetv3_small_100", num_classes=10)
    before = repr(base)
    vs = _by_name(variants(base, StudyConfig()))
    assert repr(base) == before  # the base spec is unchanged
    assert set(vs) == {"base", "no-se", "r8", "r16", "r32", "pre", "post", "identity", "sigmoid", "softmax"}
    assert set(vs["base"].also) == {"r4", "standard", "hsigmoid"}  # MobileNetV3's own design is not trained twice
    assert vs["pre"].spec.se.placement == "pre" and vs["pre"].spec.se.gate == "hsigmoid"
    assert vs["softmax"].spec.se.gate == "softmax" and vs["softmax"].spec.se.placement == "standard"
    assert vs["r32"].spec.se.ratio == pytest.approx(1 / 32)
    assert vs["r32"].spec.name == "mobilenetv3_small_100_r32"
    # only the SE block differs: every other field equals the base's
    assert vs["r16"].spec.with_(se=base.se, name=base.name) == base


def test_nose_has_no_se():
    base = get_spec("mobilenetv3_small_100", num_classes=10)
    nose = without_se(base)
    acc = count(nose, 32)
    assert nose.se is None and acc.se_params == 0 and acc.se_blocks == 0
    assert acc.summary()["se_params_share"] == 0 and acc.summary()["se_macs_share"] == 0
    assert acc.params < count(base, 32).params
    # the twin equals the registry's own no-SE twin
    assert nose.with_(name="x") == get_spec("mobilenetv3_small_100_nose", num_classes=10).with_(name="x")


def test_se_option_rejects_unknown():
    base = get_spec("mobilenetv3_small_100")
    with pytest.raises(Exception, match="unknown gate 'tanh'"):
        with_se_option(base, gate="tanh")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[study]\nmodle = 'x'\n", "study.modle: unknown key"),
        ("[variants]\ngates = ['tanh']\n", "variants.gates: unknown gate 'tanh'"),
        ("[variants]\nplacements = ['middle']\n", "variants.placements: unknown placement 'middle'"),
        ("[variants]\nratios = [16, 0]\n", "variants.ratios: bad reduction ratio 0"),
        ("[variants]\nratios = [-4]\n", "variants.ratios: bad reduction ratio -4"),
        ("[study]\nmodel = 'mobilenetv9'\n", "study.model: unknown model 'mobilenetv9'"),
        ("[study]\nmodel = 'resnet50'\n", "study.model: 'resnet50' has no SE blocks"),
        ("[study]\nmodel = 'mobilenetv3_small_100_nose'\n", "has no SE blocks"),
        ("[study]\ndata = 'imagenet'\n", "study.data: unknown dataset 'imagenet'"),
        ("[sweep]\nx = 1\n", "[sweep]: unknown section"),
        ("[export]\nvariants = ['r7']\n", "export.variants: unknown variant 'r7'"),
        ("[export]\nfallback_policy = 'magic'\n", "export.fallback_policy: unknown"),
    ],
)
def test_config_errors_are_one_line(tmp_path, capsys, body, expected):
    path = _write(tmp_path, body)
    assert main(["study", "ablation", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err and str(path) in err, err


def test_missing_config_file(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert main(["study", "ablation", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.toml not found" in err


def test_shipped_configs_load():
    full = load_config(REPO / "configs" / "study_ablation.toml")
    assert full.ratios == (4, 8, 16, 32) and full.seeds == 3
    tiny = load_config(TINY)
    assert len(variants(get_spec(tiny.model), tiny)) == 2 and tiny.seeds == 1 and not tiny.export


@pytest.mark.slow
def test_tiny_study_end_to_end_and_cached(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "ablation", str(TINY), "--out", str(out), "--no-export"]) == 0
    first = capsys.readouterr()
    md = (out / "study_ablation.md").read_text()
    variant_cells = {c.strip() for line in md.splitlines() if line.startswith("|") for c in line.strip("|").split("|")}
    assert {"base", "no-se"} <= variant_cells and "r nominal (effective)" in md
    assert "base vs no-se" in md  # the verdict line
    assert (out / "study_ablation.png").stat().st_size > 0
    lines = [json.loads(x) for x in (out / "study_ablation.jsonl").read_text().splitlines()]
    cells = [r for r in lines if r["kind"] == "train"]
    assert {c["variant"] for c in cells} == {"base", "no-se"}
    for c in cells:
        for key in ("key", "seed", "init", "recipe", "versions", "cpu", "spec", "accuracy", "params", "macs",
                    "se_params_share", "weights_sha256"):
            assert key in c, key
        assert 0.0 <= c["accuracy"] <= 1.0 and c["recipe"]["epochs"] == 1 and c["init"]["linear"] == "recipe"
        assert c["spec"]["num_classes"] == 10
    nose = next(c for c in cells if c["variant"] == "no-se")
    assert nose["se_params"] == 0 and nose["se_params_share"] == 0
    assert "0 cell(s) from the cache, 2 computed" in first.err

    assert main(["study", "ablation", str(TINY), "--out", str(out), "--no-export"]) == 0
    again = capsys.readouterr()
    assert "2 cell(s) from the cache, 0 computed" in again.err
    relines = [json.loads(x) for x in (out / "study_ablation.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in relines if r["kind"] == "train"] == [c["accuracy"] for c in cells]
