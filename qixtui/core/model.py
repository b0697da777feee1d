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


# What bytes.strip() strips; str.strip() would also take Unicode spaces a value may hold.
_BYTES_WHITESPACE = " \t\n\r\x0b\x0c"


def parse_header_block(raw: bytes) -> Headers:
    """A NATS header block (`NATS/1.0[ status]\\r\\nName: value\\r\\n...`) as ordered pairs.

    Repeated names are kept, in order. An inline status becomes `Status` and `Description`
    pairs, as nats-py names them. Bytes that are not UTF-8 are kept visible as `\\xNN`.
    """
    # One decode for the whole block: the separators are ASCII, so splitting afterwards
    # gives what decoding each part would, at a third less of the writer's parsing time.
    lines = raw.decode("utf-8", "backslashreplace").split("\r\n")
    pairs: Headers = []
    first = lines[0]
    if first.startswith("NATS/1.0 "):
        status, _, description = first[9:].strip(_BYTES_WHITESPACE).partition(" ")
        if status:
            pairs.append(("Status", status))
        if description:
            pairs.append(("Description", description))
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name:
            pairs.append((name.strip(_BYTES_WHITESPACE), value.strip(_BYTES_WHITESPACE)))
    return pairs
