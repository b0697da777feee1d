"""The base of qixtui's screens: `?` shows the keys that work where the focus is. SIGTERM
while a screen is up: quit as `q` does, so the command then stops what it started (the
recorder, the demo's processes) and the terminal is restored. A session file that turns out
damaged where a read reaches: quit the same way and raise the error where the command ran the
screen, which says it in one line."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from typing import Any

from textual.app import App
from textual.worker import WorkerFailed

from qixtui.core import store


class QuitOnTerminate(App[None]):
    """An App that quits with exit code 143 on SIGTERM, and gives the signal back to the
    command's own handler (cli.terminate_exits) when it ends: a stepper ends inside the
    command's event loop, which would otherwise keep a handler for an app that is gone."""

    _command_handler: Any = None
    read_error: sqlite3.DatabaseError | None = None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        result = super().run(*args, **kwargs)
        if self.read_error is not None:
            raise self.read_error
        return result

    async def run_async(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().run_async(*args, **kwargs)
        if self.read_error is not None:
            raise self.read_error
        return result

    def _handle_exception(self, error: Exception) -> None:
        # Textual's own handler prints a traceback when the app exits (Textual is pinned).
        cause = error.error if isinstance(error, WorkerFailed) else error  # a filter scan's
        if isinstance(cause, sqlite3.DatabaseError) and store.session_file_problem(cause):
            if self.read_error is None:  # the first says it; a second read failing is moot
                self.read_error = cause
                self.exit(return_code=1)
            return
        super()._handle_exception(error)

    def on_load(self) -> None:
        self._command_handler = signal.getsignal(signal.SIGTERM)
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGTERM, self.exit, None, 128 + signal.SIGTERM
        )

    def on_unmount(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        if self._command_handler is not None:
            signal.signal(signal.SIGTERM, self._command_handler)

    def action_help(self) -> None:
        """`?` on every qixtui screen: the keys that work where the focus is, and back."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()
