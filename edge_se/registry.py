"""The one registry of model names: ``register`` raises on a duplicate, variants come from tables.

Names: ``efficientnet_b0`` ... ``efficientnet_b7``, ``efficientnet_phi{phi}`` for any real phi
(e.g. ``efficientnet_phi1.5``, ``efficientnet_phi-0.5``), ``mobilenetv3_{large,small}_{050,075,100}``,
``seresnet50``, ``resnet50``; every name + ``_nose`` is the same network with SE removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, cast

from edge_se.errors import EdgeSeError
from edge_se.families import efficientnet, efficientnet_phi, mobilenetv3, resnet50
from edge_se.specs import EFFICIENTNET_SCALES, GATES, PLACEMENTS, ArchSpec, Gate, Placement, Scale

if TYPE_CHECKING:  # torch is imported only when a network is built, not for names and accounting
    from edge_se.network import EdgeSENet

NOSE_SUFFIX = "_nose"
_PHI_RE = re.compile(r"^efficientnet_phi(-?\d+(?:\.\d+)?)$")

_REGISTRY: dict[str, Callable[[], ArchSpec]] = {}


def register(name: str, factory: Callable[[], ArchSpec]) -> None:
    """Register a spec factory under ``name``; a second registration of a name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if name.endswith(NOSE_SUFFIX):
        raise ValueError(f"{name!r}: names ending in {NOSE_SUFFIX!r} are reserved for no-SE twins")
    _REGISTRY[name] = factory


def _efficientnet_factory(name: str, scale: Scale) -> Callable[[], ArchSpec]:
    return lambda: efficientnet(name, scale)


def _mobilenetv3_factory(name: str, size: Literal["large", "small"], width: float) -> Callable[[], ArchSpec]:
    return lambda: mobilenetv3(name, size, width)


for _key, _scale in EFFICIENTNET_SCALES.items():
    register(f"efficientnet_{_key}", _efficientnet_factory(f"efficientnet_{_key}", _scale))
for _size in ("large", "small"):
    for _w in (50, 75, 100):
        _n = f"mobilenetv3_{_size}_{_w:03d}"
        register(_n, _mobilenetv3_factory(_n, _size, _w / 100))
register("seresnet50", lambda: resnet50("seresnet50", se=True))
register("resnet50", lambda: resnet50("resnet50", se=False))


def list_models(*, twins: bool = True) -> list[str]:
    """Every registered name (and, with ``twins``, each no-SE twin), sorted."""
    names = sorted(_REGISTRY)
    if twins:
        names += [n + NOSE_SUFFIX for n in names if _REGISTRY[n]().se is not None]
    return sorted(names)


def _valid_names() -> str:
    return ", ".join(list_models(twins=False)) + f" (each also with {NOSE_SUFFIX}), efficientnet_phi<float>"


def get_spec(
    name: str,
    *,
    num_classes: int | None = None,
    gate: str | None = None,
    placement: str | None = None,
) -> ArchSpec:
    """The spec registered as ``name``, with optional overrides of the classifier and SE options.

    Raises:
        EdgeSeError: unknown name or option, naming the valid choices.
    """
    if not isinstance(name, str):
        raise EdgeSeError(f"model name must be a string, got {type(name).__name__}")
    base, nose = (name[: -len(NOSE_SUFFIX)], True) if name.endswith(NOSE_SUFFIX) else (name, False)
    phi = _PHI_RE.match(base)
    if base in _REGISTRY:
        spec = _REGISTRY[base]()
    elif phi is not None:
        spec = efficientnet_phi(float(phi.group(1)), name=base)
    else:
        raise EdgeSeError(f"unknown model {name!r}; valid: {_valid_names()}")
    if nose and spec.se is None:
        raise EdgeSeError(f"{base!r} has no SE blocks, so it has no {NOSE_SUFFIX} twin")
    if gate is not None or placement is not None:
        if spec.se is None or nose:
            raise EdgeSeError(f"{name!r} has no SE blocks; gate/placement options do not apply")
        if gate is not None and gate not in GATES:
            raise EdgeSeError(f"unknown gate {gate!r}; valid: {', '.join(GATES)}")
        if placement is not None and placement not in PLACEMENTS:
            raise EdgeSeError(f"unknown placement {placement!r}; valid: {', '.join(PLACEMENTS)}")
        spec = spec.with_(
            se=replace(
                spec.se,
                gate=cast(Gate, gate or spec.se.gate),
                placement=cast(Placement, placement or spec.se.placement),
            )
        )
    if nose:
        spec = spec.with_(name=name, se=None)
    if num_classes is not None:
        if num_classes < 1:
            raise EdgeSeError(f"num_classes must be >= 1, got {num_classes}")
        spec = spec.with_(num_classes=num_classes)
    return spec


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    gate: str | None = None,
    placement: str | None = None,
    drop_path_rate: float = 0.0,
) -> EdgeSENet:
    """Build the registered model ``name`` with random weights (see :mod:`edge_se.weights` to load some)."""
    spec = get_spec(name, num_classes=num_classes, gate=gate, placement=placement)
    from edge_se.network import build

    return build(spec, drop_path_rate=drop_path_rate)


def check_resolution(resolution: int, *, minimum: int = 32) -> int:
    """Validate an input side in pixels: every family downsamples by 32, so at least 32.

    Raises:
        EdgeSeError: naming the bad value and the valid range.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < minimum:
        raise EdgeSeError(f"bad resolution {resolution!r}: need an integer >= {minimum} pixels")
    if resolution > 4096:
        raise EdgeSeError(f"bad resolution {resolution}: more than 4096 pixels a side is not supported")
    return resolution
