"""The device inventory: a TOML file naming devices, their transport, threads and runtimes.

Example (``devices.toml``)::

    [devices.pi4]
    transport = "ssh://pi@raspberrypi.local"     # ~/.ssh/config, keys and jump hosts apply
    threads = 4
    runtimes = ["tflite", "executorch"]
    python = "python3"                            # the board's Python with numpy + a runtime
    native_runner = "/opt/edge-se/et_runner"      # aarch64 native runner (default: .arm-emu/bin)

    [devices.pixel7]
    transport = "adb://28161FDH2000C1"
    tflite_benchmark = "~/android/benchmark_model"   # TFLite's benchmark_model for arm64

Found at ``--inventory FILE``, else ``$EDGE_SE_DEVICES``, else ``./devices.toml``, else
``~/.config/edge-se/devices.toml``. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_bench.transports.base import DeviceError

#: Keys a device entry may have, with their types.
KEYS: dict[str, type | tuple[type, ...]] = {
    "transport": str,
    "threads": int,
    "runtimes": list,
    "runner": str,
    "python": str,
    "identity_file": str,
    "ssh_options": list,
    "connect_timeout_s": (int, float),
    "timeout_s": (int, float),
    "native_runner": str,
    "native_lib_dir": str,
    "tflite_benchmark": str,
    "executor_runner": str,
    "adb": str,
    "remote_dir": str,
    "description": str,
}
RUNTIMES = ("tflite", "executorch")


@dataclass(frozen=True)
class Device:
    """One inventory entry: ``name``, ``transport`` URL and its options."""

    name: str
    transport: str
    threads: int | None = None
    runtimes: tuple[str, ...] = RUNTIMES
    options: dict[str, Any] = field(default_factory=dict)


def default_path() -> Path | None:
    """The inventory file used when none is given (None when there is none)."""
    if os.environ.get("EDGE_SE_DEVICES"):
        return Path(os.environ["EDGE_SE_DEVICES"])
    for p in (Path("devices.toml"), Path.home() / ".config/edge-se/devices.toml"):
        if p.exists():
            return p
    return None


def load(path: str | os.PathLike[str] | None = None) -> dict[str, Device]:
    """Read and validate an inventory; an absent default file gives an empty inventory."""
    p = Path(path) if path is not None else default_path()
    if p is None:
        return {}
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeviceError(f"{p}: device inventory not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeviceError(f"{p}: not valid TOML ({exc})") from None
    devices = doc.get("devices")
    if not isinstance(devices, dict):
        raise DeviceError(f"{p}: expected [devices.NAME] tables")
    out = {}
    for name, entry in devices.items():
        where = f"{p}: devices.{name}"
        if not isinstance(entry, dict):
            raise DeviceError(f"{where}: expected a table")
        for key, value in entry.items():
            if key not in KEYS:
                raise DeviceError(f"{where}: unknown key {key!r}; valid: {', '.join(KEYS)}")
            if not isinstance(value, KEYS[key]) or isinstance(value, bool):
                expected = getattr(KEYS[key], "__name__", "a number")
                raise DeviceError(f"{where}.{key}: expected {expected}, got {value!r}")
        if "transport" not in entry:
            raise DeviceError(f"{where}: missing required key 'transport'")
        runtimes = tuple(entry.get("runtimes", RUNTIMES))
        bad = [r for r in runtimes if r not in RUNTIMES]
        if bad:
            raise DeviceError(f"{where}.runtimes: unknown {bad}; valid: {', '.join(RUNTIMES)}")
        threads = entry.get("threads")
        if threads is not None and threads < 1:
            raise DeviceError(f"{where}.threads: must be >= 1, got {threads}")
        opts = {k: v for k, v in entry.items() if k not in ("transport", "threads", "runtimes")}
        out[name] = Device(name=name, transport=entry["transport"], threads=threads, runtimes=runtimes, options=opts)
    return out
