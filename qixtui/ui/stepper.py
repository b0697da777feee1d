"""The saga stepper: a run shown step by step, each request held for a look (and an edit)
before it is sent, with the run's bus traffic as the recorder writes it to the session file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import ClassVar

from rich.console import Group
from rich.text import Text
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, RichLog, Static, TextArea

from qixtui.core import store
from qixtui.core.saga import Held, Request, SagaDef, StepResult
from qixtui.core.text import counted, visible
from qixtui.ui import text as t
from qixtui.ui.data import EVENT_ROW, Session
from qixtui.ui.signals import QuitOnTerminate
from qixtui.ui.widgets import footer, format_event
from qixtui_nats.saga_runner import Choice, RunReport, SagaRunner, new_run_id

POLL_S = 0.1
EVENTS_PER_POLL = 500

RESULT_LOOK = {
    "ok": ("✔ ok", "green"),
    "error": ("✘ error", "bold red"),
    "timeout": ("✘ timeout", "bold red"),
    "no_responders": ("✘ no responders", "bold red"),
    "in_doubt": ("? in doubt", "magenta"),
    "skipped": ("↷ skipped", "yellow"),
    "aborted": ("■ aborted", "bold red"),
}


def payload_shown(payload: bytes) -> str:
    """A payload as the editor shows it: escaped, so an unedited payload is sent as it was."""
    return visible(payload.decode("utf-8", errors="replace"), multiline=True)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


class StepperScreen(Screen[None]):
    """One saga run: steps and their states, the next request, the last reply, the run's events.

    | Key | Action |
    | :- | :- |
    | n | Send the request shown (edited or not). |
    | c | Send it and go on until a breakpoint, a failed step or the end. |
    | b | Toggle a breakpoint on the highlighted step. |
    | r | Retry a failed step, with the payload in the editor. |
    | s | Skip the request shown (or the failed step). |
    | a | Abort: compensate what was done (or give up a failed step). |
    | i | Inject a failure on the next step instead of sending it. |
    | e / escape | Edit the payload / back to the steps. |
    | q, ctrl+c | Quit; an unfinished run stays resumable. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "step", "Step", id="stepper.step"),
        Binding("c", "continue", "Continue", id="stepper.continue"),
        Binding("b", "breakpoint", "Breakpoint", id="stepper.breakpoint"),
        Binding("r", "retry", "Retry", id="stepper.retry"),
        Binding("s", "skip", "Skip", id="stepper.skip"),
        Binding("a", "abort", "Abort", id="stepper.abort"),
        Binding("i", "inject", "Inject", id="stepper.inject"),
        # Priority, like the main screen's `/`: what is typed right after it is the edit.
        Binding("e", "edit", "Edit", id="stepper.edit", priority=True),
        Binding("escape", "leave_editor", "Steps", show=False, id="stepper.leave_editor"),
        Binding("q", "quit_run", "Quit", id="stepper.quit"),
        # As everywhere in qixtui (Textual's own asks for ctrl+q); the editor copies with it.
        Binding("ctrl+c", "quit_run", "Quit", show=False, id="stepper.interrupt"),
    ]
    DEFAULT_CSS = """
    StepperScreen #status { height: 2; padding: 0 1; background: $primary-background; }
    StepperScreen #top { height: 1fr; }
    StepperScreen #left { width: 60%; border-right: solid $primary; }
    StepperScreen #right { width: 1fr; }
    StepperScreen .title { height: 1; background: $primary-background; color: $text;
                           padding: 0 1; text-style: bold; text-wrap: nowrap;
                           text-overflow: ellipsis; }
    StepperScreen #steps { height: auto; max-height: 12; }
    StepperScreen #reply-box { height: 1fr; padding: 0 1; }
    StepperScreen #request-meta { height: auto; max-height: 60%; overflow-y: auto;
                                  padding: 0 1; }
    StepperScreen #payload { height: 1fr; min-height: 4; }
    StepperScreen #events-box { height: 30%; border-top: solid $primary; }
    StepperScreen #events { height: 1fr; }
    """

    def __init__(
        self,
        path: Path,
        runner: SagaRunner,
        saga: SagaDef,
        definition: str,
        overrides: dict[str, str],
        run_id: str,
        resume: bool = False,
    ) -> None:
        super().__init__()
        self.path = path
        self.runner = runner
        self.saga = saga
        self.definition = definition
        self.overrides = overrides
        self.run_id = run_id
        self.resume = resume  # go on with a journaled run, from where it was left
        self.breakpoints: set[str] = set()
        self.waiting: asyncio.Future[Choice] | None = None
        self.shown: Request | Held | None = None
        self.shown_text = ""  # what the editor held when the request was shown
        self.shown_headers: dict[str, str] = {}  # the headers the shown request will carry
        self.warned_payload: bytes | None = None  # an edit said to be no JSON, then sent
        self.continuing = False
        self.inject_armed = False
        self.send_at_once = False  # the request a retry builds goes out without a stop
        self.quit_requested = False
        self.last_request: Request | None = None
        self.inflight: tuple[Request, float] | None = None
        self.report: RunReport | None = None
        self.error = ""
        self.journal: list[store.JournalRow] = []
        self.session: Session | None = None
        self.correlation_id = ""
        self.flows: set[int] = set()
        self.last_event_id = 0
        self.events_seen = 0
        runner.gate = self.gate
        runner.on_step = self.on_step

    def compose(self) -> ComposeResult:
        yield Static(Text(""), id="status")
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield Static(Text(f"saga {visible(self.saga.name)}: steps"), classes="title")
                yield DataTable(id="steps", cursor_type="row", zebra_stripes=False)
                yield Static(Text("last reply"), classes="title")
                with VerticalScroll(id="reply-box"):
                    yield Static(Text("no reply yet", style="dim"), id="reply")
            with Vertical(id="right"):
                yield Static(Text("next request"), id="request-title", classes="title")
                yield Static(Text(""), id="request-meta")
                editor = TextArea("", id="payload", read_only=True, soft_wrap=True)
                editor.border_title = "payload: e edits, escape returns"
                editor.border_subtitle = "f7 selects all, ctrl+z undoes"  # Textual's keys
                yield editor
        with Vertical(id="events-box"):
            title = "bus events of this run (from the recording)"
            if not self.runner.recorded:
                title = "bus events: none, the run is not recorded (--no-record)"
            yield Static(Text(title), classes="title")
            yield RichLog(id="events", wrap=False, markup=False, highlight=False)
        yield footer()

    def on_mount(self) -> None:
        table = self.query_one("#steps", DataTable)
        for label, key in (
            ("", "bp"),
            ("#", "n"),
            ("step", "step"),
            ("state", "state"),  # before the request: what a narrow terminal must keep
            ("time", "time"),
        ):
            table.add_column(label, key=key)
        for n, step in enumerate(self.saga.steps, start=1):
            table.add_row(
                Text(" "),
                Text(str(n)),
                t.literal(step.name, "bold"),
                Text("pending", style="dim"),
                Text(""),
                key=step.name,
            )
        table.focus()
        try:
            self.session = Session(self.path)
        except store.SessionError as exc:
            self.error = str(exc)
        self.set_interval(POLL_S, self.poll)
        self.run_worker(self.drive(), name="saga-run", exclusive=True)
        self.show_status()

    def on_resize(self) -> None:
        # once the widgets have their new sizes
        self.call_after_refresh(self.fit_steps)
        self.call_after_refresh(self.show_request_meta)

    def fit_steps(self) -> None:
        """The request column where the steps table has room for it: cut off at 80 columns it
        showed `shop.c` and a scroll bar; the next request's subject is on the right anyway."""
        table = self.query_one("#steps", DataTable)
        shown = "subject" in table.columns
        others = sum(
            column.get_render_width(table)
            for key, column in table.columns.items()
            if key != "subject"
        )
        widest = max(len(step.request) for step in self.saga.steps) + 2 * table.cell_padding
        fits = others + widest <= table.scrollable_content_region.width  # past a scroll bar
        if fits and not shown:
            table.add_column("request", key="subject")
            for step in self.saga.steps:
                table.update_cell(step.name, "subject", t.literal(step.request), update_width=True)
        elif shown and not fits:
            table.remove_column("subject")

    # -- the run ----------------------------------------------------------------------------

    async def drive(self) -> None:
        try:
            if self.resume:
                self.report = await self.runner.resume(self.run_id)
            else:
                self.report = await self.runner.start(
                    self.saga, self.definition, self.overrides, run_id=self.run_id
                )
        except Exception as exc:  # a shell: one line on screen and to the CLI, no traceback
            self.error = visible(f"{type(exc).__name__}: {exc}")
        self.shown = None
        self.inflight = None
        if self.quit_requested or self.error:
            self.app.exit()
            return
        self.poll()
        self.show_request()
        self.refresh_bindings()  # the footer keeps only what still works: q

    RUN_ACTIONS = frozenset(
        ("step", "continue", "breakpoint", "retry", "skip", "abort", "inject", "edit")
    )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Once the run has ended, its keys leave the footer."""
        return not (self.report is not None and action in self.RUN_ACTIONS)

    async def gate(self, action: Request | Held, headers: dict[str, str]) -> Choice:
        """Asked by the runner before each request and after a failed step."""
        if self.quit_requested:
            return Choice("stop")
        if isinstance(action, Request):
            if self.send_at_once:
                self.send_at_once = False
                return Choice("send")
            if self.continuing and action.step not in self.breakpoints:
                return self.sending(shown=False)
        self.continuing = False
        self.shown = action
        self.show_request(headers)
        self.poll()  # the steps table and status agree with the request panel at once
        self.waiting = asyncio.get_running_loop().create_future()
        try:
            return await self.waiting
        finally:
            self.waiting = None
            self.shown = None
            self.show_request()
            self.poll()

    def on_step(self, stage: str, request: Request, result: StepResult | None) -> None:
        if stage == "intent":
            self.inflight = (request, time.monotonic())
            self.last_request = request
        else:
            self.inflight = None
        self.poll()

    def answer(self, choice: Choice) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(choice)

    def sending(self, shown: bool = True) -> Choice:
        """Send the request (with the editor's payload if it was shown), unless a failure is
        armed for it."""
        if self.inject_armed:
            self.inject_armed = False
            return Choice("inject")
        return Choice("send", self.edited() if shown else None)

    def edited(self) -> bytes | None:
        text = self.query_one("#payload", TextArea).text
        return None if text == self.shown_text else text.encode()

    # -- keys -------------------------------------------------------------------------------

    def payload_checked(self, key: str) -> bool:
        """An edit that leaves a JSON payload not JSON is sent only when asked for twice:
        else the first word of it is the service's 'bad_request'."""
        edited = self.edited()
        if edited is None or edited == self.warned_payload or not _is_json(self.shown_text):
            return True
        try:
            json.loads(edited)
        except (ValueError, RecursionError) as exc:
            self.warned_payload = edited
            self.say(f"the edited payload is not JSON ({exc}); {key} again sends it as it is")
            return False
        return True

    def action_step(self) -> None:
        if isinstance(self.shown, Request):
            if self.payload_checked("n"):
                self.answer(self.sending())
        elif isinstance(self.shown, Held):
            self.say("the step failed: r retries it, s skips it, a compensates")

    def action_continue(self) -> None:
        if isinstance(self.shown, Request):
            if not self.payload_checked("c"):
                return
            self.continuing = True
            self.answer(self.sending())
        elif isinstance(self.shown, Held):
            self.say("the step failed: r retries it, s skips it, a compensates")

    def action_breakpoint(self) -> None:
        table = self.query_one("#steps", DataTable)
        step = self.saga.steps[table.cursor_row].name
        self.breakpoints.symmetric_difference_update({step})
        self.show_steps()

    def action_retry(self) -> None:
        if isinstance(self.shown, Held):
            if not self.payload_checked("r"):
                return
            self.send_at_once = True
            self.answer(Choice("retry", self.edited()))
        else:
            self.say("nothing to retry: no step has failed")

    def action_skip(self) -> None:
        if self.shown is not None:
            self.answer(Choice("skip"))

    def action_abort(self) -> None:
        if isinstance(self.shown, Held):
            self.answer(Choice("compensate"))
        elif isinstance(self.shown, Request) and self.shown.kind == "compensate":
            self.say("already compensating: n sends the next compensation, s skips it")
        elif isinstance(self.shown, Request):
            self.answer(Choice("abort"))

    def action_inject(self) -> None:
        if self.report is not None:
            return
        self.inject_armed = not self.inject_armed
        self.show_steps()
        self.show_status()

    def action_edit(self) -> None:
        editor = self.query_one("#payload", TextArea)
        if self.focused is editor:
            raise SkipAction()  # an `e` in the payload
        if not editor.read_only:
            self.set_focus(editor)  # at once, not queued like focus()

    def action_leave_editor(self) -> None:
        self.query_one("#steps", DataTable).focus()

    def action_quit_run(self) -> None:
        if self.report is not None or self.error:
            self.app.exit()
            return
        self.quit_requested = True
        self.runner.stop_requested = True  # also a request waiting for the bus to come back
        self.answer(Choice("stop"))
        self.show_status()

    def say(self, message: str) -> None:
        self.notify(visible(message), markup=False, timeout=4)

    # -- what is on screen ------------------------------------------------------------------

    def poll(self) -> None:
        """Read the journal and the run's new events from the file; update the timers."""
        if self.session is not None:
            self.journal = store.saga_journal(self.session.db, self.run_id)
            self.read_events()
        self.show_steps()
        self.show_reply()
        self.show_status()

    def read_events(self) -> None:
        assert self.session is not None
        if not self.query_one("#events", RichLog).size.width:
            return  # not laid out yet: rows would be cut to a guessed width (a resumed run's)
        db = self.session.db
        if not self.correlation_id:
            run = store.saga_run(db, self.run_id)
            if run is None:
                return
            self.correlation_id = run.correlation_id
        upto = self.session.max_id()
        if upto <= self.last_event_id:
            return
        after = self.last_event_id
        # The run's requests carry its correlation id; replies join through their flow.
        self.flows.update(
            r[0]
            for r in db.execute(
                "SELECT DISTINCT flow_id FROM events WHERE id > ? AND id <= ? "
                "AND instr(headers, ?) > 0 AND flow_id IS NOT NULL",
                (after, upto, self.correlation_id),
            )
        )
        marks = ",".join("?" * len(self.flows))
        in_flow = f"OR flow_id IN ({marks})" if self.flows else ""
        rows = db.execute(
            f"SELECT {EVENT_ROW} FROM events WHERE id > ? AND id <= ? "
            f"AND (instr(headers, ?) > 0 {in_flow}) ORDER BY id LIMIT ?",
            (after, upto, self.correlation_id, *self.flows, EVENTS_PER_POLL),
        ).fetchall()
        log = self.query_one("#events", RichLog)
        width = max(40, log.size.width - 2)
        for row in rows:
            log.write(format_event(row, width))
        self.events_seen += len(rows)
        self.last_event_id = rows[-1][0] if len(rows) == EVENTS_PER_POLL else upto

    def step_state(self, name: str) -> tuple[Text, Text]:
        rows = [r for r in self.journal if r.step == name]
        shown = self.shown
        if isinstance(shown, Request) and shown.step == name:
            what = "undo next" if shown.kind == "compensate" else "next"
            state = Text(f"▶ {what}", style="bold cyan")
            if self.inject_armed:
                state.append(" ⚡", style="bold red")
            return state, Text("")
        if isinstance(shown, Held) and shown.step == name:
            return Text("✘ failed: r/s/a?", style="bold red"), Text("")
        if self.inflight is not None and self.inflight[0].step == name:
            request, started = self.inflight
            left = max(0.0, request.timeout_s - (time.monotonic() - started))
            what = "undoing" if request.kind == "compensate" else "in flight"
            return Text(f"… {what}", style="cyan"), Text(f"{left:.1f}s left", style="cyan")
        done = [r for r in rows if r.result is not None]
        if not done:
            return Text("pending", style="dim"), Text("")
        undo = [r for r in done if r.kind == "compensate"]
        row = undo[-1] if undo else done[-1]
        ms = ((row.result_ns or row.intent_ns) - row.intent_ns) / 1e6
        if row.kind == "compensate":
            look = ("↺ undone", "yellow") if row.result == "ok" else ("✘ undo failed", "bold red")
            if row.result == "skipped":
                look = ("↷ undo skipped", "yellow")
        elif row.seq in self.skipped_rows():
            look = (f"↷ skipped after {row.result}", "yellow")
        else:
            look = RESULT_LOOK.get(row.result or "", ("?", "dim"))
        label = look[0]
        # what went out (an injected failure stands for one): not a resend's doubt, nor a
        # skip or abort decided instead of sending
        not_sent = ("in_doubt", "skipped", "aborted")
        attempts = sum(1 for r in rows if r.kind == row.kind and r.result not in not_sent)
        if attempts > 1:
            label += f" (x{attempts})"
        return Text(label, style=look[1]), Text(f"{ms:.0f}ms", style="dim")

    def skipped_rows(self) -> set[int]:
        """Failed steps the user skipped: from the journal, and for the last one, from the
        request shown next (the skip is journaled only as that request goes out)."""
        ended = self.report.outcome if self.report is not None else ""
        skipped = store.skipped_after_failure(self.journal, ended)
        shown = self.shown
        if self.journal and isinstance(shown, Request):
            last = self.journal[-1]
            if store.skipped_for(last, shown.step, shown.kind):
                skipped.add(last.seq)
        return skipped

    def show_steps(self) -> None:
        table = self.query_one("#steps", DataTable)
        for step in self.saga.steps:
            state, took = self.step_state(step.name)
            mark = Text("●", style="bold red") if step.name in self.breakpoints else Text(" ")
            table.update_cell(step.name, "bp", mark)
            table.update_cell(step.name, "state", state, update_width=True)
            table.update_cell(step.name, "time", took, update_width=True)
        self.fit_steps()  # a longer state can leave no room for the request column

    def show_reply(self) -> None:
        done = [r for r in self.journal if r.result is not None]
        if not done:
            return
        row = done[-1]
        what = "undo " if row.kind == "compensate" else ""
        out = t.literal(f"{what}{row.step} → {row.result}", "bold")
        if row.detail:
            out.append_text(t.literal(f": {row.detail}", "dim"))
        out.append("\n")
        if row.reply is not None:
            out.append_text(t.payload_view(row.reply))
        else:
            out.append("(no reply)", style="dim")
        self.query_one("#reply", Static).update(out)

    def show_request(self, headers: dict[str, str] | None = None) -> None:
        title = self.query_one("#request-title", Static)
        meta = self.query_one("#request-meta", Static)
        editor = self.query_one("#payload", TextArea)
        shown = self.shown
        if isinstance(shown, Request):
            what = "undo " if shown.kind == "compensate" else ""
            attempt = f" (attempt {shown.attempt + 1})" if shown.attempt else ""
            title.update(t.literal(f"next request: {what}{shown.step}{attempt}"))
            self.shown_headers = headers or {}
            self.show_request_meta()
            self.shown_text = payload_shown(shown.payload)
            editor.read_only = False
            editor.load_text(self.shown_text)
        elif isinstance(shown, Held):
            title.update(t.literal(f"failed: {shown.step}"))
            reason = t.literal(shown.reason, "bold red")
            reason.append("\nr retries with the payload below (e edits it), s skips the step,")
            reason.append("\na compensates what was done before it")
            meta.update(reason)
            last = self.last_request
            self.shown_text = (
                payload_shown(last.payload) if last and last.step == shown.step else ""
            )
            editor.read_only = False
            editor.load_text(self.shown_text)
        else:
            title.update(Text("next request"))
            ended = self.report is not None
            meta.update(Text("(the run has ended)" if ended else "(none waiting)", style="dim"))
            editor.load_text("")
            editor.read_only = True
            editor.display = not ended  # nothing more to edit
            if editor.has_focus:
                self.query_one("#steps", DataTable).focus()

    def show_request_meta(self) -> None:
        """The shown request's subject, timeout and headers. Headers wrap, so every value can
        be read whole, unless wrapped they would not all fit above the payload editor (80x24):
        then each takes one line, cut at the edge."""
        shown = self.shown
        if not isinstance(shown, Request):
            return
        meta = self.query_one("#request-meta", Static)
        subject = t.literal(f"subject  {shown.subject}", "bold")
        lines = [subject, Text(f"timeout  {shown.timeout_s:g}s", "dim")]
        headers = [t.literal(f"{k}: {v}", "dim") for k, v in self.shown_headers.items()]
        width = meta.scrollable_content_region.width
        room = self.query_one("#right").content_size.height * 6 // 10 - 1  # max-height: 60%
        wrapped = sum(-(-max(1, line.cell_len) // max(1, width)) for line in lines + headers)
        cut = width > 0 and wrapped > room
        for line in lines + headers:
            line.no_wrap = cut and line is not subject
            line.overflow = "ellipsis" if line.no_wrap else "fold"
        meta.update(Group(*lines, *headers))

    def show_status(self) -> None:
        line = Text()
        line.append_text(t.literal(f"run {self.run_id} ", "bold"))
        if self.error:
            line.append_text(t.literal(self.error, "bold red"))
        elif self.report is not None:
            colour = "green" if self.report.outcome == "completed" else "yellow"
            if not self.report.clean:
                colour = "bold red"
            line.append_text(t.literal(f"{self.report.outcome}: {self.report.reason}", colour))
            line.append("  (q quits)", style="dim")
        elif self.quit_requested:
            line.append("stopping: the run stays resumable", style="yellow")
        elif self.runner.nc.is_closed:
            line.append(
                "the bus connection is lost and its client gave up: q quits, --resume goes on "
                "later",
                style="bold red",
            )
        elif not self.runner.nc.is_connected:
            line.append("the bus connection is lost: waiting for it to come back", style="bold red")
        elif isinstance(self.shown, Held):
            line.append("waiting: a step failed", style="bold red")
        elif self.shown is not None:
            line.append("waiting for you: n sends", style="cyan")
        elif self.continuing:
            line.append("continuing to the next breakpoint", style="cyan")
        else:
            line.append("running", style="cyan")
        if self.inject_armed:
            line.append("  ⚡ the next step fails (injected)", style="bold red")
        line.append("\n")
        seen = f"{counted(self.events_seen, 'event')} of this run in {self.path.name}"
        if not self.runner.recorded:
            seen = f"the journal only in {self.path.name} (--no-record)"
        line.append_text(t.literal(seen, "dim"))
        self.query_one("#status", Static).update(line)


class StepperApp(QuitOnTerminate):
    """`qixtui orchestrate SAGA.toml`: the stepper on its own."""

    TITLE = "qixtui orchestrate"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", id="stepper.help")
    ]

    def __init__(
        self,
        path: Path,
        runner: SagaRunner,
        saga: SagaDef,
        definition: str,
        overrides: dict[str, str] | None = None,
        run_id: str | None = None,
        resume: bool = False,
    ) -> None:
        super().__init__()
        self.stepper = StepperScreen(
            path, runner, saga, definition, overrides or {}, run_id or new_run_id(), resume
        )

    def on_mount(self) -> None:
        self.push_screen(self.stepper)

    @property
    def report(self) -> RunReport | None:
        return self.stepper.report

    @property
    def error(self) -> str:
        return self.stepper.error
