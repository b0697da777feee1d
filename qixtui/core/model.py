"""Plain data shared by the recorder, correlation, the saga engine and every view."""

from __future__ import annotations

import msgspec

# Headers as a list of (name, value) pairs: NATS allows a name more than once and the order
# is part of what was on the wire.
Headers = list[tuple[str, str]]


class Event(msgspec.Struct, array_like=True, gc=False):
    """One message as the recorder received it."""

    ts_ns: int
    subject: str
    reply: str | None
    headers: Headers | None
    payload: bytes
    id: int = 0  # rowid once stored
    flow_id: int | None = None

    def header(self, name: str) -> str | None:
        """First value of a header, name compared case-insensitively."""
        if not self.headers:
            return None
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


class Gap(msgspec.Struct):
    """A stretch of time in which the recorder was not receiving: nothing in it is on disk."""

    start_ns: int
    end_ns: int | None
    reason: str
    id: int = 0


class Drop(msgspec.Struct):
    """Messages the client discarded because the recorder fell behind (slow consumer)."""

    ts_ns: int
    subject: str
    count: int


class Link(msgspec.Struct, array_like=True, gc=False):
    """Why an event belongs to its flow: the key it shares, and of which kind."""

    event_id: int
    kind: str  # header, trace, reply, causation, field, subject
    key: str
    parent_id: int | None = None  # the causing or requesting event, when known


FLOW_STATUSES = ("running", "completed", "failed", "compensated", "stalled")


class Flow(msgspec.Struct):
    """One business transaction: the connected component of events sharing keys."""

    flow_id: int
    status: str
    started_ns: int
    ended_ns: int
    events: int
    services: list[str] = []
    variant: list[str] = []
    keys: list[str] = []
    orchestrated: bool = False


class FlowChanges(msgspec.Struct):
    """What correlating a batch changed: new links, flows merged away, flow summaries to save.

    `links` are the structural ones (a reply to its request, an event to its cause, a flowless
    event adopted); the keys an event carries follow from it and the rules, and are derived
    on demand (`Correlator.key_links`) rather than stored (a sixth of the writer's work).

    `merges` holds (absorbed, into) pairs, applied before `flows` are saved. `assign` holds
    (event_id, flow_id) for events stored flowless that turned out to belong to a flow (a
    request or a cause seen before anything tied it to one).
    """

    links: list[Link] = []
    merges: list[tuple[int, int]] = []
    flows: list[Flow] = []
    assign: list[tuple[int, int]] = []
