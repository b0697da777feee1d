"""Connecting as a NATS user does, and failing with one clear line when it cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_qixtui

from qixtui_nats.server import EmbeddedServer


@pytest.fixture(scope="module")
def auth_server() -> Iterator[EmbeddedServer]:
    conf = 'authorization { users = [ { user: "bob", password: "s3cret" } ] }\n'
    with EmbeddedServer(jetstream=False, config=conf) as server:
        yield server


def assert_one_line_failure(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_unreachable_server_is_one_line_and_leaves_no_file(tmp_path: Path):
    out = tmp_path / "x.qix"
    started = time.monotonic()
    result = run_qixtui("record", "-s", "nats://127.0.0.1:1", "-o", str(out))
    assert_one_line_failure(result, "cannot connect to nats://127.0.0.1:1")
    assert time.monotonic() - started < 15
    assert not out.exists()


def test_wrong_password_is_an_authorization_error(auth_server: EmbeddedServer, tmp_path: Path):
    out = tmp_path / "x.qix"
    url = f"nats://127.0.0.1:{auth_server.port}"
    result = run_qixtui(
        "record",
        "-s",
        url,
        "--user",
        "bob",
        "-o",
        str(out),
        env={**os.environ, "NATS_PASSWORD": "wrong"},
    )
    assert_one_line_failure(result, "authorization failed")
    assert "wrong" not in result.stderr
    assert not out.exists()


def test_user_and_password_from_the_environment(auth_server: EmbeddedServer, tmp_path: Path):
    out = tmp_path / "ok.qix"
    url = f"nats://127.0.0.1:{auth_server.port}"
    result = run_qixtui(
        "record",
        "-s",
        url,
        "--user",
        "bob",
        "-o",
        str(out),
        "--duration",
        "0.3",
        "--json",
        env={**os.environ, "NATS_PASSWORD": "s3cret"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events"] == 0
    info = json.loads(run_qixtui("info", str(out), "--json").stdout)
    assert "s3cret" not in json.dumps(info)
    assert info["meta"]["server"] == url


def test_credentials_in_the_url_never_reach_the_file(auth_server: EmbeddedServer, tmp_path):
    out = tmp_path / "url.qix"
    result = run_qixtui(
        "record",
        "-s",
        f"nats://bob:s3cret@127.0.0.1:{auth_server.port}",
        "-o",
        str(out),
        "--duration",
        "0.3",
    )
    assert result.returncode == 0, result.stderr
    assert b"s3cret" not in out.read_bytes()


def test_context_file_supplies_url_and_user(auth_server: EmbeddedServer, tmp_path: Path):
    ctx_dir = tmp_path / "config" / "nats" / "context"
    ctx_dir.mkdir(parents=True)
    (ctx_dir / "dev.json").write_text(
        json.dumps(
            {"url": f"nats://127.0.0.1:{auth_server.port}", "user": "bob", "password": "s3cret"}
        )
    )
    out = tmp_path / "ctx.qix"
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    result = run_qixtui("record", "--context", "dev", "-o", str(out), "--duration", "0.3", env=env)
    assert result.returncode == 0, result.stderr
    missing = run_qixtui("record", "--context", "nope", "-o", str(tmp_path / "n.qix"), env=env)
    assert_one_line_failure(missing, "nats context 'nope' not found")


def test_missing_nkeys_package_is_named(tmp_path: Path):
    seed = tmp_path / "user.nk"
    seed.write_text("SUAEXAMPLE\n")
    code = (
        "import sys; sys.modules['nkeys'] = None\n"
        "from qixtui.cli import main\n"
        f"main(['record', '--nkey', {str(seed)!r}, '-s', 'nats://127.0.0.1:1', "
        f"'-o', {str(tmp_path / 'k.qix')!r}])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert_one_line_failure(result, "pip install 'qixtui[nkeys]'")


def test_existing_output_is_refused_before_connecting(tmp_path: Path):
    out = tmp_path / "keep.qix"
    out.write_bytes(b"precious")
    result = run_qixtui("record", "-s", "nats://127.0.0.1:1", "-o", str(out))
    assert_one_line_failure(result, "already exists")
    assert out.read_bytes() == b"precious"


def test_an_output_folder_that_is_not_there_is_one_line_and_not_made(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = run_qixtui("record", "-s", "nats://127.0.0.1:1", "-o", str(blocker / "s.qix"))
    assert_one_line_failure(result, f"no folder {blocker}")
    typo = tmp_path / "sesions" / "s.qix"
    result = run_qixtui("record", "-s", "nats://127.0.0.1:1", "-o", str(typo))
    assert_one_line_failure(result, f"{typo}: no folder {typo.parent}")
    assert not typo.parent.exists()


def test_flags_for_a_hint_reach_the_same_bus_without_secrets():
    from qixtui_nats.connect import ConnectOptions

    opts = ConnectOptions(
        servers=["nats://alice:s3cret@[::1]:4222", "tls://10.0.0.2:4443"],
        user="bob",
        password="hunter2",
        token="tok",
        creds="/home/bob/my creds.creds",
    )
    flags = opts.flags()
    assert flags == (
        "-s 'nats://[::1]:4222,tls://10.0.0.2:4443' --creds '/home/bob/my creds.creds' --user bob"
    )
    assert not any(secret in flags for secret in ("s3cret", "hunter2", "tok"))


def test_a_sessions_folder_that_cannot_be_made_is_one_line(tmp_path: Path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the user data folder should be")
    env = {**os.environ, "XDG_DATA_HOME": str(blocker)}
    result = run_qixtui("demo", "--headless", "--duration", "1", env=env)
    assert_one_line_failure(result, f"{blocker}/qixtui/sessions: cannot create the sessions")
