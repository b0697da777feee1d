"""TLS with a private CA and client certificates, as natscli users configure it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_qixtui

from qixtui.core import store
from qixtui_demo import SHOP_SAGA
from qixtui_nats.server import EmbeddedServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=qixtui test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            f"{name}.pem",
            cwd=d,
        )
    return d


@pytest.fixture(scope="module")
def tls_server(pki: Path) -> Iterator[EmbeddedServer]:
    conf = (
        f'tls {{ cert_file: "{pki}/server.pem", key_file: "{pki}/server.key", '
        f'ca_file: "{pki}/ca.pem", verify: true }}\n'
    )
    with EmbeddedServer(jetstream=False, config=conf) as server:
        yield server


def test_records_over_mutual_tls(tls_server: EmbeddedServer, pki: Path, tmp_path: Path):
    out = tmp_path / "tls.qix"
    result = run_qixtui(
        "record",
        "-s",
        f"tls://127.0.0.1:{tls_server.port}",
        "-o",
        str(out),
        "--tlsca",
        str(pki / "ca.pem"),
        "--tlscert",
        str(pki / "client.pem"),
        "--tlskey",
        str(pki / "client.key"),
        "--duration",
        "0.3",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gaps"] == 0


def test_untrusted_server_certificate_is_one_line(tls_server: EmbeddedServer, tmp_path: Path):
    result = run_qixtui(
        "record",
        "-s",
        f"tls://127.0.0.1:{tls_server.port}",
        "-o",
        str(tmp_path / "x.qix"),
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TLS failed" in lines[0]
    assert "certificate verify failed" in lines[0]
    assert not (tmp_path / "x.qix").exists()


class PlainInfoServer:
    """A server that says it is NATS without TLS and keeps whatever a client sends it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.listener.settimeout(10)
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    info = {"server_id": "plain", "version": "2.10.0", "max_payload": 1048576}
                    conn.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        while chunk := conn.recv(4096):
                            self.received += chunk

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("how", ["tls-url", "tlsca"])
def test_tls_asked_for_and_not_offered_sends_nothing(pki: Path, tmp_path: Path, how: str):
    """nats-py would send CONNECT, the password in it, in the clear: refused before that."""
    server = PlainInfoServer()
    scheme, extra = ("tls", []) if how == "tls-url" else ("nats", ["--tlsca", str(pki / "ca.pem")])
    try:
        result = run_qixtui(
            "record",
            "-s",
            f"{scheme}://127.0.0.1:{server.port}",
            "--user",
            "u",
            *extra,
            "-o",
            str(tmp_path / "x.qix"),
            env={**os.environ, "NATS_PASSWORD": "s3cret-word"},
        )
    finally:
        server.close()
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "TLS was asked for" in line
    assert f"127.0.0.1:{server.port} does not offer TLS; nothing was sent" in line
    assert b"CONNECT" not in server.received
    assert b"s3cret-word" not in server.received


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tlsca", "/nonexistent/ca.pem"], "--tlsca file not found"),
        (["--tlsca", "NOTPEM"], "not a PEM CA certificate"),
        (["--tlscert", "NOTPEM", "--tlskey", "NOTPEM"], "not a PEM certificate and its key"),
        (["-s", "nats://127.0.0.1:99999"], "not a server URL"),
        (["-s", "nats://[::1"], "not a server URL"),
        (["-s", "http://127.0.0.1:4222"], "the scheme is nats, tls, ws or wss"),
        (["-s", "nats://u:hunter2@127.0.0.1:99999"], "not a server URL: nats://127.0.0.1:99999"),
        (["-s", "ws://u:hunter2@127.0.0.1:1", "--tlsca", "NOTPEM"], "ws:// is never encrypted"),
        (["-s", "tls://127.0.0.1:1,ws://u:hunter2@127.0.0.1:2"], "ws:// is never encrypted"),
    ],
)
@pytest.mark.parametrize("verb", ["record", "replay", "orchestrate"])
def test_bad_tls_files_and_urls_are_one_line(tmp_path: Path, args: list[str], says: str, verb):
    notpem = tmp_path / "notpem.txt"
    notpem.write_text("not a certificate\n")
    session = tmp_path / "s.qix"
    store.create_session(session, {}).close()
    argv = {
        "record": ["record", "-o", str(tmp_path / "x.qix")],
        "replay": ["replay", str(session), "--publish", "--yes"],
        "orchestrate": ["orchestrate", str(SHOP_SAGA), "--auto", "-o", str(tmp_path / "o.qix")],
    }[verb]
    args = [str(notpem) if a == "NOTPEM" else a for a in args]
    result = run_qixtui(*argv, *args)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert says in line
    assert "hunter2" not in line


def client_cert(pki: Path) -> list[str]:
    return ["--tlsca", str(pki / "ca.pem"), "--tlscert", str(pki / "client.pem"),
            "--tlskey", str(pki / "client.key")]  # fmt: skip


def test_tls_offered_but_not_required_is_taken(pki: Path, tmp_path: Path):
    """allow_non_tls: the server offers TLS; asked for TLS, the client takes it (nats-py
    alone would have gone on in plain text)."""
    conf = (
        f'tls {{ cert_file: "{pki}/server.pem", key_file: "{pki}/server.key" }}\n'
        "allow_non_tls: true\n"
    )
    with EmbeddedServer(jetstream=False, config=conf) as server:
        result = run_qixtui(
            "record", "-s", f"tls://127.0.0.1:{server.port}", "--tlsca", str(pki / "ca.pem"),
            "-o", str(tmp_path / "x.qix"), "--duration", "0.3", "--json",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gaps"] == 0


def test_a_server_without_tls_is_passed_over_for_the_next(
    tls_server: EmbeddedServer, pki: Path, tmp_path: Path
):
    """Refusing a plain server is one failed attempt: the client goes on to the next URL."""
    plain = PlainInfoServer()
    urls = f"tls://127.0.0.1:{plain.port},tls://127.0.0.1:{tls_server.port}"
    try:
        result = run_qixtui(
            "record", "-s", urls, *client_cert(pki), "-o", str(tmp_path / "x.qix"),
            "--duration", "0.3", "--json",
        )  # fmt: skip
    finally:
        plain.close()
    assert result.returncode == 0, result.stderr
    assert b"CONNECT" not in plain.received


def test_one_tls_url_asks_tls_of_every_server_in_the_list(tmp_path: Path):
    """As natscli: a tls:// URL in -s makes the plain nats:// one next to it TLS-only too."""
    plain = PlainInfoServer()
    try:
        result = run_qixtui(
            "record", "-s", f"tls://127.0.0.1:1,nats://127.0.0.1:{plain.port}", "--user", "u",
            "-o", str(tmp_path / "x.qix"), env={**os.environ, "NATS_PASSWORD": "s3cret-word"},
        )  # fmt: skip
    finally:
        plain.close()
    assert result.returncode == 1
    assert b"CONNECT" not in plain.received
    assert b"s3cret-word" not in plain.received
