"""The ``ssh://[user@]host[:port]`` transport: a real Linux board through the system OpenSSH client.

Using ``ssh`` itself (not a Python SSH library) means ``~/.ssh/config``, keys, agents and jump
hosts work as they do for the user. One run: make a temporary directory on the device, stream
the runner, artifact and manifest into it as a tar archive (``scp`` is absent or blocked on
some boards; ``tar`` is not), check the artifact's sha256 there, run, parse the JSON, and
remove the directory whatever happened. Every remote command line is built with
``shlex.quote`` on each argument, so no file name or option can inject shell syntax.
"""

from __future__ import annotations

import io
import platform
import re
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device_bench.manifest import load_manifest
from device_bench.transports.base import DeviceError, RunOptions, last_error_line, parse_result, stage_runner

_URL = re.compile(r"^ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d+))?/?$")
_SSH_FAILURES = (
    ("connection refused", "connection refused (is sshd running on that port?)"),
    ("permission denied", "authentication failed (key not accepted; check identity_file / ssh-agent)"),
    ("connection timed out", "connection timed out"),
    ("operation timed out", "connection timed out"),
    ("could not resolve hostname", "host name not resolved"),
    ("no route to host", "no route to host"),
    ("host key verification failed", "host key verification failed (unknown or changed host key)"),
    ("connection closed", "connection closed by the device"),
)


def _refuse_option_like(device: str, what: str, value: str | None) -> None:
    """Refuse an ssh user or host that ssh would read as an option ("-oProxyCommand=..." runs a command)."""
    if value is not None and (not value or value.startswith("-")):
        raise DeviceError(f"device {device!r}: ssh {what} {value!r} may not start with '-' or be empty "
                          "(ssh would read it as an option)")


class SshTransport:
    """A Linux device reached with OpenSSH."""

    kind = "ssh"
    emulated = False

    def __init__(self, host: str, *, user: str | None = None, port: int | None = None, name: str | None = None,
                 options: dict[str, Any] | None = None) -> None:
        opts = dict(options or {})
        for what, value in (("host", host), ("user", user)):
            _refuse_option_like(name or host, what, value)
        self.host, self.user, self.port = host, user, port
        self.url = f"ssh://{user + '@' if user else ''}{host}{':' + str(port) if port else ''}"
        self.name = name or self.url
        self.python = str(opts.get("python", "python3"))
        self.connect_timeout_s = float(opts.get("connect_timeout_s", 10))
        self.ssh_options = [str(o) for o in opts.get("ssh_options", [])]
        self.identity_file = opts.get("identity_file")
        self.native_runner = opts.get("native_runner")
        self.native_lib_dir = opts.get("native_lib_dir")

    @classmethod
    def from_url(cls, url: str, *, name: str | None = None, options: dict[str, Any] | None = None) -> SshTransport:
        """Parse ``ssh://[user@]host[:port]``; raise naming the URL when it is malformed."""
        # Before the URL pattern, so "-oProxyCommand=a/b" is refused for what it is, not as malformed.
        user_part, _, host_part = url.removeprefix("ssh://").rpartition("@")
        _refuse_option_like(url, "user", user_part or None)
        _refuse_option_like(url, "host", host_part)
        m = _URL.match(url)
        if not m:
            raise DeviceError(f"device {url!r}: expected ssh://[user@]host[:port]")
        port = int(m["port"]) if m["port"] else None
        if port is not None and not 0 < port < 65536:
            raise DeviceError(f"device {url!r}: port {port} outside 1..65535")
        return cls(m["host"], user=m["user"], port=port, name=name, options=options)

    def base_command(self) -> list[str]:
        """``ssh`` with batch mode (never prompts), a connect time-out and the user's options."""
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s:g}",
               "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.identity_file:
            cmd += ["-i", str(Path(self.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.port:
            cmd += ["-p", str(self.port)]
        cmd += self.ssh_options
        # "--" ends ssh's options, so the destination can never be read as one (defence in depth
        # beside the check in __init__); everything after the destination is the remote command.
        cmd += ["--", f"{self.user}@{self.host}" if self.user else self.host]
        return cmd

    def ssh(self, argv: Sequence[str], *, timeout_s: float, what: str, stdin: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` on the device (each argument quoted); errors name the device and the cause."""
        remote = shlex.join(argv)
        try:
            proc = subprocess.run([*self.base_command(), remote], input=stdin, capture_output=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: {what} timed out after {timeout_s:g} s") from None
        except FileNotFoundError:
            raise DeviceError(f"{self.name}: the OpenSSH client (ssh) is not installed here") from None
        out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                          proc.stderr.decode(errors="replace"))
        if proc.returncode == 255:  # ssh's own failure: connection or authentication
            low = out.stderr.lower()
            cause = next((msg for key, msg in _SSH_FAILURES if key in low), last_error_line(out.stderr))
            raise DeviceError(f"{self.name}: {cause}")
        if check and proc.returncode != 0:
            raise DeviceError(f"{self.name}: {what} failed (exit {proc.returncode}): {last_error_line(out.stderr)}")
        return out

    def _payload(self, artifact: Path, manifest: Path, native: tuple[Path, Path] | None) -> bytes:
        """A tar archive of the runner package, the artifact, the manifest and the native runner."""
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=buf, mode="w") as tar:
            stage = self._stage(Path(tmp), artifact, manifest)
            tar.add(stage, arcname=".")
            if native is not None:
                tar.add(native[0], arcname="et_runner")
                for lib in sorted(native[1].glob("*.so")):
                    tar.add(lib, arcname=f"lib/{lib.name}")
        return buf.getvalue()

    def _stage(self, folder: Path, artifact: Path, manifest: Path) -> Path:
        """Files to send, in one folder (a seam the tests use to corrupt a transfer)."""
        stage_runner(folder)
        (folder / artifact.name).write_bytes(artifact.read_bytes())
        (folder / f"{artifact.name}.json").write_bytes(manifest.read_bytes())
        return folder

    def _native_for(self, machine: str) -> tuple[Path, Path]:
        """The native runner and its library folder for the device's architecture."""
        if self.native_runner:
            binary = Path(self.native_runner).expanduser()
            libs = Path(self.native_lib_dir).expanduser() if self.native_lib_dir else binary.parent / "lib"
        elif machine == "aarch64":
            from device_bench import emu

            env = emu.EmuEnv(base=emu.default_base(), qemu="")
            binary, libs = env.native_runner, env.et_lib
        else:
            from device_bench.native_build import build, host_et_root

            if machine != platform.machine():
                raise DeviceError(f"{self.name}: no native runner for {machine}; set native_runner in the inventory")
            binary, libs = build("host"), host_et_root() / "lib"
        if not binary.exists():
            raise DeviceError(f"{self.name}: native runner {binary} not built (make arm-emu builds the aarch64 one)")
        return binary, libs

    def run(self, artifact: Path, manifest: Path, opts: RunOptions) -> dict[str, Any]:
        """Copy, verify, run and clean up on the device."""
        m = load_manifest(manifest)
        t = opts.timeout_s
        head = self.ssh(["sh", "-c", "mktemp -d /tmp/edge-se.XXXXXX && uname -m"], timeout_s=t, what="mktemp")
        lines = head.stdout.split()
        if len(lines) < 2 or not lines[0].startswith("/tmp/edge-se."):
            raise DeviceError(f"{self.name}: unexpected reply to mktemp/uname: {head.stdout.strip()[:200]!r}")
        remote, machine = lines[0], lines[1]
        try:
            use_native = m.format == "pte" and opts.runner != "python"
            native = self._native_for(machine) if use_native else None
            self.ssh(["tar", "-x", "-C", remote, "-f", "-"], timeout_s=t, what="upload",
                     stdin=self._payload(artifact, manifest, native))
            art = f"{remote}/{artifact.name}"
            digest = self.ssh(["sha256sum", art], timeout_s=t, what="sha256sum").stdout.split()[:1]
            if digest != [m.sha256]:
                got = digest[0][:16] if digest else "nothing"
                raise DeviceError(f"{self.name}: sha256 of {artifact.name} on the device is {got}..., the manifest "
                                  f"says {m.sha256[:16]}...; the transfer was corrupted")
            if native is not None:
                prog = [f"{remote}/et_runner"]
            else:
                prog = ["env", f"PYTHONPATH={remote}", self.python, "-m", "device_bench.runner"]
            cmd = ["timeout", f"{max(t - 5, 1):g}", *prog, art, "--manifest", f"{art}.json", *opts.argv()]
            proc = self.ssh(cmd, timeout_s=t, what="runner", check=False)
            if proc.returncode == 124:
                raise DeviceError(f"{self.name}: runner timed out after {max(t - 5, 1):g} s on the device")
            if proc.returncode != 0:
                why = last_error_line(proc.stderr)
                raise DeviceError(f"{self.name}: runner failed (exit {proc.returncode}): {why}")
            return parse_result(proc.stdout, self.name)
        finally:
            try:
                self.ssh(["rm", "-rf", remote], timeout_s=min(t, 60), what="clean-up", check=False)
            except DeviceError:
                pass  # the run's own error (or result) matters more than a failed clean-up

    def probe(self) -> dict[str, Any]:
        """Reachability, ``uname -m`` and which runtimes the device's Python can import."""
        script = ("import importlib.util as u, platform; "
                  "print(platform.machine()); "
                  "print(','.join(m for m in ('ai_edge_litert', 'tflite_runtime', 'numpy') if u.find_spec(m)))")
        try:
            proc = self.ssh([self.python, "-c", script], timeout_s=self.connect_timeout_s + 20, what="probe")
        except DeviceError as exc:
            return {"reachable": False, "error": str(exc)}
        lines = proc.stdout.strip().splitlines() + ["", ""]
        return {"reachable": True, "machine": lines[0], "runtimes": [r for r in lines[1].split(",") if r]}
