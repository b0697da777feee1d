"""TLS with a private CA and client certificates, as natscli users configure it."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_qixtui

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
