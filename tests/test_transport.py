"""Transports: every registered one measures a model through its real path (ssh against a real
OpenSSH server on 127.0.0.1 with a key made in a temp folder; adb against the STAND-IN phone of
tests/standins, since no Android device exists here)."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


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
    port = free_port()
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


@pytest.mark.slow
def test_profile_over_ssh_matches_local_keys(sshd, tmp_path, block_cache):
    url, opts = sshd
    cmd = [sys.executable, str(ROOT / "hw" / "profile.py"), "--device", "pi", "--target", url, "--out-dir", str(tmp_path),
           "--resolution", "24", "--runs", "3", "--warmup", "1", "--calib-subnets", "0", "--sweeps", "1",
           "--remote-python", sys.executable, "--delegate", "xnnpack", "--threads", "all",
           "--json"] + [a for o in opts for a in ("--ssh-option", o)]
    env = {**os.environ, "QFA_CACHE": str(block_cache)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd
    df = pd.read_csv(tmp_path / "pi.csv")
    assert len(df) > 400 and (df["median_us"] > 0).all() and df["key"].is_unique
    meta = __import__("json").loads((tmp_path / "pi.json").read_text())
    assert meta["transport"] == url and "uname" in meta["device_facts"]
    assert meta["threads"] == int(meta["device_facts"]["cores"]) == os.cpu_count()  # --threads all: the device's nproc


def _transport_case(scheme: str, request, tmp_path, monkeypatch):
    """(target, RunConfig) of a reachable device for each registered transport scheme."""
    from hw.transport import RunConfig
    fast = dict(runs=2, warmup=1)
    if scheme == "local":
        return "local", RunConfig(**fast)
    if scheme == "ssh":
        url, opts = request.getfixturevalue("sshd")
        return url, RunConfig(ssh_options=tuple(opts), remote_python=sys.executable, **fast)
    if scheme == "adb":  # STAND-IN phone: tests/standins/adb runs its shell commands here
        standins = ROOT / "tests" / "standins"
        monkeypatch.setenv("PATH", os.pathsep.join([str(standins), str(Path(sys.executable).parent), os.environ["PATH"]]))
        monkeypatch.setenv("QFA_FAKE_DEVICE", str(tmp_path / "phone"))
        return "adb", RunConfig(runtime=f"benchmark_model:{standins / 'benchmark_model'}", **fast)
    raise AssertionError(f"transport {scheme!r} is registered but has no test device here")


@pytest.mark.parametrize("scheme", sorted(__import__("hw.transport", fromlist=["TRANSPORTS"]).TRANSPORTS))
def test_every_transport_measures_a_model_whose_name_is_hostile(scheme, request, tmp_path, monkeypatch):
    """A file name with spaces and shell metacharacters travels as one argument, and the timing
    row comes back parsed, through each transport's connect / push / run / parse / close."""
    from export.targets import TARGETS
    from hw.blocks import overhead_model
    from hw.transport import make_transport
    target, cfg = _transport_case(scheme, request, tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "a b;$(touch pwned)'.tflite"
    odd.write_bytes(overhead_model(TARGETS["tflite-int8"]))
    t = make_transport(target, cfg)
    try:
        res = t.measure([odd, odd])
        assert len(res) == 2 and all(r["min_us"] > 0 and r["median_us"] > 0 and r["count"] == 2 for r in res)
    finally:
        t.close()
    assert not (tmp_path / "pwned").exists() and not (Path.home() / "pwned").exists()


HOSTILE = [  # (argument list, what the one line names); none may reach ssh/adb or the file system
    (["--target", "ssh://-oProxyCommand=touch${IFS}PROBE"], "ssh host"),
    (["--target", "ssh://-oProxyCommand=touch${IFS}PROBE@127.0.0.1"], "ssh user"),
    (["--target", "ssh://pi@host;touch PROBE"], "ssh"),
    (["--target", "adb:-stouch"], "adb serial"),
    (["--target", "ssh://pi@127.0.0.1", "--ssh-option", "ProxyCommand=touch PROBE"], "runs commands"),
    (["--target", "ssh://pi@127.0.0.1", "--ssh-option=-oProxyCommand"], "--ssh-option"),
    (["--target", "ssh://pi@127.0.0.1", "--taskset=-x;touch PROBE"], "--taskset"),
    (["--target", "ssh://pi@127.0.0.1", "--remote-python=-oProxyCommand=touch PROBE"], "--remote-python"),
    (["--device", "a;touch PROBE"], "--device"),
    (["--device", "../elsewhere/t", "--validate", "1"], "--device"),
    (["--device", "x" * 65], "--device"),
]


@pytest.mark.parametrize("args, names", HOSTILE, ids=[h[1] + str(i) for i, h in enumerate(HOSTILE)])
def test_hostile_targets_and_names_are_one_line_exit_2_and_touch_nothing(args, names, tmp_path):
    argv = args if "--device" in args else ["--device", "t", *args]
    r = subprocess.run([sys.executable, str(ROOT / "hw" / "profile.py"), *argv, "--out-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and names in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "PROBE").exists() and not (tmp_path / "out").exists() and not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
