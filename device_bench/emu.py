"""Locate the aarch64 emulation environment that ``make arm-emu`` (scripts/arm_emu.sh) builds.

Layout of ``.arm-emu/`` (or ``$EDGE_SE_ARM_EMU``)::

    root/                 aarch64 Debian minbase with python3, fake /proc/cpuinfo and /sys CPU files
    site/                 aarch64 wheels: numpy, ai-edge-litert and their dependencies
    executorch/executorch ExecuTorch's aarch64 runtime libraries and headers (from its wheel)
    bin/et_runner         the native runner cross-compiled for aarch64
    bin/libinsn.so        the instruction-counting QEMU TCG plugin
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from device_bench.transports.base import PACKAGE_DIR, DeviceError

#: The emulated CPU. QEMU 7.2's default ``max`` CPU takes SVE paths that give wrong int8
#: results in LiteRT and ExecuTorch; Neoverse-N1 gives x86-identical int8 (../shared/PLATFORM.md).
QEMU_CPU = "neoverse-n1"


@dataclass(frozen=True)
class EmuEnv:
    """Paths of a built emulation environment."""

    base: Path
    qemu: str

    @property
    def root(self) -> Path:
        """The aarch64 root file system (``qemu -L``)."""
        return self.base / "root"

    @property
    def site(self) -> Path:
        """aarch64 Python packages."""
        return self.base / "site"

    @property
    def python(self) -> Path:
        """aarch64 python3 inside the root."""
        return self.root / "usr/bin/python3"

    @property
    def native_runner(self) -> Path:
        """The aarch64 native ExecuTorch runner."""
        return self.base / "bin/et_runner"

    @property
    def et_lib(self) -> Path:
        """ExecuTorch aarch64 shared libraries."""
        return self.base / "executorch/executorch/lib"

    @property
    def plugin(self) -> Path:
        """The instruction-counting TCG plugin."""
        return self.base / "bin/libinsn.so"

    def env(self, pythonpath: str = "") -> dict[str, str]:
        """Environment for an emulated process (pinned CPU, single-threaded BLAS, fixed hashing)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QEMU_", "PYTHON"))}
        env.update(QEMU_CPU=QEMU_CPU, OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, str(self.site)]))
        return env

    def prefix(self, *, count_to: Path | None = None) -> list[str]:
        """``[setarch -R] qemu-aarch64 -L ROOT [-plugin ...]`` (the dynamic binary: only it takes plugins)."""
        cmd = [self.qemu, "-L", str(self.root)]
        if count_to is not None:
            # Address-space randomisation moves buffers between runs, and kernels take
            # alignment-dependent paths (seen: 0.1-0.2% count spread for LiteRT); fix the layout.
            setarch = no_aslr_prefix()
            cmd = [*setarch, *cmd]
            cmd += ["-plugin", f"{self.plugin},outfile={count_to}"]
        return cmd


@functools.cache
def no_aslr_prefix() -> tuple[str, ...]:
    """``setarch ARCH -R`` where it works here (a sandbox may forbid ``personality``), else nothing."""
    setarch = shutil.which("setarch")
    if setarch is None:
        return ()
    cmd = (setarch, platform.machine(), "-R")
    ok = subprocess.run([*cmd, "true"], capture_output=True).returncode == 0
    return cmd if ok else ()


def default_base() -> Path:
    """``$EDGE_SE_ARM_EMU``, else ``./.arm-emu``, else ``.arm-emu`` beside the package."""
    if os.environ.get("EDGE_SE_ARM_EMU"):
        return Path(os.environ["EDGE_SE_ARM_EMU"])
    cwd = Path.cwd() / ".arm-emu"
    return cwd if cwd.exists() else PACKAGE_DIR.parent / ".arm-emu"


def find(base: Path | None = None, *, need: tuple[str, ...] = ("python", "native_runner", "plugin")) -> EmuEnv:
    """The environment at ``base``; raise a one-line error naming what is missing and the fix."""
    base = base or default_base()
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise DeviceError("qemu-aarch64: the qemu-aarch64 binary is not installed; run make arm-emu-deps (root)")
    env = EmuEnv(base=base, qemu=qemu)
    missing = [str(getattr(env, n)) for n in need if not getattr(env, n).exists()]
    if missing:
        raise DeviceError(f"qemu-aarch64: emulation environment incomplete (missing {', '.join(missing)}); "
                          "run make arm-emu")
    return env
