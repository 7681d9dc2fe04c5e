"""``quantize_model``: PT2E int8 quantisation of any network under a named, SE-aware policy.

Example:
    >>> import torch, edge_se
    >>> from quantize import quantize_model
    >>> model = edge_se.build_model("mobilenetv3_small_100", num_classes=10).eval()
    >>> calib = [torch.randn(8, 3, 64, 64)]
    >>> qm = quantize_model(model, (calib[0][:1],), calib, target="pte", policy="gate-fixed")
    >>> len(qm.se_blocks), qm.policy
    (9, ('gate-fixed',))
    >>> qm.graph(calib[0][:2]).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.fx import GraphModule

from edge_se.errors import EdgeSeError, first_line
from quantize.adaround import AdaRoundConfig, adaround, record
from quantize.adaround import summary as adaround_summary
from quantize.aligned import aligned_float_graph, restore, snapshot
from quantize.calibration import check_size, k_center_indices, pool_images, random_indices
from quantize.capture import run_graph
from quantize.float_prefix import float_prefix as make_float_prefix
from quantize.int8_ops import resolve_rewrites
from quantize.metrics import gate_error, logits_report
from quantize.mixed_precision import FloatLayers, choose
from quantize.policies import (
    DEFAULT_LATENCY_BUDGET_PCT,
    ENGINES,
    PolicyPlan,
    check_latency_budget,
    float_layers_for,
    resolve_policy,
)
from quantize.qat import QATConfig, qat
from quantize.qat import record as qat_record
from quantize.qat import summary as qat_summary
from quantize.quantizers import TARGETS, QuantizerOptions, make_quantizer, se_edits
from quantize.se_pattern import SEBlock, find_se_blocks

# Images per calibration forward pass.
CALIB_BATCH = 32
# Activation observer -> NNCF's RangeEstimatorParametersSet name (None: NNCF's own default). histogram:
# NNCF's default estimator; percentile: mean of per-batch quantiles. An observer missing here
# (``outlier``) has no NNCF counterpart.
NNCF_ESTIMATORS: dict[str, str | None] = {"histogram": None, "minmax": "MINMAX", "percentile": "MEAN_QUANTILE"}
# `auto`, stage 1: these recipes, measured on its evaluation images (held back from the pool), the
# baseline first; they change ranges (the squeeze's own grid included) and bias constants only, so the
# graph and its latency are plain int8's. Of those that beat the baseline (_worse_than, _no_gain), the
# best by _auto_score is kept. Stage 2, only while the targets below are unmet: SE blocks
# moved to fp32 (a latency and size cost, recorded as extra_bytes per step).
AUTO_RECIPES: tuple[str, ...] = ("ptq", "act-outlier", "bias-correction", "act-outlier,bias-correction",
                                 "se-squeeze-grid", "se-squeeze-grid,bias-correction")
# `auto` stops when the quantised logits reach both figures on its evaluation images ...
AUTO_TARGET_SQNR_DB = 30.0
AUTO_TARGET_AGREEMENT = 0.995
# ... or after this many blocks were moved to fp32, and evaluates on at most this many images.
AUTO_MAX_FLOAT_BLOCKS = 6
AUTO_EVAL_IMAGES = 256
# Stage 2 keeps a block in fp32 only if it raised the logits SQNR by at least this much, or top-1
# agreement by at least this fraction (0.5 points; on the 256 evaluation images, one image is 0.4).
AUTO_MIN_GAIN_DB = 1.0
AUTO_MIN_GAIN_AGREEMENT = 0.005
# With a latency probe, an island (stage 2's SE blocks, stage 3's tensors) is kept only if the
# artifact runs within this many percent of plain int8's, measured side by side; stage 3 keeps at most
# this many tensors fp32.
AUTO_LATENCY_BUDGET_PCT = DEFAULT_LATENCY_BUDGET_PCT
AUTO_MAX_FLOAT_TENSORS = 4
# Stage 4 (qat) trains only on pool images outside the evaluation set, and needs at least this many
# (one training batch); with a pool no larger than AUTO_EVAL_IMAGES there are none and it is not tried.
AUTO_QAT_MIN_IMAGES = 32
# Neither stage may buy that gain with a loss elsewhere: a step replaces the current choice only if
# no figure of AUTO_FIGURES is worse than the current one's by more than AUTO_TOLERANCE_DB (the SQNRs)
# or at all (top-1 agreement). bench-quant measured why (results/quant_bench.md): ranked on agreement
# alone, act-outlier won where it lifted agreement by 3 images of 256 while the global SQNR fell from
# 12.9 to 2.2 dB, and on the held-out images agreement then fell too (95.6 -> 94.4%).
AUTO_TOLERANCE_DB = 0.3
AUTO_FIGURES: tuple[str, ...] = ("sqnr_db", "sqnr_db_median", "sqnr_db_worst", "gate_sqnr_db_min", "top1_agreement")


LatencyProbe = Callable[["QuantizedModel", "QuantizedModel"], float]
"""``probe(plain, candidate)``: ``candidate``'s artifact latency over ``plain``'s, measured side by side in the
target's runtime (a ratio; ``export.latency_probe.ArtifactLatencyProbe``). quantize defines the hook, export
supplies it."""


@dataclass
class QuantizedModel:
    """A quantised network and how it was made.

    Attributes:
        graph: output of ``convert_pt2e``: the quantised PyTorch reference, callable on float inputs.
        quantizer: the PT2E quantizer used (``litert_torch.convert`` needs it in
            ``QuantConfig(pt2e_quantizer=...)``; its class subclasses the stock quantizer).
        target: ``pte`` or ``tflite``.
        engine: ``torchao`` or ``nncf``.
        policy: the policy names applied.
        se_blocks: the SE blocks found by pattern in the exported graph (:class:`SEBlock`).
        calibration: ``{"policy", "source", "size", "pool", "seed", "selection", "indices"}``: the
            images actually calibrated on are ``pool[indices]`` (``selection``: ``random``,
            ``gate-coverage`` or ``all`` when the pool is no larger than ``size``).
        rewrites: graph rewrites / special settings applied (recorded in the export manifest).
        reference: the exported float graph (same node names), the reference for gate errors.
        steps: for ``auto``: one record per step (blocks in fp32, figures reached).
        int8_rewrites: the :mod:`quantize.int8_ops` rewrite names requested (``rewrites`` says
            which matched, and on how many nodes).
        float_prefix: the units kept fp32 before the int8 part (:meth:`FloatPrefix.record`), or None.
        float_layers: the tensors ``float-sensitive`` (or ``auto``'s stage 3) kept fp32
            (:meth:`FloatLayers.record`), or None.
        latency_budget_pct: the budget ``auto``'s islands were measured against (None: no probe measured them).
    """

    graph: GraphModule
    quantizer: object
    target: str
    engine: str
    policy: tuple[str, ...]
    se_blocks: list
    calibration: dict
    rewrites: list[str]
    reference: GraphModule | None = None
    steps: list[dict] = field(default_factory=list)
    int8_rewrites: tuple[str, ...] = ()
    float_prefix: dict | None = None
    float_layers: dict | None = None
    latency_budget_pct: float | None = None
    adaround: dict | None = None
    qat: dict | None = None


def export_graph(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> GraphModule:
    """``torch.export.export(model.eval(), example_inputs).module()``: the graph PT2E works on.

    The batch dimension of the first input is exported as dynamic, so that calibration and
    evaluation run whole batches; re-exporting the quantised graph with a batch-1 example (as
    the export package does) specialises it again.
    """
    inputs = tuple(example_inputs)
    first = inputs[0]
    # A batch of 1 would be specialised (0/1 specialisation): trace with the image repeated twice.
    traced = (torch.cat([first, first]) if first.shape[0] == 1 else first,) + inputs[1:]
    dynamic = ({0: torch.export.Dim.DYNAMIC},) + (None,) * (len(inputs) - 1)
    try:
        return torch.export.export(model.eval(), traced, dynamic_shapes=dynamic).module()
    except Exception as exc:  # noqa: BLE001 - a model whose batch cannot be symbolic: keep it static
        # No silent fallback: say which one was taken and why (calibration then runs batch by batch).
        print(f"quantize: the batch dimension cannot be dynamic ({first_line(exc, 160)}); "
              "exporting with a static batch instead", file=sys.stderr)
        return torch.export.export(model.eval(), inputs).module()


def _calibrate_batches(images: torch.Tensor) -> list[torch.Tensor]:
    return [images[i : i + CALIB_BATCH] for i in range(0, images.shape[0], CALIB_BATCH)]


def _quantize_once(
    exported: GraphModule,
    images: torch.Tensor,
    *,
    target: str,
    engine: str,
    options: QuantizerOptions,
) -> tuple[GraphModule, object]:
    """Prepare -> calibrate on ``images`` -> convert, on a copy of ``exported``."""
    quantizer = make_quantizer(target, options)
    gm = copy.deepcopy(exported)
    fold = target == "pte"  # litert-torch's docs require convert_pt2e(fold_quantize=False)
    if engine == "nncf":
        import nncf
        from nncf.experimental.torch.fx import quantize_pt2e as nncf_quantize_pt2e
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        if options.act_observer not in NNCF_ESTIMATORS:
            raise EdgeSeError(f"activation ranges {options.act_observer!r} have no NNCF estimator; "
                              "use --engine torchao for this policy")
        ranges = NNCF_ESTIMATORS[options.act_observer]
        ranges = getattr(RangeEstimatorParametersSet, ranges) if ranges else None
        with torch.no_grad():
            q = nncf_quantize_pt2e(
                gm,
                quantizer,
                nncf.Dataset(_calibrate_batches(images)),
                subset_size=int(images.shape[0]),
                activations_range_estimator_params=ranges,
                fold_quantize=fold,
            )
        return q, quantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(gm, quantizer)  # type: ignore[arg-type]
    with torch.no_grad():
        for batch in _calibrate_batches(images):
            prepared(batch)
    return convert_pt2e(prepared, fold_quantize=fold), quantizer


def _select(
    plan: PolicyPlan, exported: GraphModule, blocks: list[SEBlock], pool: torch.Tensor, size: int, seed: int
) -> tuple[list[int], str]:
    """The pool indices the policy calibrates on, and how they were chosen."""
    if plan.selection == "gate-coverage" and not blocks:
        raise EdgeSeError("policy 'gate-coverage' needs SE blocks, and none were found in this model")
    if size >= pool.shape[0]:
        return list(range(pool.shape[0])), "all"
    if plan.selection == "gate-coverage":
        _, gates = run_graph(exported, pool, blocks)
        features = torch.cat([gates[b.name] for b in blocks], dim=1)
        return k_center_indices(features, size, seed), "gate-coverage"
    return random_indices(pool.shape[0], size, seed), "random"


def quantize_model(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    calib: Sequence[torch.Tensor],
    *,
    target: Literal["pte", "tflite"],
    policy: str | Sequence[str] = "ptq",
    engine: Literal["torchao", "nncf"] = "torchao",
    seed: int = 0,
    calib_size: int | None = None,
    calib_source: str = "unknown",
    rewrites: str | Sequence[str] | None = None,
    float_prefix: int = 0,
    float_layers: int | None = None,
    latency_probe: LatencyProbe | None = None,
    latency_budget_pct: float | None = None,
) -> QuantizedModel:
    """Quantise ``model`` to int8 with PT2E for ``target`` under ``policy``.

    Args:
        model: a float network (put in eval mode; not modified otherwise).
        example_inputs: inputs for ``torch.export`` (e.g. one image ``[1, 3, R, R]``).
        calib: float image batches ``[N, 3, R, R]``, already preprocessed: the calibration pool.
        target: ``pte`` (ExecuTorch XNNPACK quantizer) or ``tflite`` (litert-torch quantizer).
        policy: policy names (see :data:`quantize.policies.POLICIES`), a list or ``"a,b"``.
        engine: ``torchao`` (prepare/convert) or ``nncf`` (NNCF's ``quantize_pt2e``).
        seed: seeds the calibration subset.
        calib_size: images used to calibrate, drawn from the pool (None: all of it).
        calib_source: where the pool came from, for the record (``digits``, a folder, ...).
        rewrites: int8 rewrites (:mod:`quantize.int8_ops`): ``None``/``"default"`` for the
            target's default set, ``"none"`` for the stock quantizer alone, or names.
        float_prefix: the network's first N execution units (``stem``, ``blocks.0``, ...) stay
            fp32 (:mod:`quantize.float_prefix`; 0: none).
        float_layers: with policy ``float-sensitive``, how many int8 tensors to keep fp32 (None:
            :data:`quantize.policies.DEFAULT_FLOAT_LAYERS`); ranked on ``auto``'s held-back
            images (:mod:`quantize.mixed_precision`).
        latency_probe: for ``auto``: measures an island's artifact against plain int8's
            (:data:`LatencyProbe`; ``export.latency_probe`` times both in the target's runtime).
            Without one, ``auto`` keeps SE islands on fidelity alone and tries no stage 3.
        latency_budget_pct: for ``auto`` with a probe: an island is kept only if its artifact runs
            within this many percent of plain int8's (None: :data:`AUTO_LATENCY_BUDGET_PCT`).

    Raises:
        EdgeSeError: an unknown target, engine or policy, empty calibration data, a bad size, a
            float prefix < 0 or covering the whole network, ``float_layers`` without policy
            ``float-sensitive`` or < 1, a latency budget without ``auto`` or <= 0.
    """
    if target not in TARGETS:
        raise EdgeSeError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    if engine not in ENGINES:
        raise EdgeSeError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    plan = resolve_policy(policy)
    float_layers = float_layers_for(plan.names, float_layers)
    check_latency_budget(plan.names, latency_budget_pct)
    try:
        int8_rewrites = resolve_rewrites(rewrites, target)
    except ValueError as exc:
        raise EdgeSeError(str(exc)) from None
    pool = pool_images(calib)
    size = check_size(calib_size, pool.shape[0])
    exported = export_graph(model, example_inputs)
    prefix = make_float_prefix(exported, float_prefix)
    blocks = find_se_blocks(exported)
    if plan.island != "none" and not blocks:
        raise EdgeSeError(f"policy {plan.island!r} needs SE blocks, and none were found in this model")
    indices, selection = _select(plan, exported, blocks, pool, size, seed)
    subset = pool[indices]
    calibration = {"policy": list(plan.names), "source": calib_source, "size": len(indices),
                   "pool": int(pool.shape[0]), "seed": seed, "selection": selection, "indices": indices}

    def options(float_blocks: set[str] | None, recipe: PolicyPlan | None = None,
                float_nodes: Sequence[str] = ()) -> QuantizerOptions:
        """The quantizer's options for ``plan`` (or ``auto``'s ``recipe`` of it) with ``float_blocks`` in fp32."""
        p = recipe or plan
        edits = se_edits(exported, float_blocks=float_blocks, float_mul=p.island != "se-float",
                         fixed_gate=p.fixed_gate, own_squeeze=p.own_squeeze)
        if float_nodes:
            edits = dataclasses.replace(edits, float_nodes=edits.float_nodes | frozenset(float_nodes))
        if prefix is not None:
            edits = dataclasses.replace(edits, float_nodes=edits.float_nodes | frozenset(prefix.nodes),
                                        float_before=prefix.boundary)
        return QuantizerOptions(act_observer=p.act_observer, edits=edits, rewrites=int8_rewrites,
                                equalize=p.equalize)

    def as_model(graph: GraphModule, quantizer: object) -> QuantizedModel:
        return QuantizedModel(graph=graph, quantizer=quantizer, target=target, engine=engine, policy=plan.names,
                              se_blocks=blocks, calibration=calibration, rewrites=[], reference=exported,
                              int8_rewrites=int8_rewrites)

    steps: list[dict] = []
    kept = None
    tuned = None
    auto_note = ""
    budget = AUTO_LATENCY_BUDGET_PCT if latency_budget_pct is None else latency_budget_pct
    if plan.island == "auto":
        found = _auto(exported, blocks, pool, subset, target, engine, plan, options, seed, as_model, latency_probe,
                      budget, tune=float_layers is None)
        graph, quantizer, float_blocks, steps, kept, tuned, auto_note = (
            found.graph, found.quantizer, found.float_blocks, found.steps, found.tensors, found.qat, found.note)
        plan = _with_recipe(plan, found.recipe)
    else:
        float_blocks = {b.name for b in blocks} if plan.island in ("se-float", "se-float-mul") else set()
        graph, quantizer = _quantize_once(exported, subset, target=target, engine=engine,
                                          options=options(float_blocks))
    if float_layers is not None:  # set exactly when the policy is float-sensitive
        chosen = _sensitive(as_model(graph, quantizer), _held_back(pool, seed), float_layers)
        if kept is not None:  # auto's stage 3 kept some already: the record holds both
            chosen = FloatLayers(kept.tensors + chosen.tensors,
                                 kept.nodes + tuple(n for n in chosen.nodes if n not in kept.nodes), chosen.images)
        kept = chosen
        graph, quantizer = _quantize_once(exported, subset, target=target, engine=engine,
                                          options=options(float_blocks, plan, kept.nodes))
        if plan.bias_correction != "none" and plan.island == "auto":  # auto corrected its own graph, not this one
            _correct_biases(graph, exported, quantizer, subset, plan.bias_correction)
    described = _describe(plan, blocks, float_blocks, engine, selection)
    if kept is not None:
        described.append(f"{'float-sensitive' if plan.float_sensitive else 'auto'}: {len(kept.tensors)} int8 "
                         "tensors kept fp32 "
                         f"({', '.join(f'{n} {s:.1f} dB' for n, s, _ in kept.tensors)} isolated), "
                         f"{len(kept.nodes)} operators fp32")
    rounding = None
    if plan.adaround:  # before bias correction: AIMET's order (the biases then correct what rounding left)
        rounding = _adaround(graph, exported, quantizer, subset, _unused(pool, indices, seed), seed)
        described.append(adaround_summary(rounding))
    if plan.qat:
        tuned = _qat(graph, exported, quantizer, blocks, pool, seed)
        described.append(qat_summary(tuned))
    elif tuned is not None:  # auto's stage 4
        described.append(f"auto: {qat_summary(tuned)}" if tuned["accepted"]
                         else f"auto: qat undone ({tuned['rejected']})")
    elif auto_note:
        described.append(auto_note)
    if plan.bias_correction != "none" and plan.island == "auto":
        described.append(f"bias correction ({plan.bias_correction}) on the recipe auto chose")
    elif plan.bias_correction != "none":
        described.append(_correct_biases(graph, exported, quantizer, subset, plan.bias_correction))
    applied = list(getattr(quantizer, "edge_se_applied", []))
    if prefix is not None:
        described.append(f"float prefix: {', '.join(prefix.units)} in fp32 ({len(prefix.nodes)} operators; "
                         f"int8 from {prefix.boundary})")
    return QuantizedModel(graph=graph, quantizer=quantizer, target=target, engine=engine, policy=plan.names,
                          se_blocks=blocks, calibration=calibration, rewrites=described + applied, reference=exported,
                          steps=steps, int8_rewrites=int8_rewrites,
                          float_prefix=prefix.record() if prefix is not None else None,
                          float_layers=kept.record() if kept is not None else None,
                          latency_budget_pct=budget if plan.island == "auto" and latency_probe is not None else None,
                          adaround=rounding, qat=tuned)


def _held_back_indices(n: int, seed: int) -> list[int]:
    """Which of ``n`` pool images ``auto`` measures on and ``float-sensitive`` ranks on (<= ``AUTO_EVAL_IMAGES``)."""
    return random_indices(n, min(AUTO_EVAL_IMAGES, n), seed + 1)


def _held_back(pool: torch.Tensor, seed: int) -> torch.Tensor:
    """The pool images of :func:`_held_back_indices`."""
    return pool[_held_back_indices(pool.shape[0], seed)]


def _sensitive(qm: QuantizedModel, images: torch.Tensor, k: int) -> FloatLayers:
    """The ``k`` costliest tensors of ``qm`` on ``images`` (:func:`quantize.mixed_precision.choose`)."""
    from quantize.diagnose import diagnose, float_graph

    return choose(diagnose(qm, images), float_graph(qm), k, images=int(images.shape[0]))


@dataclass
class _AutoResult:
    """What ``auto`` chose.

    The graph and quantizer, the stage-1 recipe, the SE blocks (stage 2) and tensors (stage 3,
    :class:`FloatLayers` or None) kept fp32, every step measured, and stage 4's qat record (None: not
    tried; ``note`` says why, unless the targets were met).
    """

    graph: GraphModule
    quantizer: object
    recipe: str
    float_blocks: set[str]
    tensors: FloatLayers | None
    steps: list[dict]
    qat: dict | None
    note: str = ""


def _auto(exported, blocks, pool, subset, target, engine, plan, options, seed, as_model, probe,  # noqa: ANN001
          budget_pct, *, tune: bool) -> _AutoResult:
    """The stages of ``auto`` (see :data:`AUTO_RECIPES`); stage 4 (qat) only when ``tune``."""
    eval_indices = _held_back_indices(pool.shape[0], seed)
    eval_images = pool[eval_indices]
    ref_logits, ref_gates = run_graph(exported, eval_images, blocks)
    sizes = {b.name: 2 * b.channels * b.reduced + b.channels + b.reduced for b in blocks}
    steps: list[dict] = []

    def attempt(recipe: str, float_blocks: set[str], float_nodes: Sequence[str] = (),
                tensors: Sequence[str] = ()) -> tuple[GraphModule, object]:
        mixed = _with_recipe(plan, recipe)
        graph, quantizer = _quantize_once(exported, subset, target=target, engine=engine,
                                          options=options(float_blocks, mixed, float_nodes))
        bias = mixed.bias_correction
        if bias != "none":
            _correct_biases(graph, exported, quantizer, subset, bias)
        measure(graph, recipe, float_blocks, tensors)
        return graph, quantizer

    def measure(graph: GraphModule, recipe: str, float_blocks: set[str], tensors: Sequence[str]) -> None:
        """Append ``graph``'s figures on the evaluation images to ``steps``."""
        logits, gates = run_graph(graph, eval_images, blocks)
        report = logits_report(ref_logits, logits)
        errors = [gate_error(b.name, ref_gates[b.name], gates[b.name]) for b in blocks]
        steps.append({
            "recipe": recipe,
            "float_blocks": sorted(float_blocks),
            "float_tensors": list(tensors),
            "sqnr_db": report["sqnr_db"],
            "sqnr_db_median": report["sqnr_db_median"],
            "sqnr_db_worst": report["sqnr_db_worst"],
            "top1_agreement": report["top1_agreement"],
            "gate_sqnr_db_min": min((float(e["sqnr_db"]) for e in errors), default=None),
            "gate_errors": {str(e["block"]): float(e["sqnr_db"]) for e in errors},
            # fp32 instead of int8 excitation weights: 3 more bytes per parameter.
            "extra_bytes": 3 * sum(sizes[b] for b in float_blocks),
            "latency_ratio": None,
        })

    def met(step: dict) -> bool:
        return step["sqnr_db"] >= AUTO_TARGET_SQNR_DB and step["top1_agreement"] >= AUTO_TARGET_AGREEMENT

    # Stage 1: recipes that keep the graph (same ops, same latency), each measured; the baseline first.
    recipes = [r for r in AUTO_RECIPES if _compatible(r, plan, engine)]
    results = {}
    for recipe in recipes:
        results[recipe] = attempt(recipe, set())
        if recipe == recipes[0] and met(steps[-1]):
            break
    for step in steps[1:]:
        why = _worse_than(step, steps[0]) or _no_gain(step, steps[0])
        if why:
            step["not_chosen"] = why
    eligible = [i for i, step in enumerate(steps) if "not_chosen" not in step]
    chosen = max(eligible, key=lambda i: _auto_score(steps[i]))
    recipe = steps[chosen]["recipe"]
    steps[chosen]["chosen"] = True
    for i in eligible:
        if i != chosen:
            steps[i]["not_chosen"] = (f"{recipe} beat it" if i == 0 else
                                      f"beat {steps[0]['recipe']}, but {recipe} ranked higher")
    graph, quantizer = results[recipe]
    base = as_model(graph, quantizer)  # plain int8's graph: what every island's latency is measured against

    def over_budget(step: dict, trial_graph: GraphModule, trial_quantizer: object) -> str:
        """Why the island is over the latency budget ("" if within it, or if nothing measures latency)."""
        if probe is None:
            return ""
        ratio = float(probe(base, as_model(trial_graph, trial_quantizer)))
        step["latency_ratio"] = round(ratio, 4)
        if ratio > 1.0 + budget_pct / 100.0:
            return f"latency {ratio:.3f}x plain int8's, over the {budget_pct:g}% budget"
        return ""

    # Stage 2 (latency cost): the worst-gate SE block to fp32, one at a time, while the targets are unmet
    # and each block buys at least AUTO_MIN_GAIN_DB (or agreement) at no loss elsewhere, within the
    # latency budget when a probe measures it; the first that does not is recorded as rejected and the
    # search stops: an fp32 island is a latency cost, not to be paid for noise.
    float_blocks: set[str] = set()
    best = steps[chosen]
    while blocks and not met(best) and len(float_blocks) < AUTO_MAX_FLOAT_BLOCKS:
        candidates = {k: v for k, v in best["gate_errors"].items() if k not in float_blocks}
        if not candidates:
            break
        trial = float_blocks | {min(candidates, key=candidates.get)}  # type: ignore[arg-type]
        trial_graph, trial_quantizer = attempt(recipe, trial)
        step = steps[-1]
        why = _worse_than(step, best) or _no_gain(step, best) or over_budget(step, trial_graph, trial_quantizer)
        if why:
            step["rejected"] = why + ": not worth an fp32 island"
            break
        float_blocks, graph, quantizer, best = trial, trial_graph, trial_quantizer, step
        step["accepted"] = True
    # Stage 3 (mixed precision, only under a measured budget): the tensor with the lowest isolated SQNR
    # of the current graph leaves the int8 grid (quantize.mixed_precision), one at a time, on stage 2's rule.
    kept: list[tuple[str, float, str]] = []
    nodes: list[str] = []
    while probe is not None and not met(best) and len(kept) < AUTO_MAX_FLOAT_TENSORS:
        pick = _sensitive(as_model(graph, quantizer), eval_images, 1)
        trial_nodes = nodes + [n for n in pick.nodes if n not in nodes]
        trial_graph, trial_quantizer = attempt(recipe, float_blocks, trial_nodes,
                                               [t[0] for t in kept] + [pick.tensors[0][0]])
        step = steps[-1]
        why = _worse_than(step, best) or _no_gain(step, best) or over_budget(step, trial_graph, trial_quantizer)
        if why:
            step["rejected"] = why + ": not worth an fp32 tensor"
            break
        kept.append(pick.tensors[0])
        nodes, graph, quantizer, best = trial_nodes, trial_graph, trial_quantizer, step
        step["accepted"] = True
    # Stage 4 (same graph, same latency): the chosen graph's weights and biases fine-tuned through its
    # grids (qat) on the pool images outside the evaluation set, kept on stage 2's rule. Last, because
    # every earlier step quantises afresh and would drop the trained weights.
    tuned, note = None, ""
    outside = pool.shape[0] - len(eval_indices)
    if met(best):
        pass
    elif not tune:
        note = "auto: qat not tried: float-sensitive quantises auto's graph again afterwards"
    elif outside < AUTO_QAT_MIN_IMAGES:
        note = (f"auto: qat not tried: {outside} of the pool's {pool.shape[0]} images lie outside its "
                f"{len(eval_indices)} evaluation images (it needs {AUTO_QAT_MIN_IMAGES} to train on)")
    else:
        tuned = _auto_qat(graph, exported, quantizer, blocks, pool, eval_indices, seed, recipe, float_blocks, kept,
                          best, measure, steps)
        if tuned["accepted"]:
            best = steps[-1]
    for step in steps:
        step.pop("gate_errors", None)
    best["target_met"] = bool(met(best))
    tensors = FloatLayers(tuple(kept), tuple(nodes), int(eval_images.shape[0])) if kept else None
    return _AutoResult(graph, quantizer, recipe, float_blocks, tensors, steps, tuned, note)


def _auto_qat(graph, exported, quantizer, blocks, pool, eval_indices, seed, recipe, float_blocks, kept,  # noqa: ANN001
              best, measure, steps) -> dict:
    """``auto``'s stage 4: :func:`quantize.qat.qat` on ``graph`` in place, measured and kept or undone.

    Trains on the pool images outside ``eval_indices`` (auto's evaluation images, which qat's own guard
    checks on); the step (``recipe`` + ``,qat``) joins ``steps`` with ``accepted`` or ``rejected``.
    Returns the qat record with ``accepted`` and ``rejected`` (why not, or None).
    """
    taken = set(eval_indices)
    train = [i for i in range(pool.shape[0]) if i not in taken]
    saved = snapshot(graph)
    config = QATConfig(seed=seed)
    report = qat(graph, aligned_float_graph(exported, quantizer), pool[train], config=config,
                 check=pool[eval_indices], blocks=blocks)
    measure(graph, f"{recipe},qat", float_blocks, [t[0] for t in kept])
    step = steps[-1]
    why = "" if report["kept"] else "qat's own check: the global or median-image SQNR fell"
    why = why or _worse_than(step, best) or _no_gain(step, best)
    if why:
        restore(graph, saved)
        step["rejected"] = why + ": weights restored"
    else:
        step["accepted"] = True
    return {**qat_record(report, config, len(train)), "check_indices": list(eval_indices), "accepted": not why,
            "rejected": step.get("rejected")}


def _compatible(recipe: str, plan: PolicyPlan, engine: str) -> bool:
    """Whether ``auto`` may try ``recipe`` beside the user's own policy names (an aspect set twice is not)."""
    names = [n for n in recipe.split(",") if n != "ptq"]
    if engine == "nncf" and resolve_policy(recipe).act_observer not in NNCF_ESTIMATORS:
        return False
    user = [n for n in plan.names if n != "auto"]
    try:
        resolve_policy([*user, *names] or ["ptq"])
    except EdgeSeError:
        return not names  # the baseline always runs
    return True


def _worse_than(step: dict, current: dict) -> str:
    """Why ``step`` is worse than ``current`` on some figure of :data:`AUTO_FIGURES` ("" if on none)."""
    for key in AUTO_FIGURES:
        new, old = step.get(key), current.get(key)
        if new is None or old is None:
            continue
        if key == "top1_agreement" and new < old:
            return f"top-1 agreement {old:.1%} -> {new:.1%}"
        if key != "top1_agreement" and new < old - AUTO_TOLERANCE_DB:
            return f"{key} {old:.1f} -> {new:.1f} dB"
    return ""


def _no_gain(step: dict, current: dict) -> str:
    """"" if ``step`` gains at least the margins on ``current`` (SQNR, median image or agreement), else why not."""
    if (step["sqnr_db"] >= current["sqnr_db"] + AUTO_MIN_GAIN_DB
            or step["sqnr_db_median"] >= current["sqnr_db_median"] + AUTO_MIN_GAIN_DB
            or step["top1_agreement"] >= current["top1_agreement"] + AUTO_MIN_GAIN_AGREEMENT):
        return ""
    return f"gained under {AUTO_MIN_GAIN_DB} dB and under {AUTO_MIN_GAIN_AGREEMENT:.1%} agreement"


def _auto_score(step: dict) -> tuple[float, ...]:
    """Order of the stage-1 recipes that beat ``ptq`` (:func:`_worse_than`, :func:`_no_gain`).

    Top-1 agreement, then the median image's SQNR, then the global SQNR.
    """
    return (round(step["top1_agreement"], 4), step["sqnr_db_median"], step["sqnr_db"])


def _with_recipe(plan: PolicyPlan, recipe: str) -> PolicyPlan:
    """``plan`` with the observer, squeeze grid and bias correction of one of ``auto``'s recipes."""
    chosen = resolve_policy(recipe)
    return dataclasses.replace(
        plan,
        act_observer=chosen.act_observer if chosen.act_observer != "histogram" else plan.act_observer,
        bias_correction=chosen.bias_correction if chosen.bias_correction != "none" else plan.bias_correction,
        own_squeeze=chosen.own_squeeze or plan.own_squeeze,
    )


def _correct_biases(graph: GraphModule, exported: GraphModule, quantizer: object, images: torch.Tensor,
                    mode: str) -> str:
    """Correct ``graph``'s biases in place on the calibration ``images``; the line recorded in ``rewrites``."""
    from quantize.bias_correction import correct_biases, summary

    report = correct_biases(graph, aligned_float_graph(exported, quantizer), images, mode=mode)  # type: ignore[arg-type]
    return f"bias correction ({mode}): {summary(report)}"


def _unused(pool: torch.Tensor, indices: Sequence[int], seed: int) -> torch.Tensor | None:
    """At most :data:`AUTO_EVAL_IMAGES` pool images outside the calibration subset (None: the subset is the pool)."""
    taken = set(indices)
    rest = [i for i in range(pool.shape[0]) if i not in taken]
    if not rest:
        return None
    pick = random_indices(len(rest), min(AUTO_EVAL_IMAGES, len(rest)), seed + 1)
    return pool[[rest[i] for i in pick]]


def _adaround(graph: GraphModule, exported: GraphModule, quantizer: object, images: torch.Tensor,
              check: torch.Tensor | None, seed: int) -> dict:
    """Learn ``graph``'s weight rounding in place on the calibration ``images``, kept or undone on ``check``.

    Returns the record the manifest keeps.
    """
    config = AdaRoundConfig(seed=seed)
    report = adaround(graph, aligned_float_graph(exported, quantizer), images, config=config, check=check)
    return record(report, config, int(images.shape[0]))


def _qat(graph: GraphModule, exported: GraphModule, quantizer: object, blocks: Sequence[SEBlock], pool: torch.Tensor,
         seed: int) -> dict:
    """Fine-tune ``graph``'s weights and biases in place on the pool, kept or undone on images held back from it.

    The SE ``blocks``' gates are distilled beside the logits (:class:`quantize.qat.QATConfig`'s ``gate_weight``).

    The grids are the calibration subset's; the training images are the whole pool but the check
    images: a quarter of the pool, at most :data:`AUTO_EVAL_IMAGES`, drawn with ``seed + 1`` (all of
    the pool when it has fewer than 4 images). Returns the record the manifest keeps, with the
    check images' pool indices.
    """
    n = pool.shape[0]
    check = random_indices(n, min(AUTO_EVAL_IMAGES, n // 4), seed + 1) if n >= 4 else []
    taken = set(check)
    train = [i for i in range(n) if i not in taken]
    config = QATConfig(seed=seed)
    report = qat(graph, aligned_float_graph(exported, quantizer), pool[train], config=config,
                 check=pool[check] if check else None, blocks=blocks)
    return {**qat_record(report, config, len(train)), "check_indices": list(check)}


def _describe(plan: PolicyPlan, blocks: list[SEBlock], float_blocks: set[str], engine: str,
              selection: str) -> list[str]:
    out = []
    if plan.fixed_gate:
        n = len(blocks) - (len(float_blocks) if plan.island != "se-float" else 0)
        out.append(f"gate-fixed: {n} SE gate outputs quantised with scale 1/256, zero point -128")
    if float_blocks:
        what = "FCs, activation, gate" + ("" if plan.island == "se-float" else " and channel multiply")
        names = ", ".join(b.name for b in blocks if b.name in float_blocks)
        out.append(f"{plan.island}: {len(float_blocks)} SE blocks keep {what} in fp32: {names}")
    if plan.act_observer != "histogram":
        out.append(f"activation ranges: {plan.act_observer}" + (" (NNCF estimator)" if engine == "nncf" else ""))
    if plan.own_squeeze:
        out.append(f"se-squeeze-grid: {len(blocks)} SE squeezes quantised on their own observed grid")
    if selection == "gate-coverage":
        out.append("calibration subset: k-center greedy over float SE gate vectors")
    elif plan.selection == "gate-coverage":
        out.append("calibration subset: the whole pool (no larger than the calibration size): nothing to select")
    return out
