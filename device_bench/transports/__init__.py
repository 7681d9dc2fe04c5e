"""Transports: ``local``, ``qemu-aarch64``, ``ssh://[user@]host[:port]``, ``adb://SERIAL``.

:func:`resolve` turns a ``--device`` value (a transport URL or an inventory name) into a
transport. Transport modules are imported lazily so one missing tool never breaks the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device_bench.transports.base import DeviceError, Transport

if TYPE_CHECKING:  # inventory imports transports.base: a runtime import here would be circular
    from device_bench.inventory import Device

SCHEMES = ("local", "qemu-aarch64", "ssh://", "adb://")
EMULATED_PREFIX = "qemu"


def emulated(device: str) -> bool:
    """Whether ``--device`` names an emulated device (``qemu-*``): it counts instructions per inference, not ms."""
    return device.startswith(EMULATED_PREFIX)


def from_url(url: str, *, name: str | None = None, options: dict[str, Any] | None = None) -> Transport:
    """A transport for a URL; ``options`` are inventory keys for it."""
    opts = dict(options or {})
    label = name or url
    if url == "local":
        from device_bench.transports.local import LocalTransport

        return LocalTransport(label, python=opts.get("python"))
    if url == "qemu-aarch64":
        from device_bench.transports.qemu import QemuTransport

        return QemuTransport(label)
    if url.startswith("ssh://"):
        from device_bench.transports.ssh import SshTransport

        return SshTransport.from_url(url, name=label, options=opts)
    if url.startswith("adb://"):
        from device_bench.transports.adb import AdbTransport

        return AdbTransport.from_url(url, name=label, options=opts)
    raise DeviceError(f"device {url!r} not understood; valid: local, qemu-aarch64, ssh://[user@]host[:port], "
                      "adb://SERIAL or a name from the device inventory")


def resolve(device: str, inventory: dict[str, Device]) -> tuple[Transport, Device | None]:
    """The transport for ``--device`` (an inventory name wins over a URL) and its inventory entry."""
    if device in inventory:
        entry = inventory[device]
        return from_url(entry.transport, name=device, options=entry.options), entry
    if not device.startswith(SCHEMES):
        known = ", ".join(sorted(inventory)) or "none"
        raise DeviceError(f"device {device!r} is neither a transport URL nor in the inventory (names: {known}); "
                          "valid URLs: local, qemu-aarch64, ssh://[user@]host[:port], adb://SERIAL")
    return from_url(device), None
