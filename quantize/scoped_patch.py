"""A patch of a toolchain's internals that holds only inside ``with`` blocks, nested or in several threads.

edge-se patches two toolchain overheads this way (quantize/pattern_cache.py, export/fx_provenance.py):
the outermost block installs the patch, blocks inside it share it, and the last one to leave removes
it, also when the block raised, so code outside every block always runs the toolchain unpatched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class ScopedPatch:
    """``with patch:`` installs ``install()`` on the first entry and calls ``remove()`` on the last exit."""

    def __init__(self, install: Callable[[], None], remove: Callable[[], None]) -> None:
        self._install, self._remove = install, remove
        self._lock = threading.Lock()
        self._depth = 0  # blocks inside it now

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._install()
            self._depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._remove()
