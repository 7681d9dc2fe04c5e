"""The artifact backends: one module per format, found by listing this package.

Each module ``export/backends/{name}.py`` (other than :mod:`export.backends.base` and names
starting with ``_``) defines one :class:`~export.backends.base.Backend` and registers it with
:func:`register` when it is imported. :func:`names` lists the modules without importing them (no
torch, no converter: the CLI builds its ``--format`` choices from it), and :func:`get` imports one
on first use. A third format is one new file here plus its row in :data:`contract.formats.FORMATS`
(the torch-free table the on-device runner reads); ``tests/test_backends.py`` holds the two equal.

Example:
    >>> from export import backends
    >>> backends.names()
    ('pte', 'tflite')
    >>> backends.get("tflite").spec.ext
    'tflite'
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from contract.errors import ContractError
from contract.formats import FORMATS

if TYPE_CHECKING:
    from export.backends.base import Backend

_NOT_BACKENDS = frozenset({"base"})
_REGISTRY: dict[str, Backend] = {}


def names() -> tuple[str, ...]:
    """The formats with a backend module here, in :data:`contract.formats.FORMATS` order (others after, by name).

    Lists the package's modules; imports none of them.
    """
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")} - _NOT_BACKENDS
    found |= set(_REGISTRY)
    order = list(FORMATS)
    return tuple(sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n)))


def register(backend: Backend) -> Backend:
    """Make ``backend`` available as ``get(backend.name)``; called by each backend module on import.

    Raises:
        ContractError: another backend already holds the name.
    """
    held = _REGISTRY.get(backend.name)
    if held is not None and type(held) is not type(backend):
        raise ContractError(f"format {backend.name!r} already has a backend ({type(held).__name__})")
    _REGISTRY[backend.name] = backend
    return backend


def get(name: str, *, flag: str = "format") -> Backend:
    """The backend of format ``name``, its module imported on first use.

    Raises:
        ContractError: no such format (one line naming ``flag`` and the valid formats), or its
            module registered nothing.
    """
    if name not in _REGISTRY:
        if name not in names():
            raise ContractError(f"unknown {flag} {name!r}; valid: {', '.join(names())}")
        importlib.import_module(f"{__name__}.{name}")
        if name not in _REGISTRY:
            raise ContractError(f"module {__name__}.{name} registers no backend named {name!r}")
    return _REGISTRY[name]


__all__ = ["get", "names", "register"]
