"""UI fixtures: a fixed time zone (so clocks on screen are stable) and recorded sessions."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qixtui.core import store
from ui.sessions import shop_session


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return shop_session(tmp_path / "shop.qix")


@pytest.fixture
def live_shop(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """The shop recording while still being written, and a connection to write more to it."""
    path = shop_session(tmp_path / "live.qix", stopped=False)
    writer = store.open_session(path, readonly=False)
    yield path, writer
    writer.close()
