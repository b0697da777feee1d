"""A recording stopped while a viewer still has the file open ends cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from helpers import qixtui_command

from qixtui.core import store


def test_recorder_stops_cleanly_with_a_reader_attached(nats_server, tmp_path: Path):
    out = tmp_path / "viewed.qix"
    proc = subprocess.Popen(
        qixtui_command("record", "-s", nats_server.url, "-o", str(out), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        viewer = store.open_session(out)
        viewer.execute("BEGIN")
        viewer.execute("SELECT count(*) FROM events").fetchone()  # holds a read lock
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert json.loads(stdout)["gaps"] == 0
        viewer.execute("COMMIT")
        viewer.close()
        closed = store.open_session(out)
        assert closed.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.read_indexes_ready(closed)
    finally:
        if proc.poll() is None:
            proc.kill()
