"""Publishing the shown events onto a bus: the dry run first, then a confirmed, watched replay.

The rules and the dry run are the CLI's (qixtui.core.replay, qixtui_nats.replayer): what the
summary lists is what the run sends. The bus work runs in a thread with its own event loop,
so a replay at full speed never stalls the screen; the screen reads its progress on a timer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Checkbox, DataTable, Input, ProgressBar, Static

from qixtui.core import store
from qixtui.core.replay import (
    DryRun,
    Plan,
    ReplayError,
    Selection,
    check_prefix,
    confirmation_name,
    default_prefix,
    looks_like_source,
    parse_filter,
    parse_speed,
)
from qixtui.core.text import counted
from qixtui.ui import text as t
from qixtui.ui.data import clock, human_bytes
from qixtui.ui.widgets import footer

if TYPE_CHECKING:
    from qixtui_nats.replayer import Progress, Replayer, Target

DEFAULT_URL = "nats://127.0.0.1:4222"
PROGRESS_S = 0.2
LATENESS_WINDOW = 1000


def selection_filter(typed: str, flow_id: int | None) -> str:
    """The main screen's selection as one filter: what it typed, narrowed to the open flow."""
    parts = [typed.strip()] if typed.strip() else []
    if flow_id is not None:
        parts.append(f"flow:{flow_id}")
    return " ".join(parts)


class PublishError(Exception):
    """A check before publishing failed; the message is one line for the screen."""


@dataclasses.dataclass
class Reviewed:
    """A dry run's outcome: the plan it priced, the target it asked, what would be sent."""

    plan: Plan
    url: str
    target: Target
    report: DryRun
    skipped: dict[str, int]
    same_server: bool


class PublishScreen(Screen[None]):
    """| Key | Action |
    |-----|--------|
    | ctrl+r | dry run: what would be sent, nothing is |
    | ctrl+y | publish, after a dry run |
    | escape | stop publishing; back to the recording |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "dry_run", "Dry run", id="publish.dry_run"),
        Binding("ctrl+y", "publish", "Publish", id="publish.publish"),
        Binding("escape", "back", "Stop/back", id="publish.back"),
    ]
    DEFAULT_CSS = """
    PublishScreen { padding: 0 1; }
    PublishScreen #publish-title { height: 1; text-style: bold; background: $primary-background; }
    PublishScreen #publish-selection { height: 1; color: $text-muted; }
    PublishScreen .form-row { height: 3; }
    PublishScreen .form-label { width: 10; height: 3; padding: 1 0; }
    PublishScreen #url { width: 1fr; }
    PublishScreen #prefix { width: 1fr; }
    PublishScreen #speed { width: 12; }
    PublishScreen #original { width: auto; }
    PublishScreen #buttons { height: 3; }
    PublishScreen #buttons Button { margin-right: 1; }
    PublishScreen #confirm { display: none; }
    PublishScreen #confirm.-shown { display: block; }
    PublishScreen #summary { height: auto; padding: 1 0 0 0; }
    PublishScreen #subjects { height: 1fr; }
    PublishScreen #notes { height: auto; max-height: 8; color: $warning; }
    PublishScreen #progress-box { height: auto; display: none; }
    PublishScreen #progress-box.-shown { display: block; }
    PublishScreen #progress-line { height: 1; }
    """

    def __init__(
        self,
        path: Path,
        filter_text: str,
        meta: dict[str, str],
        form: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.filter_text = filter_text
        self.meta = meta
        # the target and speed typed last time (the app keeps them while it runs); the
        # prefix is new each time, so that each publish run has subjects of its own
        self.form = form if form is not None else {}
        self.session = secrets.token_hex(4)
        self.reviewed: Reviewed | None = None
        self.replayer: Replayer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = 0.0
        self.total = 0
        self.ended: float | None = None
        self.busy = False  # a dry run or a replay is running in the worker
        self.outcome: Progress | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("recording: publish selection"), id="publish-title")
        selection = self.filter_text or "every event"
        yield Static(
            t.literal(f"selection: {selection}  ·  {self.path.name}"), id="publish-selection"
        )
        with Horizontal(classes="form-row"):
            yield Static(Text("target"), classes="form-label")
            yield Input(self.form.get("url", DEFAULT_URL), placeholder="nats://host:4222", id="url")
            yield Static(Text("speed"), classes="form-label")
            yield Input(self.form.get("speed", "1"), placeholder="1, 10, max", id="speed")
        with Horizontal(classes="form-row"):
            yield Static(Text("prefix"), classes="form-label")
            yield Input(default_prefix(self.session), id="prefix")
            yield Checkbox("original subjects", id="original")
        yield Input(id="confirm")
        with Horizontal(id="buttons"):
            yield Button("Dry run (ctrl+r)", id="dry-run", variant="primary")
            yield Button("Publish (ctrl+y)", id="publish", variant="error", disabled=True)
            yield Button("Stop (esc)", id="stop", disabled=True)
        yield Static(Text("dry run first: nothing is sent until you publish"), id="summary")
        yield DataTable(id="subjects", cursor_type="row", zebra_stripes=True)
        yield Static(Text(""), id="notes")
        with Vertical(id="progress-box"):
            yield Static(Text(""), id="progress-line")
            yield ProgressBar(id="progress", show_eta=False)
        yield footer()

    def on_mount(self) -> None:
        table = self.query_one("#subjects", DataTable)
        table.add_columns("messages", "bytes", "first", "last", "subject", "published as")
        self.query_one("#url", Input).focus()
        self.set_interval(PROGRESS_S, self.show_progress, name="publish progress")

    # -- the form ------------------------------------------------------------------------

    def plan(self) -> Plan:
        """The plan the form describes; raises ReplayError with a line for the user."""
        original = self.query_one("#original", Checkbox).value
        prefix_text = self.query_one("#prefix", Input).value.strip()
        if not original and not prefix_text:
            raise ReplayError("a prefix, or tick original subjects")
        if self.filter_text:
            parse_filter(self.filter_text)
        return Plan(
            session=self.session,
            prefix=None if original else check_prefix(prefix_text),
            selection=Selection(filter=self.filter_text or None),
            speed=parse_speed(self.query_one("#speed", Input).value),
        )

    @on(Input.Changed, "#url, #speed, #prefix")
    @on(Checkbox.Changed, "#original")
    def form_changed(self) -> None:
        """A dry run prices one plan on one target: any change asks for a new one."""
        self.form["url"] = self.query_one("#url", Input).value
        self.form["speed"] = self.query_one("#speed", Input).value
        self.query_one("#prefix", Input).disabled = self.query_one("#original", Checkbox).value
        if self.reviewed is not None and not self.busy:
            self.reviewed = None
            self.query_one("#confirm", Input).remove_class("-shown")
            self.query_one("#summary", Static).update(
                Text("the form changed: run the dry run again before publishing")
            )
            self.refresh_buttons()

    @on(Input.Changed, "#confirm")
    def confirm_changed(self) -> None:
        self.refresh_buttons()

    @on(Input.Submitted, "#url, #speed, #prefix")
    def form_submitted(self) -> None:
        self.action_dry_run()

    @on(Input.Submitted, "#confirm")
    def confirm_submitted(self) -> None:
        self.action_publish()

    def confirmation_needed(self) -> bool:
        reviewed = self.reviewed
        return bool(reviewed and reviewed.plan.prefix is None and reviewed.same_server)

    def confirmed(self) -> bool:
        if not self.confirmation_needed():
            return True
        return self.query_one("#confirm", Input).value == self.confirmation_name()

    def confirmation_name(self) -> str:
        target = self.reviewed.target if self.reviewed else None
        return confirmation_name(target.server_id, target.server_name) if target else "?"

    def can_publish(self) -> bool:
        reviewed = self.reviewed
        return bool(
            reviewed
            and not self.busy
            and reviewed.report.messages
            and not reviewed.report.oversize
            and reviewed.target.headers
            and self.confirmed()
        )

    def refresh_buttons(self) -> None:
        self.query_one("#dry-run", Button).disabled = self.busy
        self.query_one("#publish", Button).disabled = not self.can_publish()
        self.query_one("#stop", Button).disabled = self.replayer is None or not self.busy

    @on(Button.Pressed, "#dry-run")
    def action_dry_run(self) -> None:
        if self.busy:
            return
        try:
            plan = self.plan()
        except ReplayError as exc:
            self.notify(t.plain(exc), markup=False, severity="error", title="publish")
            return
        self.busy = True
        self.reviewed = None
        self.outcome = None
        self.query_one("#summary", Static).update(Text("dry run: asking the target…"))
        self.refresh_buttons()
        self.dry_run_worker(self.query_one("#url", Input).value.strip(), plan)

    @on(Button.Pressed, "#publish")
    def action_publish(self) -> None:
        reviewed = self.reviewed
        if reviewed is None or not self.can_publish():
            if reviewed is None:
                self.notify("run the dry run first (ctrl+r)", severity="warning", title="publish")
            elif not self.confirmed():
                name = self.confirmation_name()
                self.notify(
                    t.plain(f"type the server's name ({name}) to publish on original subjects"),
                    markup=False,
                    severity="warning",
                    title="publish",
                )
            return
        self.busy = True
        self.outcome = None
        self.started, self.ended = time.monotonic(), None
        self.total = reviewed.report.messages
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=reviewed.report.messages, progress=0)
        self.query_one("#progress-box").add_class("-shown")
        self.refresh_buttons()
        self.publish_worker(reviewed, self.query_one("#confirm", Input).value)

    @on(Button.Pressed, "#stop")
    def action_back(self) -> None:
        if self.busy and self.replayer is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.replayer.stop, "stopped from the TUI")
        elif not self.busy:
            self.dismiss()

    # -- the bus work, in a thread with its own loop --------------------------------------

    @work(thread=True, exclusive=True, group="publish", name="publish dry run")
    def dry_run_worker(self, url: str, plan: Plan) -> None:
        try:
            reviewed = asyncio.run(self._dry_run(url, plan))
        except PublishError as exc:
            self.app.call_from_thread(self.failed, str(exc))
            return
        self.app.call_from_thread(self.show_dry_run, reviewed)

    async def _dry_run(self, url: str, plan: Plan) -> Reviewed:
        from qixtui_nats.replayer import dry_run

        db = self._open_events()
        try:
            plan = dataclasses.replace(plan, last_id=store.next_event_id(db) - 1)
            nc, target = await self._connect(url)
            try:
                report, replay = dry_run(db, plan, 0, 0, target.max_payload)
            finally:
                await nc.close()
        finally:
            db.close()
        same = looks_like_source(self.meta, *target.marks())
        return Reviewed(plan, url, target, report, dict(replay.skipped), same)

    @work(thread=True, exclusive=True, group="publish", name="publish selection")
    def publish_worker(self, reviewed: Reviewed, typed_name: str) -> None:
        try:
            progress = asyncio.run(self._publish(reviewed, typed_name))
        except PublishError as exc:
            self.app.call_from_thread(self.failed, str(exc))
            return
        self.app.call_from_thread(self.finished, progress)

    async def _publish(self, reviewed: Reviewed, typed_name: str) -> Progress:
        """The CLI's checks again on this connection, then the audited run."""
        from qixtui_nats.replayer import dry_run, may_exceed, open_audit, run_audited

        plan = reviewed.plan
        db = self._open_events()
        try:
            nc, target = await self._connect(reviewed.url)
            try:
                if not target.headers:
                    raise PublishError(f"{target.url} does not support headers")
                if may_exceed(db, plan, 0, target.max_payload):
                    report, _ = dry_run(db, plan, 0, 0, target.max_payload)
                    if report.oversize:
                        raise PublishError(
                            f"{counted(len(report.oversize), 'message')} larger than the target's "
                            f"max_payload ({target.max_payload:,} bytes); nothing sent"
                        )
                if target.server_id != reviewed.target.server_id:
                    # another server behind the same URL: what was reviewed and typed was for
                    # the one the dry run reached
                    raise PublishError(
                        "another server answered than at the dry run; run the dry run again"
                    )
                same = looks_like_source(self.meta, *target.marks())
                name = confirmation_name(target.server_id, target.server_name)
                if plan.prefix is None and same and typed_name != name:
                    raise PublishError("confirmation does not match the server's name")
                try:
                    audit = open_audit(self.path)
                except (store.SessionError, OSError) as exc:
                    raise PublishError(f"cannot write the replay audit: {exc}") from None
                try:
                    _, progress, _ = await run_audited(
                        nc, target, db, audit, plan, started=self._started
                    )
                finally:
                    audit.close()
            finally:
                await asyncio.wait_for(nc.close(), 2)
        finally:
            db.close()
        return progress

    def _open_events(self) -> Any:
        try:
            return store.open_session(self.path, readonly=True)
        except store.SessionError as exc:
            raise PublishError(str(exc)) from None

    async def _connect(self, url: str) -> tuple[Any, Target]:
        from qixtui_nats.connect import ConnectError, ConnectOptions
        from qixtui_nats.replayer import connect

        try:
            return await connect(ConnectOptions(servers=[url]).resolved())
        except ConnectError as exc:
            raise PublishError(str(exc)) from None

    def _started(self, replayer: Replayer) -> None:
        self.loop = asyncio.get_running_loop()
        self.replayer = replayer
        self.app.call_from_thread(self.refresh_buttons)

    # -- what the screen shows ----------------------------------------------------------

    def failed(self, message: str) -> None:
        self.busy = False
        self.replayer = None
        self.query_one("#summary", Static).update(t.literal(f"✘ {message}", "bold red"))
        self.refresh_buttons()

    def show_dry_run(self, reviewed: Reviewed) -> None:
        self.busy = False
        self.reviewed = reviewed
        report, target = reviewed.report, reviewed.target
        where = (
            f"under {reviewed.plan.prefix}" if reviewed.plan.prefix else "on the original subjects"
        )
        head = Text()
        head.append("dry run: nothing sent. ", "bold")
        head.append_text(
            t.literal(
                f"Would publish {counted(report.messages, 'message')} "
                f"({human_bytes(report.bytes)}) "
                f"{where} to {reviewed.url} {target.server_name} "
                f"(max_payload {target.max_payload:,} bytes)"
                + (f", {report.requests:,} of them requests" if report.requests else "")
            )
        )
        table = self.query_one("#subjects", DataTable)
        table.clear()
        for subject, totals in report.subjects.items():
            table.add_row(
                Text(f"{totals.count:,}", justify="right"),
                Text(human_bytes(totals.bytes), justify="right"),
                Text(clock(totals.first_ns)),
                Text(clock(totals.last_ns)),
                t.literal(subject),
                t.literal(totals.target),
            )
        notes = Text()
        for reason, n in reviewed.skipped.items():
            notes.append_text(t.literal(f"never published: {n:,} ({reason})"))
            notes.append("\n")
        if report.oversize:
            notes.append(
                f"{counted(len(report.oversize), 'message')} larger than the target's max_payload "
                "(headers included): publishing is refused\n",
                "bold red",
            )
            for seq, event_id, subject, size in report.oversize[:5]:
                notes.append_text(t.literal(f"  seq {seq} event {event_id} {subject} {size:,}B"))
                notes.append("\n")
        if not report.messages:
            notes.append("nothing in the selection can be published\n", "bold")
        if not target.headers:
            notes.append("the target does not support headers: publishing is refused\n", "bold red")
        confirm = self.query_one("#confirm", Input)
        if self.confirmation_needed():
            name = self.confirmation_name()
            head.append("\nThe target looks like the server this was recorded from.")
            confirm.placeholder = t.plain(
                f"type the server's name ({name}) to publish on the original subjects"
            )
            confirm.add_class("-shown")
        else:
            confirm.remove_class("-shown")
        self.query_one("#summary", Static).update(head)
        notes.rstrip()
        self.query_one("#notes", Static).update(notes)
        self.refresh_buttons()

    def show_progress(self) -> None:
        replayer = self.replayer
        if replayer is None:
            return
        progress = replayer.progress
        elapsed = max((self.ended or time.monotonic()) - self.started, 1e-9)
        self.query_one("#progress", ProgressBar).update(progress=progress.sent)
        line = Text()
        line.append(f"sent {progress.sent:,} / {self.total:,}", "bold")
        line.append(f"  ·  {progress.sent / elapsed:,.0f} msg/s  ·  {elapsed:.1f}s")
        late = sorted(progress.lateness_ns[-LATENESS_WINDOW:])
        if late:
            line.append(
                f"  ·  timing error median {late[len(late) // 2] / 1e6:.2f} ms, "
                f"p99 {late[int(len(late) * 0.99)] / 1e6:.2f} ms"
            )
        if self.outcome is not None:
            status = self.outcome.status
            line.append(f"  ·  {status}", "bold green" if status == "done" else "bold red")
            if self.outcome.error:
                line.append_text(t.literal(f" ({self.outcome.error})"))
        self.query_one("#progress-line", Static).update(line)

    def finished(self, progress: Progress) -> None:
        self.outcome = progress
        self.ended = time.monotonic()
        self.show_progress()
        self.busy = False
        # Publishing the same plan again would send every message a second time.
        url = self.reviewed.url if self.reviewed else ""
        self.reviewed = None
        answers = f" ({progress.answers()})" if progress.requests else ""
        self.query_one("#summary", Static).update(
            Text(
                f"replay {progress.status}: sent {counted(progress.sent, 'message')}{answers}; "
                "run a new dry run to publish again"
            )
        )
        self.refresh_buttons()
        if progress.status == "done":
            self.notify(
                f"published {counted(progress.sent, 'message')}", title="publish", markup=False
            )
        else:
            from qixtui_nats.connect import ConnectOptions

            self.notify(
                t.plain(
                    f"stopped after seq {progress.last_seq} ({progress.error}); "
                    f"`qixtui replay {shlex.quote(str(self.path))} --publish --resume --yes "
                    f"{ConnectOptions(servers=[url]).flags()}` continues"
                ),
                markup=False,
                severity="warning",
                title="publish",
            )
