"""Build the native ExecuTorch runner (``native/runner.cpp``) for the host or for aarch64.

It compiles against the runtime libraries and headers the executorch wheel ships (no CMake, no
ExecuTorch source tree), in a second or two::

    python -m device_bench.native_build                       # host, from the venv's wheel
    python -m device_bench.native_build --target aarch64 --et-root .arm-emu/executorch/executorch

The binary's rpath is ``$ORIGIN/lib`` then the wheel's ``lib/``, so a copy shipped to a device
with the libraries beside it in ``lib/`` runs there too. A build is skipped when the binary is
newer than its sources and was made with the same command (kept in ``BINARY.cmd``).
Standard library only (it runs before anything else is installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

from contract.files import atomic_path, exclusive, write_text

NATIVE_DIR = Path(__file__).resolve().parent / "native"
SOURCES = ("runner.cpp", "latency_stats.h", "mini_json.h", "sha256.h")
#: The statistics alone (``latency_stats.h``) behind a stdin/stdout driver, for checking them against
#: ``device_bench/stats.py`` without ExecuTorch (tests/test_device_bench_stats.py).
STATS_CHECK_SOURCES = ("stats_check.cpp", "latency_stats.h", "mini_json.h")
#: Flags of every build: C++17 and no fused multiply-add contraction, so the statistics do exactly
#: Python's operations (a * b + c rounds twice there; an FMA would round once).
CXXFLAGS = ("-std=c++17", "-O2", "-ffp-contract=off")
#: Components linked with --no-as-needed: they register kernels and backends from static
#: initialisers, so the linker would otherwise drop them (../shared/PLATFORM.md).
LIBRARIES = (
    "executorch",
    "executorch_threadpool",
    "executorch_backend_xnnpack",
    "executorch_kernels_optimized",
    "executorch_kernels_quantized",
)
DEFINES = ("C10_USING_CUSTOM_GENERATED_MACROS", "ET_EVENT_TRACER_ENABLED", "ET_USE_THREADPOOL")
#: Linked where the wheel ships it (with ``-DEDGE_SE_ETDUMP``): the runner's ``--etdump`` writes an ETDump
#: (per-operator profiles, device_bench/op_profile.py); without it, ``--etdump`` is a one-line error.
ETDUMP_LIBRARY = "executorch_etdump"
COMPILERS = {"host": "g++", "aarch64": "aarch64-linux-gnu-g++"}
HOST_DEFAULT_OUT = Path("build/device_bench/et_runner-host")
STATS_CHECK_DEFAULT_OUT = Path("build/device_bench/stats_check-host")


class BuildError(RuntimeError):
    """The runner could not be built: the message names the missing piece."""


def host_et_root() -> Path:
    """The installed executorch package folder (holding ``lib/`` and ``include/``)."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("executorch is not installed in this Python; pip install executorch")
    return Path(list(spec.submodule_search_locations)[0])


def et_version(et_root: Path) -> str:
    """The ``__version__`` in the wheel's ``version.py`` (``unknown`` when absent)."""
    text = (et_root / "version.py").read_text() if (et_root / "version.py").exists() else ""
    m = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    return m.group(1) if m else "unknown"


def command(target: str, et_root: Path, out: Path) -> list[str]:
    """The compiler command line for ``target`` (``host`` or ``aarch64``)."""
    if target not in COMPILERS:
        raise BuildError(f"unknown target {target!r}; valid: {', '.join(COMPILERS)}")
    lib, inc = et_root / "lib", et_root / "include"
    for p in (lib, inc):
        if not p.is_dir():
            raise BuildError(f"{p} not found: {et_root} is not an executorch wheel's package folder")
    missing = [n for n in LIBRARIES if not (lib / f"lib{n}.so").exists()]
    if missing:
        raise BuildError(f"{lib} lacks {', '.join('lib' + n + '.so' for n in missing)}")
    cmd = [COMPILERS[target], *CXXFLAGS, "-o", str(out), str(NATIVE_DIR / "runner.cpp"),
           f"-I{inc}", f"-I{inc / 'executorch/runtime/core/portable_type/c10'}", f"-I{NATIVE_DIR}",
           f'-DEDGE_SE_ET_VERSION="{et_version(et_root)}"']
    cmd += [f"-D{d}" for d in DEFINES]
    etdump = (lib / f"lib{ETDUMP_LIBRARY}.so").exists()
    cmd += ["-DEDGE_SE_ETDUMP"] if etdump else []
    cmd += [f"-L{lib}", "-Wl,--push-state,--no-as-needed"] + [f"-l{n}" for n in LIBRARIES]
    cmd += [f"-l{ETDUMP_LIBRARY}"] if etdump else []
    cmd += ["-Wl,--pop-state", "-Wl,--enable-new-dtags", f"-Wl,-rpath,$ORIGIN/lib:{lib.resolve()}", "-lpthread"]
    return cmd


def _compile(cmd: list[str], out: Path, sources: tuple[str, ...], what: str) -> bool:
    """Run ``cmd`` unless ``out`` is newer than ``sources`` and was made by the same command; True if it ran.

    One build at a time per output (a lock beside it), into a temporary file renamed onto ``out``:
    a process running the old binary, or a second build of the same one (two pytest-xdist workers),
    never sees a half-written file.
    """
    stamp = out.with_name(out.name + ".cmd")
    line = shlex.join(cmd)
    newest_src = max((NATIVE_DIR / s).stat().st_mtime for s in sources)
    with exclusive(out):
        if out.exists() and stamp.exists() and stamp.read_text() == line and out.stat().st_mtime >= newest_src:
            return False
        with atomic_path(out, mode=0o755) as tmp:
            run = [str(tmp) if i > 0 and cmd[i - 1] == "-o" else c for i, c in enumerate(cmd)]
            try:
                proc = subprocess.run(run, capture_output=True, text=True)
            except FileNotFoundError:
                raise BuildError(f"{cmd[0]} not found; install it (Debian: g++ / g++-aarch64-linux-gnu)") from None
            if proc.returncode != 0:
                raise BuildError(f"compiling {what} failed:\n{proc.stderr[-4000:]}")
        write_text(stamp, line)
    return True


def build(target: str = "host", *, et_root: Path | None = None, out: Path | None = None) -> Path:
    """Build (or keep) the runner; return the binary path.

    Args:
        target: ``host`` or ``aarch64`` (needs ``aarch64-linux-gnu-g++``).
        et_root: the executorch package folder of the wheel for that target (host: this venv's).
        out: where the binary goes (host default ``build/device_bench/et_runner-host``).
    """
    et_root = (et_root or host_et_root()).resolve()
    out = Path(out or HOST_DEFAULT_OUT)
    if _compile(command(target, et_root, out), out, SOURCES, "the native runner"):
        print(f"built  {out} (native runner, {target}, executorch {et_version(et_root)})", file=sys.stderr)
    else:
        print(f"ok     {out} (native runner, {target})", file=sys.stderr)
    return out


def build_stats_check(out: Path | None = None) -> Path:
    """Build (or keep) the host driver of ``latency_stats.h`` (no ExecuTorch needed); return the binary path.

    It reads ``UNSTABLE_PCT`` on the first line of stdin, then one repeat per line (``SECONDS X1 X2 ...``,
    latencies in ms) and prints the JSON object of the native runner's latency keys for them.
    """
    out = Path(out or STATS_CHECK_DEFAULT_OUT)
    cmd = [COMPILERS["host"], *CXXFLAGS, "-o", str(out), str(NATIVE_DIR / "stats_check.cpp"), f"-I{NATIVE_DIR}"]
    _compile(cmd, out, STATS_CHECK_SOURCES, "the statistics check")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: build for ``--target`` into ``--out``."""
    p = argparse.ArgumentParser(description="Build the native ExecuTorch runner.")
    p.add_argument("--target", default="host", choices=sorted(COMPILERS))
    p.add_argument("--et-root", type=Path, default=None, help="executorch package folder of the target's wheel")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        build(args.target, et_root=args.et_root, out=args.out)
    except BuildError as exc:
        print(f"native_build: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
