"""Load real weights from a local file: edge-se's own, torchvision's or timm's naming.

Loading is strict: every tensor of the file is used, every tensor of the model is filled and every
shape is checked; ``torch.load(..., weights_only=True)`` never runs code from the file. Source
names are translated by structure (which blocks have an expansion conv, an SE block), not by the
order of keys in the file, so a state dict saved with sorted keys loads too.

BatchNorm eps follows the weights' origin: torchvision's MobileNetV3 uses 1e-3 (edge-se's default
for EfficientNet and MobileNetV3, as the TF reference), torchvision's EfficientNet (v1) and every
timm port use 1e-5; the loader builds the model with the eps the weights were trained with, so
outputs match the source model exactly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch

from edge_se.errors import EdgeSeError, first_line
from edge_se.network import EdgeSENet, build
from edge_se.plan import BlockPlan, resolve
from edge_se.registry import get_spec
from edge_se.specs import ArchSpec

Source = Literal["auto", "edge_se", "torchvision", "timm"]
SOURCES: tuple[str, ...] = ("auto", "edge_se", "torchvision", "timm")

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict (or a checkpoint holding one under ``state_dict``/``model``) from ``path``.

    Raises:
        EdgeSeError: missing or unreadable file, or contents that are not a mapping of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise EdgeSeError(f"weights file {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        reason = first_line(exc)
        raise EdgeSeError(f"weights file {str(p)!r} is not a readable torch state dict: {reason}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise EdgeSeError(f"weights file {str(p)!r} holds {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise EdgeSeError(f"weights file {str(p)!r}: entry {bad[0]!r} is not a named tensor")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_source(state: Mapping[str, torch.Tensor]) -> str:
    """Guess the naming of a state dict: ``edge_se``, ``torchvision`` or ``timm``."""
    keys = set(state)
    if "stem.conv.weight" in keys:
        return "edge_se"
    if "conv_stem.weight" in keys or any(".se.fc1." in k for k in keys if k.startswith("layer")):
        return "timm"
    if "features.0.0.weight" in keys or "conv1.weight" in keys:
        return "torchvision"
    raise EdgeSeError("cannot tell the weights' naming (edge_se, torchvision or timm); pass source= explicitly")


def _conv_bn(dst: str) -> dict[str, str]:
    """Suffix map of a torchvision ``Conv2dNormActivation`` (``.0`` conv, ``.1`` BN)."""
    return {"0.weight": f"{dst}.conv.weight"} | {f"1.{s}": f"{dst}.bn.{s}" for s in _BN}


def _group_blocks(state: Mapping[str, torch.Tensor], pattern: str) -> list[tuple[str, list[str]]]:
    """Distinct block prefixes matching ``pattern`` (numeric groups), in numeric order, with their key suffixes."""
    rx = re.compile(pattern)
    groups: dict[tuple[int, ...], tuple[str, list[str]]] = {}
    for key in state:
        m = rx.match(key)
        if m:
            idx = tuple(int(g) for g in m.groups())
            groups.setdefault(idx, (m.group(0), []))[1].append(key[len(m.group(0)) :])
    return [groups[k] for k in sorted(groups)]


def _mbconv_parts(plan: BlockPlan) -> list[str]:
    parts = ["expand"] if plan.mid_channels != plan.in_channels else []
    parts.append("dw")
    if plan.se is not None:
        parts.append("se")
    return parts + ["project"]


def _torchvision_map(spec: ArchSpec, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    plans = resolve(spec)
    if spec.family == "resnet":
        return _resnet_map(plans, state)
    mapping = {f"features.0.{k}": v for k, v in _conv_bn("stem").items()}
    if spec.family == "efficientnet":
        blocks = _group_blocks(state, r"^features\.(\d+)\.(\d+)\.block\.")
        head_idx = len(spec.stages) + 1
        mapping |= {f"classifier.1.{s}": f"classifier.{s}" for s in ("weight", "bias")}
    else:  # mobilenetv3: one block per features index
        blocks = _group_blocks(state, r"^features\.(\d+)\.block\.")
        head_idx = len(plans) + 1
        mapping |= {f"classifier.0.{s}": f"head_fc.{s}" for s in ("weight", "bias")}
        mapping |= {f"classifier.3.{s}": f"classifier.{s}" for s in ("weight", "bias")}
    mapping |= {f"features.{head_idx}.{k}": v for k, v in _conv_bn("head").items()}
    if len(blocks) != len(plans):
        raise EdgeSeError(f"weights have {len(blocks)} blocks, {spec.name} has {len(plans)}")
    for (prefix, _), plan in zip(blocks, plans, strict=True):
        for k, part in enumerate(_mbconv_parts(plan)):
            dst = f"blocks.{plan.index}.{part}"
            if part == "se":
                mapping |= {
                    f"{prefix}{k}.{fc}.{s}": f"{dst}.{fc}.{s}" for fc in ("fc1", "fc2") for s in ("weight", "bias")
                }
            else:
                mapping |= {f"{prefix}{k}.{src}": d for src, d in _conv_bn(dst).items()}
    return mapping


def _timm_map(spec: ArchSpec, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    plans = resolve(spec)
    if spec.family == "resnet":
        return _resnet_map(plans, state)
    mapping = {"conv_stem.weight": "stem.conv.weight"} | {f"bn1.{s}": f"stem.bn.{s}" for s in _BN}
    blocks = _group_blocks(state, r"^blocks\.(\d+)\.(\d+)\.")
    if spec.family == "efficientnet":
        mapping |= {"conv_head.weight": "head.conv.weight"} | {f"bn2.{s}": f"head.bn.{s}" for s in _BN}
    else:  # mobilenetv3: the last timm stage is the 1x1 ConvBnAct head; conv_head is the pooled hidden layer
        if not blocks:
            raise EdgeSeError("weights have no blocks.* tensors")
        head_prefix, _ = blocks.pop()
        mapping |= {f"{head_prefix}conv.weight": "head.conv.weight"}
        mapping |= {f"{head_prefix}bn1.{s}": f"head.bn.{s}" for s in _BN}
        mapping |= {"conv_head.weight": "head_fc.weight", "conv_head.bias": "head_fc.bias"}
    mapping |= {f"classifier.{s}": f"classifier.{s}" for s in ("weight", "bias")}
    if len(blocks) != len(plans):
        raise EdgeSeError(f"weights have {len(blocks)} blocks, {spec.name} has {len(plans)}")
    for (prefix, keys), plan in zip(blocks, plans, strict=True):
        dst = f"blocks.{plan.index}"
        ds = "conv_pwl.weight" not in keys  # timm DepthwiseSeparableConv: conv_dw, bn1, se, conv_pw, bn2
        convs = (
            {"conv_dw": "dw", "conv_pw": "project"}
            if ds
            else {"conv_pw": "expand", "conv_dw": "dw", "conv_pwl": "project"}
        )
        bns = {"bn1": "dw", "bn2": "project"} if ds else {"bn1": "expand", "bn2": "dw", "bn3": "project"}
        mapping |= {f"{prefix}{c}.weight": f"{dst}.{d}.conv.weight" for c, d in convs.items()}
        mapping |= {f"{prefix}{b}.{s}": f"{dst}.{d}.bn.{s}" for b, d in bns.items() for s in _BN}
        for src, d in (("conv_reduce", "fc1"), ("conv_expand", "fc2")):
            mapping |= {f"{prefix}se.{src}.{s}": f"{dst}.se.{d}.{s}" for s in ("weight", "bias")}
    return mapping


def _resnet_map(plans: tuple[BlockPlan, ...], state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Torchvision and timm share ResNet names (``layer{L}.{j}``, ``fc``); timm's SE is ``se.fc1/fc2``."""
    mapping = {"conv1.weight": "stem.conv.weight"} | {f"bn1.{s}": f"stem.bn.{s}" for s in _BN}
    mapping |= {f"fc.{s}": f"classifier.{s}" for s in ("weight", "bias")}
    blocks = _group_blocks(state, r"^layer(\d+)\.(\d+)\.")
    if len(blocks) != len(plans):
        raise EdgeSeError(f"weights have {len(blocks)} bottlenecks, the model has {len(plans)}")
    for (prefix, keys), plan in zip(blocks, plans, strict=True):
        dst = f"blocks.{plan.index}."
        mapping |= {prefix + k: dst + k for k in keys}  # same names inside the bottleneck
    return mapping


_MAPPERS: dict[str, Callable[[ArchSpec, Mapping[str, torch.Tensor]], dict[str, str]]] = {
    "torchvision": _torchvision_map,
    "timm": _timm_map,
}


def translate(spec: ArchSpec, state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename ``state`` from ``source`` naming to edge-se's, checking that every tensor is used once."""
    if source == "edge_se":
        return dict(state)
    mapping = _MAPPERS[source](spec, state)
    unused = [k for k in state if k not in mapping]
    if unused:
        raise EdgeSeError(f"{len(unused)} tensor(s) in the {source} weights have no place in {spec.name}: {unused[:3]}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        dst = mapping[key]
        if dst == "head_fc.weight" and value.ndim == 4:  # timm's 1x1 conv_head -> Linear
            value = value.flatten(1)
        out[dst] = value
    return out


# BatchNorm eps of each source implementation, by family (read off torchvision 0.29 and timm 1.0).
_SOURCE_BN_EPS: dict[tuple[str, str], float] = {
    ("torchvision", "efficientnet"): 1e-5,
    ("torchvision", "mobilenetv3"): 1e-3,
    ("torchvision", "resnet"): 1e-5,
    ("timm", "efficientnet"): 1e-5,
    ("timm", "mobilenetv3"): 1e-5,
    ("timm", "resnet"): 1e-5,
}


# torchvision's B5-B7 weights were ported from TF and keep its BatchNorm eps (efficientnet.py builders).
_TORCHVISION_TF_PORTS = frozenset({"efficientnet_b5", "efficientnet_b6", "efficientnet_b7"})


def _eps_for(source: str, spec: ArchSpec) -> float:
    if source == "torchvision" and spec.name in _TORCHVISION_TF_PORTS:
        return 1e-3
    return _SOURCE_BN_EPS.get((source, spec.family), spec.bn_eps)


def load_weights(
    model_name: str,
    path: str | os.PathLike[str],
    *,
    source: Source = "auto",
    num_classes: int | None = None,
    bn_eps: float | None = None,
) -> EdgeSENet:
    """Build ``model_name`` and load the weights in ``path`` into it strictly.

    Args:
        model_name: registry name (the weights must be of this architecture).
        path: a ``.pt``/``.pth`` state dict in edge-se's, torchvision's or timm's naming.
        source: the naming; ``auto`` detects it.
        num_classes: classifier width; default: read from the weights' classifier.
        bn_eps: BatchNorm eps the weights were trained with; default: the source's own.

    Raises:
        EdgeSeError: unreadable file, unknown naming, a tensor with no place in the model, a
            model tensor the file lacks, or a shape mismatch; the message names the tensor.
    """
    if source not in SOURCES:
        raise EdgeSeError(f"unknown weights source {source!r}; valid: {', '.join(SOURCES)}")
    state = read_state_dict(path)
    src = detect_source(state) if source == "auto" else source
    spec = get_spec(model_name)
    renamed = translate(spec, state, src)
    classifier = renamed.get("classifier.weight")
    if num_classes is None and classifier is not None:
        num_classes = int(classifier.shape[0])
    eps = bn_eps if bn_eps is not None else _eps_for(src, spec)
    spec = spec.with_(bn_eps=eps, num_classes=num_classes or spec.num_classes)
    model = build(spec)
    own = model.state_dict()
    missing = [k for k in own if k not in renamed]
    if missing:
        raise EdgeSeError(f"weights file {str(path)!r} lacks {len(missing)} tensor(s) of {model_name}: {missing[:3]}")
    for key, value in renamed.items():
        if key not in own:
            raise EdgeSeError(f"weights file {str(path)!r}: tensor {key!r} has no place in {model_name}")
        if tuple(own[key].shape) != tuple(value.shape):
            raise EdgeSeError(
                f"weights file {str(path)!r}: {key} has shape {tuple(value.shape)}, "
                f"{model_name} needs {tuple(own[key].shape)}"
            )
    model.load_state_dict(renamed, strict=True)
    return model
