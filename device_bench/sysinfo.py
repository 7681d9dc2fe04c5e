"""What the machine running a benchmark is: CPU model, architecture, kernel, peak RSS.

Runs on the device: standard library only.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ARM ``CPU part`` numbers (implementer 0x41, Arm Ltd.) from the Arm Technical Reference Manuals.
ARM_PARTS = {
    0xD03: "Cortex-A53",
    0xD04: "Cortex-A35",
    0xD05: "Cortex-A55",
    0xD07: "Cortex-A57",
    0xD08: "Cortex-A72",
    0xD09: "Cortex-A73",
    0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1",
    0xD0D: "Cortex-A77",
    0xD40: "Neoverse-V1",
    0xD41: "Cortex-A78",
    0xD44: "Cortex-X1",
    0xD46: "Cortex-A510",
    0xD47: "Cortex-A710",
    0xD48: "Cortex-X2",
    0xD49: "Neoverse-N2",
    0xD4F: "Neoverse-V2",
}


def cpu_model(cpuinfo: str | None = None, dt_model: str | None = None) -> str:
    """Return a human CPU name from ``/proc/cpuinfo`` (x86 ``model name`` or ARM part numbers).

    Args:
        cpuinfo: text of /proc/cpuinfo (read from the machine when None).
        dt_model: device-tree board model (e.g. "Raspberry Pi 4 Model B"), read when None.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    if dt_model is None:
        try:
            dt_model = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")
        except OSError:
            dt_model = ""
    fields: dict[str, list[str]] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if "model name" in fields:
        name = fields["model name"][0]
    elif "cpu part" in fields:
        parts = []
        for imp, part in zip(fields.get("cpu implementer", []), fields["cpu part"], strict=False):
            try:
                p = int(part, 16)
            except ValueError:
                continue
            label = ARM_PARTS.get(p, f"part {part}") if imp.lower() == "0x41" else f"implementer {imp} part {part}"
            if label not in parts:
                parts.append(label)
        name = " + ".join(parts) or "unknown ARM"
    else:
        name = platform.processor() or "unknown"
    return f"{name} ({dt_model})" if dt_model else name


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss`` is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def cpu_flags(cpuinfo: str | None = None) -> str:
    """The CPU flags that decide int8 speed (AVX*, AMX, FMA, F16C, every VNNI), space-separated; ``-`` if none.

    Read from ``/proc/cpuinfo`` (x86 ``flags``; aarch64 ``Features``); ``?`` where it cannot be read.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "?"
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith(("flags", "Features"))), "")
    flags = set(line.partition(":")[2].split())
    prefixes = ("avx", "amx", "fma", "f16c", "asimd", "sve", "i8mm")
    keep = sorted(f for f in flags if f.startswith(prefixes) or "vnni" in f)
    return " ".join(keep) or "-"


def system_record() -> dict[str, str | int]:
    """:func:`describe` plus ``cpu_flags``: what every results file records about the machine it ran on."""
    return describe() | {"cpu_flags": cpu_flags()}


def system_line(system: Mapping[str, Any] | None) -> str:
    """A :func:`system_record` as one header line: ``MODEL (ARCH, N logical CPUs); flags: FLAGS``."""
    if not system:
        return "not recorded"
    return (f"{system['cpu_model']} ({system['machine']}, {system['cpu_count']} logical CPUs); "
            f"flags: {system['cpu_flags']}")


def llc_bytes(root: str | os.PathLike[str] = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Size in bytes of the last-level data (or unified) cache CPU 0 sees; 0 where it cannot be read.

    From Linux's ``cacheinfo`` in sysfs (``indexN/{level,type,size}``; sizes like ``32768K``): the
    highest level's size. A virtual machine reports what its hypervisor exposes, and other tenants
    may share that cache.
    """
    best = (0, 0)
    for index in sorted(Path(root).glob("index*")):
        try:
            level = int((index / "level").read_text().strip())
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        if kind not in ("Data", "Unified"):
            continue
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        best = max(best, (level, size))
    return best[1]


def describe() -> dict[str, str | int]:
    """CPU model, machine architecture, kernel release, logical CPU count, last-level cache bytes."""
    uname = os.uname()
    return {
        "cpu_model": cpu_model(),
        "machine": uname.machine,
        "kernel": f"{uname.sysname} {uname.release}",
        "cpu_count": os.cpu_count() or 0,
        "llc_bytes": llc_bytes(),
    }
