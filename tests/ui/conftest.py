"""UI fixtures: a fixed time zone (so clocks on screen are stable) and recorded sessions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
