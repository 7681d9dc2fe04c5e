"""Shared exported artifacts for the export and verify tests (each model exported once per test run).

A plain cached function rather than a fixture: pytest would build an imported session fixture
once per importing module, and one export of a model costs a minute on the 2-core CI machine.
Under pytest-xdist (``make test``) the two workers share one folder (``EDGE_SE_TEST_SHARED``, set
by tests/conftest.py): the first worker to ask exports, under a lock, and the other reads its
records. The artifacts are made through ``edge_se.cli.main(["export", ...])``, so the CLI
contract (one JSON line per artifact on stdout) is exercised by the same run.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from contract.files import exclusive, write_text
from edge_se.cli import main

RESOLUTION = 64  # small enough for CI; every family downsamples by 32, so 64 leaves a 2x2 map


SHARED_ENV = "EDGE_SE_TEST_SHARED"


@functools.cache
def exported(model: str, dtype: str = "all", fmt: str = "all") -> tuple[Path, int, tuple[dict, ...], str]:
    """Export ``model`` at :data:`RESOLUTION` once; return ``(folder, exit code, JSON records, stderr)``."""
    shared = os.environ.get(SHARED_ENV)
    if not shared:  # outside the test session's conftest: a private folder, removed at exit
        out = Path(tempfile.mkdtemp(prefix=f"edge_se_test_{model}_"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        return (out, *_export(model, dtype, fmt, out))
    out = Path(shared) / f"{model}_{dtype}_{fmt}"
    done = out / "records.json"
    with exclusive(out):
        if not done.exists():
            rc, records, err = _export(model, dtype, fmt, out)
            write_text(done, json.dumps({"rc": rc, "records": records, "stderr": err}))
    doc = json.loads(done.read_text())
    return out, doc["rc"], tuple(doc["records"]), doc["stderr"]


def _export(model: str, dtype: str, fmt: str, out: Path) -> tuple[int, tuple[dict, ...], str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["export", model, "--format", fmt, "--dtype", dtype, "--out", str(out),
                   "--resolution", str(RESOLUTION), "--calib", "random", "--calib-size", "64"])
    records = tuple(json.loads(line) for line in stdout.getvalue().splitlines() if line.strip())
    return rc, records, stderr.getvalue()
