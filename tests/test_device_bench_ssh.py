"""The ssh transport against a real OpenSSH server started here on 127.0.0.1 with throwaway keys.

The server (Debian's openssh-server, installed by ``scripts/arm_emu.sh --deps``) runs as this
user with its own host key, authorized key and config in a temp folder; the tests stop it by
pid. It logs in as the current user and runs the device side with this venv's Python.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from device_artifacts import artifacts  # noqa: F401  (session fixture)

from contract.measure import MeasureSpec
from device_bench.bench import bench
from device_bench.inventory import Device
from device_bench.transports.base import DeviceError, RunOptions
from device_bench.transports.ssh import SshTransport

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not (os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("ssh-keygen")),
                                reason="OpenSSH server/client not installed (scripts/arm_emu.sh --deps installs them)")
FAST = RunOptions(MeasureSpec(warmup=1, runs=3, min_seconds=0.0, repeats=1, cooldown_s=0.0), timeout_s=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    host_key, client_key, other_key = keygen(d / "host"), keygen(d / "client"), keygen(d / "other")
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(f"""
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {proc.stderr.read().decode()[-1000:]}")
    opts = ["-o", f"UserKnownHostsFile={d}/known_hosts", "-o", "StrictHostKeyChecking=accept-new"]
    info = {"port": port, "user": getpass.getuser(), "key": client_key, "other_key": other_key, "ssh_options": opts}
    yield info
    proc.terminate()
    proc.wait(timeout=10)


def transport(sshd, *, key=None, port=None, **extra) -> SshTransport:
    options = {"identity_file": str(key or sshd["key"]), "ssh_options": sshd["ssh_options"], "python": sys.executable,
               "connect_timeout_s": 5, **extra}
    return SshTransport.from_url(f"ssh://{sshd['user']}@127.0.0.1:{port or sshd['port']}", options=options)


def remote_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("edge-se.*")}


@pytest.mark.device
@pytest.mark.export
def test_ssh_runs_both_formats_and_cleans_up(sshd, artifacts, tmp_path):  # noqa: F811
    before = remote_dirs()
    inventory = {"loop": Device("loop", f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", threads=1,
                                options={"identity_file": str(sshd["key"]), "ssh_options": sshd["ssh_options"],
                                         "python": sys.executable, "runner": "native"})}
    out = tmp_path / "r.jsonl"
    recs = bench([artifacts["tiny_se_litert_int8.tflite"], artifacts["tiny_se_xnnpack_int8.pte"]], ["loop"],
                 inventory, FAST, out)
    assert [r["status"] for r in recs] == ["ok", "ok"], [r.get("error") for r in recs]
    assert {r["transport"] for r in recs} == {"ssh"} and {r["device"] for r in recs} == {"loop"}
    assert recs[1]["runtime"]["name"] == "executorch-native"
    assert len(out.read_text().splitlines()) == 2
    assert remote_dirs() == before, "the device's temporary directory was not removed"


@pytest.mark.device
def test_ssh_wrong_key_is_one_line_auth_error(sshd, artifacts):  # noqa: F811
    t = transport(sshd, key=sshd["other_key"])
    with pytest.raises(DeviceError, match=r"^ssh://.*127\.0\.0\.1.*: authentication failed"):
        t.run(artifacts["tiny_se_litert_int8.tflite"], Path(f"{artifacts['tiny_se_litert_int8.tflite']}.json"), FAST)


@pytest.mark.device
def test_ssh_closed_port(sshd, artifacts):  # noqa: F811
    t = transport(sshd, port=free_port())
    with pytest.raises(DeviceError, match="connection refused"):
        t.run(artifacts["tiny_se_litert_int8.tflite"], Path(f"{artifacts['tiny_se_litert_int8.tflite']}.json"), FAST)
    assert t.probe()["reachable"] is False


@pytest.mark.device
def test_ssh_connect_timeout_on_silent_server(sshd, artifacts):  # noqa: F811
    # A TCP listener that accepts and never speaks SSH: the banner exchange times out.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    t = transport(sshd, port=srv.getsockname()[1], connect_timeout_s=2)
    start = time.monotonic()
    try:
        with pytest.raises(DeviceError, match="timed out"):
            t.run(artifacts["tiny_se_litert_int8.tflite"], Path(f"{artifacts['tiny_se_litert_int8.tflite']}.json"),
                  FAST)
    finally:
        srv.close()
    assert time.monotonic() - start < 30


@pytest.mark.device
@pytest.mark.export
def test_ssh_command_timeout(sshd, artifacts):  # noqa: F811
    t = transport(sshd)
    slow = RunOptions(MeasureSpec(warmup=0, runs=1, min_seconds=60.0, repeats=1), timeout_s=8)
    art = artifacts["tiny_se_litert_fp32.tflite"]
    with pytest.raises(DeviceError, match=r"timed out after \d+ s"):
        t.run(art, Path(f"{art}.json"), slow)


@pytest.mark.device
@pytest.mark.export
def test_ssh_checksum_mismatch_detected_on_device(sshd, artifacts, monkeypatch):  # noqa: F811
    t = transport(sshd)
    real_stage = SshTransport._stage

    def corrupt(self, folder, artifact, manifest):  # simulate a transfer that flips one byte
        stage = real_stage(self, folder, artifact, manifest)
        f = stage / artifact.name
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
        return stage

    monkeypatch.setattr(SshTransport, "_stage", corrupt)
    art = artifacts["tiny_se_litert_int8.tflite"]
    with pytest.raises(DeviceError, match="transfer was corrupted"):
        t.run(art, Path(f"{art}.json"), FAST)


@pytest.mark.device
@pytest.mark.export
def test_ssh_file_names_cannot_inject_shell(sshd, artifacts, tmp_path):  # noqa: F811
    src = artifacts["tiny_se_litert_int8.tflite"]
    marker = Path.home() / "edge_se_pwned"  # the remote shell starts in the user's home
    marker.unlink(missing_ok=True)
    name = f"a b;touch {marker.name};$(touch {marker.name})`touch {marker.name}`'.tflite"
    art = tmp_path / name
    art.write_bytes(src.read_bytes())
    Path(f"{art}.json").write_text(json.dumps({**json.loads(Path(f"{src}.json").read_text()), "artifact": name}))
    res = transport(sshd).run(art, Path(f"{art}.json"), FAST)
    assert res["artifact"] == name
    assert not marker.exists(), "a file name was interpreted by the remote shell"


def test_ssh_url_parsing():
    t = SshTransport.from_url("ssh://pi@raspberrypi.local:2222")
    assert (t.user, t.host, t.port) == ("pi", "raspberrypi.local", 2222)
    cmd = t.base_command()
    assert cmd[-2:] == ["--", "pi@raspberrypi.local"] and "BatchMode=yes" in cmd and "2222" in cmd
    assert SshTransport.from_url("ssh://board").user is None
    for bad in ("ssh://", "ssh://a@b@c", "ssh://host:99999", "ssh://host:port"):
        with pytest.raises(DeviceError, match="ssh://"):
            SshTransport.from_url(bad)


@pytest.mark.parametrize(
    "url",
    ["ssh://-oProxyCommand=touch${IFS}/tmp/edge_se_pwned@host", "ssh://-oProxyCommand=id", "ssh://pi@-oProxyCommand=id"],
)
def test_ssh_destination_that_looks_like_an_option_is_refused_and_runs_nothing(url, monkeypatch):
    """``ssh://-oProxyCommand=...`` would make ssh run a local command: refused before any process starts."""
    from device_bench.transports import from_url
    from device_bench.transports.base import DeviceError
    from device_bench.transports.ssh import SshTransport

    def no_process(*a, **k):
        raise AssertionError(f"a process was started: {a}")

    monkeypatch.setattr(subprocess, "run", no_process)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    with pytest.raises(DeviceError, match="may not start with '-'"):
        from_url(url)
    with pytest.raises(DeviceError, match="may not start with '-'"):
        SshTransport("-oProxyCommand=id", name="board")  # the inventory path (host/user given as fields)
    with pytest.raises(DeviceError, match="may not start with '-'"):
        SshTransport("host", user="-oProxyCommand=id", name="board")
