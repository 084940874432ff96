"""The toolkit works installed from its wheel, away from the source checkout: presets, shipped
tables and the block-cache fingerprint come from the installed package, not the repository."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp),
                        str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp.glob("qfa_toolkit-*.whl")
    site = tmp / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def _run(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install's finder
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_the_wheel_carries_configs_and_tables_and_runs_outside_the_checkout(installed, tmp_path):
    code = ("import json, qfa, hw.build\n"
            "from qfa.app.main_job import DEFAULT_TABLE\n"
            "from qfa.train.config import load_config\n"
            "from hw.table import LatencyTable\n"
            "t = LatencyTable.load(DEFAULT_TABLE)\n"
            "print(json.dumps({'qfa': qfa.__file__, 'table': str(DEFAULT_TABLE), 'entries': len(t.rows),\n"
            "  'preset': load_config('fmnist_short').space, 'fingerprint': hw.build.code_fingerprint()}))")
    r = _run(installed, code, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["qfa"].startswith(str(installed)) and out["table"].startswith(str(installed))
    assert out["entries"] > 100 and out["preset"] == "fmnist" and len(out["fingerprint"]) == 12
    # the same sources fingerprint the same, installed or in the checkout
    from hw.build import code_fingerprint
    assert out["fingerprint"] == code_fingerprint()
    r = _run(installed, "import sys; from qfa.app.cli import main; sys.exit(main(['space', '--json']))", tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "fmnist", r.stderr[-2000:]
