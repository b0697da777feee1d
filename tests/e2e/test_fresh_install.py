"""The README's first command on a fresh virtual environment: `pip install .`, then the demo.

Everything comes from the built wheel (the nats-server binary included), nothing from this
checkout's editable install: a file missing from the wheel fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_then_headless_demo(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]

    def qixtui(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # Run from elsewhere so nothing in this checkout can be imported by accident.
        return subprocess.run(
            [str(bin_dir / "qixtui"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=timeout,
        )

    # This machine has a C compiler: the wheel carries the per-event modules compiled
    # (hatch_build.py).
    version = qixtui("--version")
    assert "(per-event code: compiled)" in version.stdout, version.stdout + version.stderr

    session = tmp_path / "demo.qix"
    # Seed 7 plans a declined order second and a compensated one third, so each outcome is
    # in the file however few orders a busy machine gets through in ten seconds.
    demo = qixtui(
        "demo", "--headless", "--duration", "10", "--seed", "7", "-o", str(session), "--json"
    )
    assert demo.returncode == 0, demo.stderr
    orders = json.loads(demo.stdout)["shop"]["orders"]
    assert orders["completed"] > 0
    assert orders["failed"] > 0
    assert orders["compensated"] > 0

    flows = [
        json.loads(line) for line in qixtui("flows", str(session), "--json").stdout.splitlines()
    ]
    statuses = Counter(f["status"] for f in flows if not f["orchestrated"])
    assert statuses["completed"] == orders["completed"]
    assert statuses["failed"] == orders["failed"]
    assert statuses["compensated"] == orders["compensated"]
    assert any(f["orchestrated"] for f in flows)
    events = [
        json.loads(line) for line in qixtui("events", str(session), "--json").stdout.splitlines()
    ]
    assert events
    assert [e["subject"] for e in events if e["flow_id"] is None] == []
