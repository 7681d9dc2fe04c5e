"""One builder or CLI of the benchmark run as a subprocess, logged the same way everywhere (standard library only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    """One ``bench-peers:`` line on stderr."""
    print(f"bench-peers: {msg}", file=sys.stderr, flush=True)


def edge_se_cli() -> str:
    """The ``edge-se`` entry point of the interpreter running the benchmark (the main venv)."""
    return str(Path(sys.executable).with_name("edge-se"))


def run_logged(cmd: list[str], what: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``cmd``; return (exit status, JSON lines of stdout, the last stderr line naming an error, else the last)."""
    log(f"{what}: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    records = []
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
    if proc.returncode != 0:
        log(f"{what}: exit {proc.returncode}: {last[:300]}")
    return proc.returncode, records, last[:300]
