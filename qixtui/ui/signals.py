"""SIGTERM while a screen is up: quit as `q` does, so the command then stops what it started
(the recorder, the demo's processes) and the terminal is restored."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from textual.app import App


class QuitOnTerminate(App[None]):
    """An App that quits with exit code 143 on SIGTERM, and gives the signal back to the
    command's own handler (cli.terminate_exits) when it ends: a stepper ends inside the
    command's event loop, which would otherwise keep a handler for an app that is gone."""

    _command_handler: Any = None

    def on_load(self) -> None:
        self._command_handler = signal.getsignal(signal.SIGTERM)
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGTERM, self.exit, None, 128 + signal.SIGTERM
        )

    def on_unmount(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        if self._command_handler is not None:
            signal.signal(signal.SIGTERM, self._command_handler)
