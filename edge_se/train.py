"""Train (or fine-tune) a network on the CPU, so quantisation is judged on a trained model.

Recipe (small images, few minutes on 2 cores): AdamW (lr 2e-3, weight decay 0.05 on weights,
none on BN/bias), one-cycle cosine schedule with a 1-epoch warm-up, label smoothing 0.1, random
translations of up to 1/8 of the side as augmentation. BatchNorm: MobileNetV3 keeps its
running statistics with momentum 0.01 (TF's 0.99 decay), which after a short run leaves them far
from the data; training uses momentum 0.1 and, at the end, the statistics are re-estimated
with a cumulative average over the training images (``recalibrate_bn``), so eval-mode accuracy
is the network's accuracy.

Initialisation (from-scratch runs only, ``init_linear_layers``): every ``nn.Linear`` gets
normal(0, 0.01) weights and zero bias, torchvision's MobileNetV3 choice. It is part of the recipe
because it decides how well the trained network quantises: MobileNetV3-Small trained on digits
at 64 px with the builder's uniform(+-1/sqrt(out_features)) classifier init (±0.32 for 10
classes) reached 99.2-99.4% but int8 logits SQNR 15.8 / 19.4 dB (seeds 0 / 1, PT2E + XNNPACK,
64 calibration images): a few images drive mid-network activations to 3x the calibrated range.
The same run with normal(0, 0.01) Linear init: 99.7%, 32.7 dB (torchvision's own model with
this recipe: 99.7%, 32.2 dB). See results/quant_bench.md.

Weights: ``save_weights`` writes ``torch.save(model.state_dict())`` plus a JSON sidecar
``FILE.json`` (model name, num_classes, resolution, accuracy); ``load_model(FILE)`` rebuilds the
edge-se model from both, loading with ``weights_only=True``.

Example:
    >>> from edge_se import build_model
    >>> from edge_se.data import load_images
    >>> from edge_se.train import train
    >>> model = build_model("mobilenetv3_small_050", num_classes=10)
    >>> result = train(model, load_images("digits", 64, split="train"), epochs=1,
    ...                eval_data=load_images("digits", 64, split="test"))
    >>> 0.0 <= result.accuracy <= 1.0
    True
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from contract.files import write_bytes, write_text
from edge_se.data import ImageSet
from edge_se.errors import EdgeSeError
from edge_se.init import DEFAULT_INIT, RECIPE_LINEAR_STD, init_linear

# Recipe constants (see module docstring).
LR = 2e-3
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1
BATCH_SIZE = 64
TRAIN_BN_MOMENTUM = 0.1
MAX_SHIFT_FRACTION = 0.125
# Std of the normal init of Linear weights in from-scratch runs (see module docstring).
LINEAR_INIT_STD = RECIPE_LINEAR_STD
SIDECAR_SUFFIX = ".json"
WEIGHTS_SCHEMA = "edge-se/weights/1"


@dataclass
class TrainResult:
    """What a training run reached.

    Attributes:
        accuracy: top-1 (0..1) on ``eval_data`` in eval mode after BN re-estimation (None without it).
        train_accuracy: top-1 (0..1) on the training images in eval mode.
        epochs: epochs run; ``seconds``: wall time of the run.
        losses: mean training loss per epoch.
        images: training images.
    """

    accuracy: float | None
    train_accuracy: float
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    images: int = 0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation of each image by up to ``MAX_SHIFT_FRACTION`` of its side (edge padding)."""
    n = x.shape[0]
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 2 * MAX_SHIFT_FRACTION  # grid units: side = 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _param_groups(model: nn.Module) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def init_linear_layers(model: nn.Module, init: str = DEFAULT_INIT) -> int:
    """Re-initialise every ``nn.Linear`` of a freshly built model (:func:`edge_se.init.init_linear`).

    Returns:
        the number of Linear layers re-initialised.
    """
    return init_linear(model, init)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, *, batch_size: int = BATCH_SIZE) -> None:
    """Re-estimate every BatchNorm's running mean/var as a cumulative average over ``images``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for start in range(0, images.shape[0], batch_size):
        model(images[start : start + batch_size])
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, *, batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of ``model`` in eval mode on labelled ``data``.

    Raises:
        EdgeSeError: ``data`` has no labels.
    """
    if data.labels is None:
        raise EdgeSeError(f"data {data.source!r} has no labels; accuracy needs digits or a class folder")
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = model(data.images[start : start + batch_size])
        correct += int((logits.argmax(1) == data.labels[start : start + batch_size]).sum())
    return correct / max(1, len(data))


def train(
    model: nn.Module,
    data: ImageSet,
    *,
    epochs: int,
    eval_data: ImageSet | None = None,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on labelled ``data`` with the module's recipe.

    Args:
        model: any classifier ``[N, 3, R, R] -> [N, K]`` with K >= the number of classes.
        data: training images with labels.
        epochs: passes over ``data`` (>= 1).
        eval_data: held-out images for the reported accuracy.
        lr: peak learning rate.
        batch_size: images per step.
        seed: seeds shuffling and augmentation.
        log: called with one line per epoch (e.g. ``print`` to stderr).

    Raises:
        EdgeSeError: no labels, epochs < 1.
    """
    if data.labels is None:
        raise EdgeSeError(f"training data {data.source!r} has no labels; use digits or a class folder")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise EdgeSeError(f"bad epochs {epochs!r}: need an integer >= 1")
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_momentum = [m.momentum for m in bns]
    for m in bns:
        m.momentum = TRAIN_BN_MOMENTUM
    opt = torch.optim.AdamW(_param_groups(model), lr=lr)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start_time = time.perf_counter()
    losses: list[float] = []
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(data), generator=gen)
            running = 0.0
            for i in range(steps_per_epoch):
                idx = order[i * batch_size : (i + 1) * batch_size]
                x = _augment(data.images[idx], gen)
                loss = F.cross_entropy(model(x), data.labels[idx], label_smoothing=LABEL_SMOOTHING)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += float(loss.detach()) * len(idx)
            losses.append(running / len(data))
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f} ({time.perf_counter() - start_time:.0f} s)")
    finally:
        for m, mom in zip(bns, saved_momentum, strict=True):
            m.momentum = mom
    recalibrate_bn(model, data.images)
    model.eval()
    accuracy = evaluate(model, eval_data) if eval_data is not None else None
    return TrainResult(
        accuracy=accuracy,
        train_accuracy=evaluate(model, data),
        epochs=epochs,
        seconds=time.perf_counter() - start_time,
        losses=losses,
        images=len(data),
    )


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a weights file: ``FILE.json``."""
    return Path(f"{path}{SIDECAR_SUFFIX}")


def save_state_dict(path: str | Path, state: dict[str, torch.Tensor]) -> Path:
    """Write a state dict to ``path`` atomically, no sidecar (loads as a plain ``--weights`` file).

    Saved through a buffer: ``torch.save`` to a path records the file's name inside the archive,
    and the atomic write's temporary name is random, so the same weights would give different
    bytes (and cache keys) on every run.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_bytes(path, buffer.getvalue())


def save_weights(path: str | Path, model: nn.Module, *, model_name: str, num_classes: int, resolution: int,
                 extra: dict | None = None) -> Path:
    """Write ``model.state_dict()`` (:func:`save_state_dict`) and its sidecar ``path.json``, both atomically."""
    save_state_dict(path, model.state_dict())
    meta = {"schema": WEIGHTS_SCHEMA, "model": model_name, "num_classes": num_classes, "resolution": resolution,
            **(extra or {})}
    write_text(sidecar_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(path)


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of weights file ``path``.

    Raises:
        EdgeSeError: missing or malformed sidecar, naming the file and the missing key.
    """
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise EdgeSeError(
            f"weights file {path}: sidecar {side} not found (model name, num_classes, resolution)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeSeError(f"weights sidecar {side} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise EdgeSeError(f"weights sidecar {side} must hold a JSON object")
    for key in ("model", "num_classes", "resolution"):
        if key not in meta:
            raise EdgeSeError(f"weights sidecar {side} lacks key {key!r}")
    return meta


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)``, checked to be a state dict.

    Raises:
        EdgeSeError: missing, truncated or malformed file, in one line naming it.
    """
    p = Path(path)
    if not p.is_file():
        raise EdgeSeError(f"weights file {p} not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise EdgeSeError(f"weights file {p} is not a readable state dict: {exc.__class__.__name__}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgeSeError(f"weights file {p} does not hold a state dict of tensors")
    return state


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the edge-se model saved by :func:`save_weights`; return it (eval mode) and its sidecar.

    Raises:
        EdgeSeError: a malformed file or sidecar, or tensors that do not fit the model.
    """
    from edge_se.registry import build_model

    meta = read_sidecar(path)
    state = load_state_dict(path)
    model = build_model(str(meta["model"]), num_classes=int(meta["num_classes"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise EdgeSeError(f"weights file {path} does not fit {meta['model']}: {' '.join(first[:2])[:300]}") from None
    return model.eval(), meta


def load_float_model(name: str, weights: str | Path | None, *, num_classes: int) -> tuple[nn.Module, dict]:
    """The float model ``name``: from ``weights`` (edge-se sidecar or the registry's loader) or random.

    Returns:
        (model in eval mode, sidecar dict or {}).

    Raises:
        EdgeSeError: a malformed weights file, or one saved for another model.
    """
    from edge_se.registry import build_model

    if weights is None:
        return build_model(name, num_classes=num_classes).eval(), {}
    if sidecar_path(weights).exists():
        model, meta = load_model(weights)
        if meta["model"] != name:
            raise EdgeSeError(f"weights file {weights} was saved for {meta['model']!r}, not {name!r}")
        return model, meta
    from edge_se.weights import load_weights  # torchvision / timm / edge-se state dicts without a sidecar

    return load_weights(name, weights).eval(), {}
