"""Helpers the tests share: run the qixtui command as a user does."""

from __future__ import annotations

import os
import subprocess
import sys


def qixtui_command(*args: str) -> list[str]:
    """The installed qixtui entry point, run the way a user runs it."""
    return [sys.executable, "-m", "qixtui", *args]


def run_qixtui(
    *args: str, timeout: float = 60, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        qixtui_command(*args), capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )
