"""The app for a session whose processes a supervisor keeps alive (`qixtui demo`): each
incident (a child that died, and whether it came back) is a notification and stays readable in a
line at the top of the screen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual.message import Message
from textual.widgets import Static

from qixtui.core.text import counted
from qixtui.ui import text as t
from qixtui.ui.app import QixtuiApp

# The supervisor's callback: (incident number, what happened, state), called from any thread;
# the state is ongoing, recovered (restarted) or lost (not restarted).
Report = Callable[[int, str, str], None]
MARKS = {"ongoing": "⚠ ", "recovered": "✔ ", "lost": "✘ "}


class IncidentLine(Static):
    """The newest incident and how many there were; hidden until the first one."""

    DEFAULT_CSS = """
    IncidentLine { height: 1; padding: 0 1; display: none; background: $warning-muted;
                   color: $text; text-wrap: nowrap; text-overflow: ellipsis; }
    IncidentLine.-shown { display: block; }
    IncidentLine.-ongoing { background: $error; text-style: bold; }
    """


class SupervisedApp(QixtuiApp):
    """QixtuiApp plus the incidents of the processes behind the session."""

    class Incident(Message):
        """One incident, new or updated (posted from the supervisor's thread)."""

        def __init__(self, number: int, text: str, state: str) -> None:
            super().__init__()
            self.number = number
            self.text = text
            self.state = state

    def __init__(
        self,
        path: Path,
        *,
        supervise: Callable[[Report], None],
        recorder_pid: int | None = None,
        processes: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(path, recorder_pid=recorder_pid)
        self.supervise = supervise
        self.processes = processes  # the processes behind the session and their pids
        self.incidents: dict[int, tuple[str, str]] = {}

    def main_ready(self) -> None:
        super().main_ready()
        # at the top with the NOT RECORDING banner, where toasts (bottom right) never cover it
        self.main.mount(IncidentLine(id="incidents"), after="#banner")
        # only now: messages from the supervisor need a running app to land in
        self.supervise(self.report)
        self.action_show_processes()

    def extra_commands(self) -> list[tuple[str, Callable[[], object], str]]:
        if self.processes is None:
            return []
        return [("demo: processes", self.action_show_processes, "The demo's processes and pids")]

    def action_show_processes(self) -> None:
        if self.processes is not None:
            self.notify(t.plain(self.processes()), markup=False, title="demo", timeout=12)

    def report(self, number: int, text: str, state: str) -> None:
        self.post_message(self.Incident(number, text, state))

    def on_supervised_app_incident(self, message: Incident) -> None:
        self.incidents[message.number] = (message.text, message.state)
        self.notify(
            t.plain(message.text),
            markup=False,
            title=f"demo incident {message.number}",
            severity="information" if message.state == "recovered" else "error",
            timeout=8,
        )
        if self.closing:
            return
        line = self.main.query_one("#incidents", IncidentLine)
        ongoing = [n for n, (_, state) in self.incidents.items() if state == "ongoing"]
        newest = max(self.incidents)
        shown = ongoing[-1] if ongoing else newest
        text = Text(no_wrap=True)
        text.append(MARKS[self.incidents[shown][1]])
        # the count first: a long incident is cut at the edge, with …
        text.append(f"{counted(len(self.incidents), 'incident')} · ", "dim")
        text.append_text(t.literal(self.incidents[shown][0]))
        line.update(text)
        line.add_class("-shown")
        line.set_class(bool(ongoing), "-ongoing")
