"""Shared exported artifacts for the export and verify tests (each model exported once per session).

A plain cached function rather than a fixture: pytest would build an imported session fixture
once per importing module, and one export of a model costs a minute on the 2-core CI machine.
The artifacts are made through ``edge_se.cli.main(["export", ...])``, so the CLI contract (one
JSON line per artifact on stdout) is exercised by the same run.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import shutil
import tempfile
from pathlib import Path

from edge_se.cli import main

RESOLUTION = 64  # small enough for CI; every family downsamples by 32, so 64 leaves a 2x2 map


@functools.cache
def exported(model: str, dtype: str = "all", fmt: str = "all") -> tuple[Path, int, tuple[dict, ...], str]:
    """Export ``model`` at :data:`RESOLUTION` once; return ``(folder, exit code, JSON records, stderr)``."""
    out = Path(tempfile.mkdtemp(prefix=f"edge_se_test_{model}_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["export", model, "--format", fmt, "--dtype", dtype, "--out", str(out),
                   "--resolution", str(RESOLUTION), "--calib", "random", "--calib-size", "64"])
    records = tuple(json.loads(line) for line in stdout.getvalue().splitlines() if line.strip())
    return out, rc, records, stderr.getvalue()

