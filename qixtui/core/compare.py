"""Choreography against orchestration: per-style flow metrics and conformance to a saga.

Everything here is plain data in, plain data out; `load_scope` is the thin layer that reads
the same data from a session file.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

import msgspec

from qixtui.core import store
from qixtui.core.correlate import event_service
from qixtui.core.model import Event, Flow, Link
from qixtui.core.rules import SAGA_RUN_HEADER, Rules
from qixtui.core.saga import (
    SAGA_OUTCOME_FAILURE,
    SAGA_OUTCOME_TERMINAL,
    SAGA_STEPPED_HEADER,
    SagaDef,
    SagaError,
    load_saga_text,
)
from qixtui.core.text import counted, time_span

ORCHESTRATOR = "orchestrator"  # the participant that sends a saga run's requests
CHOREOGRAPHY, ORCHESTRATION = "choreography", "orchestration"
SAGA_OUTCOMES = (*SAGA_OUTCOME_TERMINAL, *SAGA_OUTCOME_FAILURE)


# --- how events are read -------------------------------------------------------------------


class Lens:
    """How to read events: which service an event belongs to (by default the correlation
    rules' services rule, the one that filled the flows' services) and what step it is."""

    def __init__(
        self,
        service_of: Callable[[Event], str | None] | None = None,
        label_of: Callable[[str], str] = str,
    ) -> None:
        self.service_of = service_of or partial(event_service, rules=Rules())
        self.label_of = label_of

    @classmethod
    def from_rules(cls, rules: Rules) -> Lens:
        return cls(partial(event_service, rules=rules))


class Markers(msgspec.Struct):
    """Subject patterns that mark a failure and a compensation (the correlation rules'
    `[status]` failure and compensation lists, plus a saga's compensation requests)."""

    failure: list[str] = []
    compensation: list[str] = []

    @classmethod
    def from_rules(
        cls, rules: Rules, failure: Sequence[str] = (), compensation: Sequence[str] = ()
    ) -> Markers:
        """The rules' status patterns plus more (flags, a saga's compensation requests)."""
        return cls(
            failure=[*rules.status.failure, *failure],
            compensation=[*rules.status.compensation, *compensation],
        )


def session_saga(db: sqlite3.Connection) -> tuple[SagaDef | None, str]:
    """The saga the session's orchestrated runs ran (the newest run's definition), and
    where it came from, or why there is none."""
    for run in reversed(store.saga_runs(db)):
        try:
            return load_saga_text(run.definition, f"run {run.run_id}"), f"run {run.run_id}"
        except SagaError:
            continue
    return None, "no saga: pass --saga, or record orchestrated runs"


def compensation_requests(saga: SagaDef | None) -> list[str]:
    """A saga's compensation requests: each counts as a compensation in either style."""
    return [s.compensate.request for s in saga.steps if s.compensate] if saga else []


# --- one flow, read -------------------------------------------------------------------------


class FlowView:
    """A flow's events in time order with its request/reply and causal parents."""

    def __init__(self, flow: Flow, events: Sequence[Event], links: Sequence[Link], lens: Lens):
        self.flow = flow
        self.events = sorted(events, key=lambda e: (e.ts_ns, e.id))
        ids = {e.id for e in self.events}
        self.reply_to: dict[int, int] = {}  # reply id -> request id
        self.cause: dict[int, int] = {}  # event id -> causing event id
        for link in links:
            if link.parent_id is None or link.event_id not in ids or link.parent_id not in ids:
                continue
            if link.kind == "reply":
                self.reply_to.setdefault(link.event_id, link.parent_id)
            elif link.kind == "causation":
                self.cause.setdefault(link.event_id, link.parent_id)
        self.by_id = {e.id: e for e in self.events}
        self.replies: dict[int, Event] = {}  # request id -> first reply
        for event in self.events:
            request = self.reply_to.get(event.id)
            if request is not None:
                self.replies.setdefault(request, event)
        self.lens = lens

    def label(self, event: Event) -> str:
        request = self.reply_to.get(event.id)
        if request is not None:
            return f"{self.lens.label_of(self.by_id[request].subject)} (reply)"
        return self.lens.label_of(event.subject)

    @property
    def stepped(self) -> bool:
        """A saga run a person stepped through, in part at least: a request they let go
        says so, and so does the end announcement of a run stepped to its end (recordings
        made before requests said it have only that)."""
        for event in self.events:
            if event.header(SAGA_STEPPED_HEADER) is not None:
                return True
            if self.announcement(event):
                with contextlib.suppress(msgspec.DecodeError):
                    said = msgspec.json.decode(event.payload)
                    if isinstance(said, dict) and said.get("stepped") is True:
                        return True
        return False

    @staticmethod
    def announcement(event: Event) -> bool:
        """The saga runner's note of how a run ended: the orchestrator's, sent to no one."""
        return event.header(SAGA_RUN_HEADER) is not None and _matches(SAGA_OUTCOMES, event.subject)

    def receiver(self, event: Event) -> str | None:
        """The service that handles a request; None for a published event or a reply (which
        may echo its request's headers: nats-py's `respond` copies them)."""
        if event.id in self.reply_to or self.announcement(event):
            return None
        if event.id in self.replies or event.header(SAGA_RUN_HEADER) is not None:
            return self.lens.service_of(event)
        return None

    def sender(self, event: Event) -> str | None:
        """Who sent a message: a reply's responder, a saga request's orchestrator, an
        event's own service; None for other requests (the subject names only the receiver)."""
        request = self.reply_to.get(event.id)
        if request is not None:
            return self.lens.service_of(self.by_id[request])
        if event.header(SAGA_RUN_HEADER) is not None:
            return ORCHESTRATOR
        if event.id in self.replies:
            return None
        return self.lens.service_of(event)

    def participant(self, event: Event) -> str | None:
        """The service an event is attributed to (a request: the one that answers it); none
        for a run's outcome, which no service takes part in."""
        if self.announcement(event):
            return None
        return self.receiver(event) or self.sender(event)

    @property
    def duration_ns(self) -> int:
        return self.events[-1].ts_ns - self.events[0].ts_ns if self.events else 0


# --- metrics ---------------------------------------------------------------------------------


class Percentiles(msgspec.Struct):
    """Nearest-rank percentiles; all None when there were no samples."""

    count: int
    p50: int | float | None
    p95: int | float | None
    p99: int | float | None
    mean: float | None = None
    max: int | float | None = None


def nearest_rank(ordered: Sequence[int | float], fraction: float) -> int | float:
    rank = max(1, math.ceil(len(ordered) * fraction))
    return ordered[min(rank, len(ordered)) - 1]


def percentiles(samples: Iterable[int | float]) -> Percentiles:
    ordered = sorted(samples)
    if not ordered:
        return Percentiles(0, None, None, None)
    return Percentiles(
        count=len(ordered),
        p50=nearest_rank(ordered, 0.50),
        p95=nearest_rank(ordered, 0.95),
        p99=nearest_rank(ordered, 0.99),
        mean=sum(ordered) / len(ordered),
        max=ordered[-1],
    )


class Edge(msgspec.Struct):
    """Messages from `source` to `target`, and how the pair was established."""

    source: str
    target: str
    count: int
    via: str  # causation | request | reply | sequence


class CriticalStep(msgspec.Struct):
    """A step's share of the time on its flows' critical paths."""

    step: str
    total_ns: int
    share: float
    flows: int


class StyleStats(msgspec.Struct):
    style: str
    flows: int
    completed: int
    failed: int
    compensated: int
    stalled: int
    running: int
    latency_ns: Percentiles  # first to last event, completed flows
    latency_all_ns: Percentiles  # first to last event, every flow
    messages_per_flow: Percentiles
    services_per_flow: Percentiles
    edges: list[Edge]
    coupling: int  # distinct unordered service pairs that exchange messages
    detect_failure_ns: Percentiles  # flow start to its first failure signal
    compensate_ns: Percentiles  # first failure signal to the last compensation done
    critical_path: list[CriticalStep]
    flow_ids: list[int]
    # Saga runs a person stepped through: counted, but left out of every time figure (latency,
    # failure detected, compensation done, critical path), which would measure their pauses.
    stepped: int = 0


EDGE_METHOD = (
    "edges: a causation header links the causing event's service to the reacting one "
    "(causation); a request goes from its sender (the orchestrator for saga requests) to the "
    "service that answers (request) and the reply back (reply); an event with neither, or a "
    "request from an unknown sender, goes from the service of the flow's previous event "
    "(sequence, an inference)"
)


def _edges(view: FlowView, into: Counter[tuple[str, str, str]]) -> None:
    previous: str | None = None
    for event in view.events:
        if view.announcement(event):
            continue
        sender, receiver = view.sender(event), view.receiver(event)
        request = view.reply_to.get(event.id)
        cause = view.cause.get(event.id)
        if request is not None:
            requester = view.sender(view.by_id[request])
            pair, via = (sender, requester), "reply"
        elif receiver is not None:
            # a request whose sender is unknown: from the service seen just before it
            pair, via = (
                ((sender, receiver), "request") if sender else ((previous, receiver), "sequence")
            )
        elif cause is not None:
            pair, via = (view.participant(view.by_id[cause]), sender), "causation"
        else:
            pair, via = (previous, sender), "sequence"
        source, target = pair
        if source and target and source != target:
            into[(source, target, via)] += 1
        previous = view.participant(event) or previous


def _is_reply_failure(event: Event) -> bool:
    """A reply that says no: a NATS status (503 no responders) or `"ok": false` in JSON."""
    if event.header("Status") not in (None, "200"):
        return True
    if not event.payload.lstrip().startswith(b"{"):
        return False
    try:
        body = json.loads(event.payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("ok") is False


def _matches(patterns: Sequence[str], subject: str) -> bool:
    return any(store.subject_matches(p, subject) for p in patterns)


def _failure_times(view: FlowView, markers: Markers) -> tuple[int | None, int | None]:
    """(first failure signal, last compensation done) in ns since the flow started."""
    if not view.events:
        return None, None
    start = view.events[0].ts_ns
    detected: int | None = None
    compensated: int | None = None
    for event in view.events:
        compensation = _matches(markers.compensation, event.subject)
        # A compensation, or a saga announcing it failed, says a failure was detected by
        # then even where nothing before said no: a step that timed out has no reply.
        failure = (
            compensation
            or _matches(markers.failure, event.subject)
            or _matches(SAGA_OUTCOME_FAILURE, event.subject)
            or (event.id in view.reply_to and _is_reply_failure(event))
        )
        if failure and detected is None:
            detected = event.ts_ns - start
        if compensation:
            reply = view.replies.get(event.id)
            done = (reply or event).ts_ns - start
            compensated = done if compensated is None else max(compensated, done)
    return detected, compensated


def _critical_path(view: FlowView) -> list[tuple[str, int]]:
    """Walk back from the last event: to its request or cause when known, else to the event
    just before it; each step costs the time since the one it waited for."""
    if not view.events:
        return []
    index = {e.id: i for i, e in enumerate(view.events)}
    i = len(view.events) - 1
    steps: list[tuple[str, int]] = []
    while i > 0:
        event = view.events[i]
        parent = view.reply_to.get(event.id, view.cause.get(event.id))
        j = index[parent] if parent is not None and index[parent] < i else i - 1
        steps.append((view.label(event), event.ts_ns - view.events[j].ts_ns))
        i = j
    return steps[::-1]


def style_stats(
    style: str,
    flows: Sequence[Flow],
    events: Mapping[int, Sequence[Event]],
    links: Mapping[int, Sequence[Link]],
    lens: Lens,
    markers: Markers,
    top: int = 5,
) -> StyleStats:
    """The metrics of one style over its flows (events and links keyed by flow id)."""
    statuses = Counter(f.status for f in flows)
    latency: list[int] = []
    latency_all: list[int] = []
    messages: list[int] = []
    services: list[int] = []
    detect: list[int] = []
    compensate: list[int] = []
    edges: Counter[tuple[str, str, str]] = Counter()
    critical: dict[str, int] = defaultdict(int)
    critical_flows: Counter[str] = Counter()
    stepped = 0
    for flow in flows:
        view = FlowView(flow, events.get(flow.flow_id, ()), links.get(flow.flow_id, ()), lens)
        if not view.events:
            continue
        messages.append(len(view.events))
        services.append(len({s for e in view.events if (s := view.participant(e))}))
        _edges(view, edges)
        if view.stepped:
            stepped += 1
            continue
        latency_all.append(view.duration_ns)
        if flow.status == "completed":
            latency.append(view.duration_ns)
        detected, done = _failure_times(view, markers)
        if detected is not None and flow.status in ("failed", "compensated"):
            detect.append(detected)
            if done is not None and done >= detected:
                compensate.append(done - detected)
        seen: set[str] = set()
        for label, cost in _critical_path(view):
            critical[label] += cost
            seen.add(label)
        critical_flows.update(seen)
    total = sum(critical.values())
    ranked = sorted(critical.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    pairs = {frozenset((s, t)) for s, t, _ in edges}
    return StyleStats(
        style=style,
        flows=len(flows),
        completed=statuses["completed"],
        failed=statuses["failed"],
        compensated=statuses["compensated"],
        stalled=statuses["stalled"],
        running=statuses["running"],
        latency_ns=percentiles(latency),
        latency_all_ns=percentiles(latency_all),
        messages_per_flow=percentiles(messages),
        services_per_flow=percentiles(services),
        edges=[
            Edge(s, t, n, via)
            for (s, t, via), n in sorted(edges.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        coupling=len(pairs),
        detect_failure_ns=percentiles(detect),
        compensate_ns=percentiles(compensate),
        critical_path=[
            CriticalStep(label, ns, round(ns / total, 4) if total else 0.0, critical_flows[label])
            for label, ns in ranked
        ],
        flow_ids=[f.flow_id for f in flows],
        stepped=stepped,
    )


def split_styles(
    flows: Sequence[Flow],
    events: Mapping[int, Sequence[Event]],
    orchestrated_subject: str | None = None,
) -> tuple[list[Flow], list[Flow]]:
    """(choreography, orchestration): a flow is orchestrated when the saga engine marked it,
    or, given a subject pattern, when one of its events matches it."""
    chor: list[Flow] = []
    orch: list[Flow] = []
    for flow in flows:
        if orchestrated_subject is None:
            marked = flow.orchestrated
        else:
            marked = any(
                store.subject_matches(orchestrated_subject, e.subject)
                for e in events.get(flow.flow_id, ())
            )
        (orch if marked else chor).append(flow)
    return chor, orch


# --- conformance ---------------------------------------------------------------------------


class SagaSteps(msgspec.Struct):
    """A saga's step order mapped onto event types: step -> subject pattern for the event
    that shows it done, and for its compensation when it has one."""

    steps: list[str]
    events: dict[str, str]
    compensations: dict[str, str] = {}


class Deviation(msgspec.Struct):
    kind: str  # missing | extra | out_of_order
    step: str
    position: int  # in the variant's mapped steps (missing: where it was expected)
    detail: str


class VariantConformance(msgspec.Struct):
    steps: list[str]  # the variant's event types
    mapped: list[str]  # the saga steps they show, in order
    expected: list[str]  # the saga path it was held against
    count: int
    conforms: bool
    deviations: list[Deviation]


class Conformance(msgspec.Struct):
    variants: list[VariantConformance]
    flows: int
    conforming_flows: int
    unmapped_types: list[str]  # event types no step maps to (ignored by the check)
    unmapped_steps: list[str]  # saga steps with no event mapping


def lcs_pairs(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs of one longest common subsequence of a and b."""
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = (
                table[i + 1][j + 1] + 1 if a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
            )
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _compensation_step(step: str) -> str:
    return f"{step}:compensate"


def expected_paths(saga: SagaSteps) -> list[list[str]]:
    """Every path the saga allows: all steps, or the first k then the compensations of those
    that have one, newest first (the step k+1 failed)."""
    steps = [s for s in saga.steps if s in saga.events]
    paths = [list(steps)]
    for k in range(len(steps)):
        done = steps[:k]
        undo = [_compensation_step(s) for s in reversed(done) if s in saga.compensations]
        paths.append(done + undo)
    return paths


def _map_variant(variant: Sequence[str], saga: SagaSteps) -> tuple[list[str], set[str]]:
    mapped: list[str] = []
    unmapped: set[str] = set()
    patterns = [(p, s) for s, p in saga.events.items()] + [
        (p, _compensation_step(s)) for s, p in saga.compensations.items()
    ]
    for etype in variant:
        step = next((s for p, s in patterns if store.subject_matches(p, etype)), None)
        if step is None:
            unmapped.add(etype)
        else:
            mapped.append(step)
    return mapped, unmapped


def _deviations(mapped: list[str], expected: list[str]) -> list[Deviation]:
    pairs = lcs_pairs(mapped, expected)
    kept_m = {i for i, _ in pairs}
    kept_e = {j for _, j in pairs}
    out: list[Deviation] = []
    unmatched_expected = Counter(expected[j] for j in range(len(expected)) if j not in kept_e)
    for i, step in enumerate(mapped):
        if i in kept_m:
            continue
        if unmatched_expected[step] > 0:
            unmatched_expected[step] -= 1
            j = next(j for j in range(len(expected)) if expected[j] == step and j not in kept_e)
            kept_e.add(j)
            before = expected[j - 1] if j > 0 else None
            detail = (
                f"`{step}` came at position {i + 1}, expected after `{before}`"
                if before
                else f"`{step}` came at position {i + 1}, expected first"
            )
            out.append(Deviation("out_of_order", step, i, detail))
        else:
            out.append(Deviation("extra", step, i, f"`{step}` at position {i + 1} is extra"))
    for j, step in enumerate(expected):
        if j not in kept_e:
            out.append(Deviation("missing", step, j, f"`{step}` (step {j + 1}) never happened"))
    return sorted(out, key=lambda d: (d.position, d.kind))


def conformance(variants: Iterable[tuple[Sequence[str], int]], saga: SagaSteps) -> Conformance:
    """Hold each (event types, flow count) variant against the saga's allowed paths; the path
    closest to it (longest common subsequence, then fewest differences) is the one reported."""
    paths = expected_paths(saga)
    results: list[VariantConformance] = []
    unmapped: set[str] = set()
    flows = conforming = 0
    for steps, count in variants:
        mapped, skipped = _map_variant(steps, saga)
        unmapped |= skipped

        def score(path: list[str], mapped: list[str] = mapped) -> tuple[int, int]:
            common = len(lcs_pairs(mapped, path))
            return (common, -(len(path) + len(mapped) - 2 * common))

        expected = max(paths, key=score)
        deviations = _deviations(mapped, expected)
        # a variant showing no step conforms to the path where the first step failed
        ok = not deviations
        flows += count
        conforming += count if ok else 0
        results.append(VariantConformance(list(steps), mapped, expected, count, ok, deviations))
    results.sort(key=lambda v: (-v.count, v.steps))
    return Conformance(
        variants=results,
        flows=flows,
        conforming_flows=conforming,
        unmapped_types=sorted(unmapped),
        unmapped_steps=[s for s in saga.steps if s not in saga.events],
    )


def variants_of(
    flows: Sequence[Flow],
    events: Mapping[int, Sequence[Event]],
    links: Mapping[int, Sequence[Link]],
    lens: Lens,
) -> list[tuple[list[str], int]]:
    """Each distinct sequence of event types, with how many flows followed it."""
    counts: Counter[tuple[str, ...]] = Counter()
    for flow in flows:
        view = FlowView(flow, events.get(flow.flow_id, ()), links.get(flow.flow_id, ()), lens)
        counts[tuple(view.label(e) for e in view.events)] += 1
    return [(list(k), n) for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def traces_of(
    flows: Sequence[Flow],
    events: Mapping[int, Sequence[Event]],
    links: Mapping[int, Sequence[Link]],
    lens: Lens,
) -> list[list[tuple[str, int]]]:
    """Each flow's (step, ts_ns) in time order, as process discovery takes them."""
    out: list[list[tuple[str, int]]] = []
    for flow in flows:
        view = FlowView(flow, events.get(flow.flow_id, ()), links.get(flow.flow_id, ()), lens)
        out.append([(view.label(e), e.ts_ns) for e in view.events])
    return out


def parse_mapping(pairs: Iterable[str], steps: Sequence[str]) -> SagaSteps:
    """`step=pattern` and `step:compensate=pattern` items as a SagaSteps; ValueError names
    the first item that is not one."""
    events: dict[str, str] = {}
    compensations: dict[str, str] = {}
    for item in pairs:
        name, sep, pattern = item.partition("=")
        name, pattern = name.strip(), pattern.strip()
        step, colon, what = name.partition(":")
        if not sep or not pattern or (colon and what != "compensate"):
            raise ValueError(f"--map {item!r}: use STEP=SUBJECT or STEP:compensate=SUBJECT")
        if step not in steps:
            raise ValueError(f"--map {item!r}: the saga has no step `{step}`")
        (compensations if colon else events)[step] = pattern
    return SagaSteps(list(steps), events, compensations)


# --- the whole comparison --------------------------------------------------------------------


class Comparison(msgspec.Struct):
    choreography: StyleStats
    orchestration: StyleStats
    split: str  # how the styles were told apart
    edges_method: str
    conformance: Conformance | None = None


def compare(
    flows: Sequence[Flow],
    events: Mapping[int, Sequence[Event]],
    links: Mapping[int, Sequence[Link]],
    *,
    lens: Lens | None = None,
    markers: Markers | None = None,
    orchestrated_subject: str | None = None,
    saga: SagaSteps | None = None,
) -> Comparison:
    lens = lens or Lens()
    markers = markers or Markers()
    chor, orch = split_styles(flows, events, orchestrated_subject)
    conf = None
    if saga is not None:
        conf = conformance(variants_of(chor, events, links, lens), saga)
    split = (
        f"orchestrated = a flow with an event on {orchestrated_subject}"
        if orchestrated_subject
        else "orchestrated = flows the saga engine marked (flows.orchestrated)"
    )
    return Comparison(
        choreography=style_stats(CHOREOGRAPHY, chor, events, links, lens, markers),
        orchestration=style_stats(ORCHESTRATION, orch, events, links, lens, markers),
        split=split,
        edges_method=EDGE_METHOD,
        conformance=conf,
    )


# --- as text -------------------------------------------------------------------------------


def _ms(ns: int | float | None) -> str:
    return "-" if ns is None else time_span(ns)


def _num(x: int | float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def figure_rows(result: Comparison) -> list[tuple[str, str, str]]:
    """(figure, choreography, orchestration) as short text, for tables on screen and paper."""
    c, o = result.choreography, result.orchestration

    def row(label: str, f: Callable[[StyleStats], str]) -> tuple[str, str, str]:
        return (label, f(c), f(o))

    def pct(
        attr: str, q: str, fmt: Callable[[int | float | None], str] = _ms
    ) -> Callable[[StyleStats], str]:
        return lambda s: fmt(getattr(getattr(s, attr), q))

    def median(attr: str) -> Callable[[StyleStats], str]:
        """The p50 with its sample count: a p95 of 11 flows is their slowest."""

        def shown(s: StyleStats) -> str:
            got: Percentiles = getattr(s, attr)
            return f"{_ms(got.p50)} (n={got.count})" if got.count else "-"

        return shown

    def edges(s: StyleStats) -> str:
        return ", ".join(f"{e.source}→{e.target} ×{e.count} ({e.via})" for e in s.edges) or "-"

    def critical(s: StyleStats) -> str:
        return ", ".join(f"{x.step} {x.share:.0%}" for x in s.critical_path[:3]) or "-"

    stepped = [row("stepped by hand (no times)", lambda s: str(s.stepped))]
    return [
        row("flows", lambda s: str(s.flows)),
        *(stepped if c.stepped or o.stepped else []),
        row("completed", lambda s: str(s.completed)),
        row("failed", lambda s: str(s.failed)),
        row("compensated", lambda s: str(s.compensated)),
        row("stalled", lambda s: str(s.stalled)),
        row("running", lambda s: str(s.running)),
        row("latency p50 (completed)", median("latency_ns")),
        row("latency p95 (completed)", pct("latency_ns", "p95")),
        row("latency p99 (completed)", pct("latency_ns", "p99")),
        row("messages per flow (mean)", pct("messages_per_flow", "mean", _num)),
        row("messages per flow (max)", pct("messages_per_flow", "max", _num)),
        row("services per flow (mean)", pct("services_per_flow", "mean", _num)),
        row("coupled service pairs", lambda s: str(s.coupling)),
        row("who talks to whom", edges),
        row("failure detected p50", median("detect_failure_ns")),
        row("failure detected p95", pct("detect_failure_ns", "p95")),
        row("compensation done p50", median("compensate_ns")),
        row("compensation done p95", pct("compensate_ns", "p95")),
        row("critical path (top)", critical),
    ]


def conformance_lines(conf: Conformance, markdown: bool) -> list[str]:
    """The conformance summary as lines: a Markdown list, or indented text."""
    lines = [
        f"{conf.conforming_flows} of {conf.flows} choreography flows conform to the saga "
        f"({counted(len(conf.variants), 'variant')})."
    ]
    if conf.unmapped_steps:
        lines.append(f"Steps without an event mapping: {', '.join(conf.unmapped_steps)}.")
    for v in conf.variants:
        verdict = (
            ("conforms" if v.conforms else "deviates")
            if v.count == 1
            else ("conform" if v.conforms else "deviate")
        )
        path = " → ".join(v.mapped) or "(none of the steps: the first one failed)"
        item = f"{v.count} flow{'' if v.count == 1 else 's'} {verdict}: {path}"
        lines.append(f"- {item}" if markdown else f"  {item}")
        for d in v.deviations:
            text = f"{d.kind.replace('_', ' ')}: {d.detail}"
            lines.append(f"  - {text}" if markdown else f"      {text}")
    if conf.unmapped_types:
        lines.append(f"Event types no step maps to (ignored): {', '.join(conf.unmapped_types)}.")
    return lines


# --- reading a session -----------------------------------------------------------------------


def load_scope(
    db: sqlite3.Connection,
) -> tuple[list[Flow], dict[int, list[Event]], dict[int, list[Link]]]:
    """Every flow of a session with its events and links, keyed by flow id."""
    flows = store.flows(db)
    events: dict[int, list[Event]] = defaultdict(list)
    for event in store.iter_events(db, store.EventQuery()):
        if event.flow_id is not None:
            events[event.flow_id].append(event)
    owner = {e.id: fid for fid, evs in events.items() for e in evs}
    links: dict[int, list[Link]] = defaultdict(list)
    for row in db.execute("SELECT event_id, kind, key, parent_id FROM links"):
        fid = owner.get(row[0])
        if fid is not None:
            links[fid].append(Link(row[0], row[1], row[2], row[3]))
    return flows, dict(events), dict(links)


def links_within(db: sqlite3.Connection, events: Sequence[Event]) -> list[Link]:
    """The links of these events whose parent, when they name one, is among them too."""
    ids = {e.id for e in events}
    found: list[Link] = []
    ordered = sorted(ids)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT event_id, kind, key, parent_id FROM links WHERE event_id IN ({marks})"
        found.extend(Link(*row) for row in db.execute(sql, chunk))
    return [lk for lk in found if lk.parent_id is None or lk.parent_id in ids]
