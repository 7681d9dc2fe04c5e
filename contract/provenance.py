"""Where a result came from: the git commit of the edge-se checkout (standard library only)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def git_commit(*, short: bool = False, cwd: str | Path | None = None) -> str | None:
    """The commit checked out at ``cwd`` (default: this checkout), or None outside a git tree.

    Args:
        short: the abbreviated hash (``git rev-parse --short``) instead of the full 40 digits.
        cwd: the folder whose repository is asked.
    """
    cmd = ["git", "-C", str(cwd or _ROOT), "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def dist_versions(dists: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution, keyed by its name with ``-`` as ``_`` (``None``: not installed)."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = None
    return out
