"""The run directory as a content-keyed cache of cell outputs.

Layout of ``RUN_DIR``::

    config.toml               the config the run was started with (copied)
    cells/<stage>/<key>/      one finished cell: result.json plus its files (weights, artifacts, logs)
    failed/<stage>/<key>.json the last error of a cell that failed (never replaces a result)
    index.json                cell id -> key, status, seconds (rewritten atomically after each cell)

A cell directory appears only by an atomic rename of a finished temporary directory, so an
interrupted run never leaves a half-written cell that a re-run would take as done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contract.files import write_text


def cache_key(inputs: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a cell's inputs."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Store:
    """Finished cells under ``root/cells``, failures under ``root/failed``, the index beside them."""

    def __init__(self, root: str | Path, *, clean: bool = True) -> None:
        """Open (create) the store at ``root``; ``clean``: drop what an interrupted run left.

        A worker computing one cell of a running sweep opens the store with ``clean=False``: the
        other cells' temporary directories are in use.
        """
        self.root = Path(root).resolve()  # subprocesses print paths; keep them unambiguous
        self.root.mkdir(parents=True, exist_ok=True)
        if clean:
            self._clean_partials()

    def _clean_partials(self) -> None:
        # Temporary cell directories left by an interrupted run hold nothing a re-run may use.
        for tmp in self.root.glob("cells/*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def cell_dir(self, stage: str, key: str) -> Path:
        """Where a finished cell lives."""
        return self.root / "cells" / stage / key

    def result(self, stage: str, key: str) -> dict[str, Any] | None:
        """The stored result of a finished cell, or None."""
        path = self.cell_dir(stage, key) / "result.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def begin(self, stage: str, key: str | None = None) -> Path:
        """A fresh temporary directory for a cell being computed (named after ``key`` when given)."""
        parent = self.root / "cells" / stage
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-{key}-" if key else ".tmp-", dir=parent))

    def clear_partial(self, stage: str, key: str) -> None:
        """Remove the temporary directories of earlier attempts at ``key`` (a worker killed mid-cell)."""
        for tmp in (self.root / "cells" / stage).glob(f".tmp-{key}-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, stage: str, key: str, tmp: Path, result: Mapping[str, Any]) -> Path:
        """Write ``result.json`` into ``tmp`` and rename it into place; clear an old failure."""
        write_text(tmp / "result.json", json.dumps(result, indent=1, sort_keys=True, default=str))
        final = self.cell_dir(stage, key)
        if final.exists():  # a concurrent or earlier identical result: keep the old one
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(final)
        failure = self.root / "failed" / stage / f"{key}.json"
        failure.unlink(missing_ok=True)
        return final

    def fail(self, stage: str, key: str, tmp: Path | None, error: Mapping[str, Any]) -> Path:
        """Record a failure (the finished results of other cells are untouched)."""
        path = self.root / "failed" / stage / f"{key}.json"
        if tmp is not None and (tmp / "log.txt").is_file():
            error = dict(error) | {"log_tail": (tmp / "log.txt").read_text(errors="replace")[-4000:]}
        write_text(path, json.dumps(error, indent=1, sort_keys=True, default=str))
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def write_index(self, index: Mapping[str, Any]) -> None:
        """Rewrite ``index.json`` atomically."""
        write_text(self.root / "index.json", json.dumps(index, indent=1, sort_keys=True, default=str))

    def read_index(self) -> dict[str, Any]:
        """The last index written, or an empty one."""
        path = self.root / "index.json"
        return json.loads(path.read_text()) if path.is_file() else {}
