"""The ssh transport against a real OpenSSH server on 127.0.0.1 (key made in a temp folder)."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path(SSHD).exists():
        if os.environ.get("CI"):
            pytest.fail("openssh-server is not installed (setup.sh installs it)")
        pytest.skip("sshd not installed")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    opts = [f"IdentityFile={d / 'client'}", f"UserKnownHostsFile={d / 'known_hosts'}",
            "StrictHostKeyChecking=accept-new", "IdentitiesOnly=yes"]
    yield f"ssh://{user}@127.0.0.1:{port}", opts
    proc.terminate()
    proc.wait(timeout=10)


def test_profile_over_ssh_matches_local_keys(sshd, tmp_path):
    url, opts = sshd
    cmd = [sys.executable, str(ROOT / "hw" / "profile.py"), "--device", "pi", "--target", url, "--out-dir", str(tmp_path),
           "--resolution", "24", "--runs", "3", "--warmup", "1", "--calib-subnets", "0", "--remote-python", sys.executable,
           "--json"] + [a for o in opts for a in ("--ssh-option", o)]
    env = {**os.environ, "QFA_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd
    df = pd.read_csv(tmp_path / "pi.csv")
    assert len(df) > 400 and (df["median_us"] > 0).all() and df["key"].is_unique
    meta = __import__("json").loads((tmp_path / "pi.json").read_text())
    assert meta["transport"] == url and "uname" in meta["device_facts"]


def test_ssh_transport_quotes_arguments(sshd, tmp_path):
    """A file name with spaces and shell metacharacters travels as one argument."""
    from hw.transport import SSH
    url, opts = sshd
    t = SSH(url, extra=[a for o in opts for a in ("-o", o)], python=sys.executable, runs=2, warmup=1)
    odd = tmp_path / "a b;$(touch pwned)'.tflite"
    from export.targets import TARGETS
    from hw.blocks import overhead_model
    odd.write_bytes(overhead_model(TARGETS["tflite-int8"]))
    try:
        res = t.measure([odd])
        assert res[0]["median_us"] > 0
        assert not Path("pwned").exists() and not (Path.home() / "pwned").exists()
    finally:
        t.close()
