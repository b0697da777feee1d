"""The shop's participants on NATS: each service on its own connection, reacting to events
(choreography) and answering commands (orchestration), plus the order generator.

Services never call each other in the choreography: each subscribes to the events it cares
about and publishes its own. Consumers are idempotent (a repeated message id is ignored and a
per-order state guard stops a second side effect), commands honour `Idempotency-Key`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import nats
import nats.errors
from nats.aio.msg import Msg

from qixtui_demo import catalog
from qixtui_demo.messages import Cause, Style, event_headers, header, message_id
from qixtui_demo.plan import (
    DEFAULT_LATENCY,
    Knobs,
    Latency,
    OrderPlan,
    arrival_gap,
    hex_id,
    plan_order,
    republishes,
    unit,
)
from qixtui_nats.connect import (
    Client,  # asked for TLS (tls://), it refuses a server without it before sending anything
    ConnectError,
    ConnectOptions,
    describe_connect_error,
    split_servers,
)

Body = dict[str, Any]
Reply = dict[str, Any]
MEMORY = 100_000  # ids and projections a service keeps; oldest forgotten first
PROJECTION_WAIT_S = 5.0
PRICING_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 10.0
PROBE_CUSTOMER = "cust-001"  # the synthetic-monitoring account, also a real customer's id


class BadRequest(Exception):
    pass


def need(body: Body, *names: str) -> list[Any]:
    missing = [name for name in names if name not in body]
    if missing:
        raise BadRequest(f"missing {', '.join(missing)}")
    return [body[name] for name in names]


class Memory(OrderedDict[str, Any]):
    """A bounded map: a long demo run must not grow without limit."""

    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        if len(self) > MEMORY:
            self.popitem(last=False)


class Projection:
    """A service's local copy of placed orders, with waiting for one not yet seen."""

    def __init__(self) -> None:
        self.orders: Memory = Memory()
        self.waiters: dict[str, asyncio.Event] = {}

    def add(self, order_id: str, value: Any) -> None:
        self.orders.remember(order_id, value)
        if (event := self.waiters.pop(order_id, None)) is not None:
            event.set()

    async def get(self, order_id: str) -> Any | None:
        if order_id not in self.orders:
            event = self.waiters.setdefault(order_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), PROJECTION_WAIT_S)
            self.waiters.pop(order_id, None)
        return self.orders.get(order_id)


@dataclass
class Faults:
    duplicates: float = 0.0  # share of events their publisher sends twice
    silent: dict[str, float] = field(default_factory=dict)  # service -> seconds until silent


async def abandon(connecting: asyncio.Future[None], nc: Client) -> None:
    """Stop a connect (if it still runs) and close its client; its outcome is read, so asyncio
    has no unread error to print at exit."""
    connecting.cancel()
    await asyncio.wait({connecting})
    if not connecting.cancelled():
        connecting.exception()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 2)


class Service:
    """One participant: its own connection, latency, idempotency store and counters."""

    name = ""
    command_name = ""  # the <service> token in shop.cmd.<service>.* and shop.admin.<service>.*
    style = Style()

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.nc: Client | None = None
        self.latency: Latency = shop.latency[self.name]
        self.rng = random.Random(hex_id(8, "latency", shop.knobs.seed, self.name))
        self.counts: Counter[str] = Counter()
        self.seen_ids: Memory = Memory()
        self.key_seen: Counter[str] = Counter()
        self.key_applied: Counter[str] = Counter()
        self.key_replies: dict[str, asyncio.Future[bytes]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_customer = PROBE_CUSTOMER

    # -- wiring -----------------------------------------------------------------------------

    def reactions(self) -> dict[str, Callable[[Body, Cause], Awaitable[None]]]:
        return {}

    def commands(self) -> dict[str, Callable[[Body], Reply]]:
        return {}

    def listeners(self) -> dict[str, Callable[[Msg], Awaitable[None]]]:
        """Raw subscriptions, for what is neither an event nor a command."""
        return {}

    async def start(self, connect: ConnectOptions) -> None:
        """Connect and subscribe; a ConnectError in one line (as `qixtui record` words it)
        when the server cannot be used."""
        shown = connect.display_servers()
        errors: list[Exception] = []  # the first is the cause; nats-py ends on NoServersError

        async def on_error(exc: Exception) -> None:
            if self.nc is None:
                errors.append(exc)
            await self._on_error(exc)

        # Keep retrying through later outages, but give up on a server that never answers,
        # and at once on one that refuses (a wrong port): the first connect tries once.
        nc = Client()
        connecting = asyncio.ensure_future(
            nc.connect(
                **replace(connect, name=f"shop-{self.name}").kwargs(),
                allow_reconnect=True,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                error_cb=on_error,
            )
        )
        # Not asyncio.wait_for: cancelled (a sibling failed) just as the connect failed, it
        # left the connect's error unread, printed at exit as "Task exception was never
        # retrieved" with its traceback.
        try:
            await asyncio.wait({connecting}, timeout=self.shop.connect_timeout_s)
        except BaseException:  # cancelled, perhaps just as the connect went through
            await abandon(connecting, nc)
            raise
        if not connecting.done():
            await abandon(connecting, nc)
            why = f"no answer within {self.shop.connect_timeout_s:g}s"
            raise ConnectError(f"cannot connect to {shown}: {why}")
        if (exc := connecting.exception()) is not None:
            await abandon(connecting, nc)
            raise ConnectError(describe_connect_error(errors[0] if errors else exc, shown))
        self.nc = nc
        self.nc.options["max_reconnect_attempts"] = -1
        for subject, handler in self.reactions().items():
            await self.nc.subscribe(subject, cb=self._event_callback(handler))
        for verb, command in self.commands().items():
            subject = f"shop.cmd.{self.command_name}.{verb}"
            await self.nc.subscribe(subject, cb=self._command_callback(command))
        if self.command_name:
            await self.nc.subscribe(f"shop.admin.{self.command_name}.stats", cb=self._stats)
        for subject, callback in self.listeners().items():
            await self.nc.subscribe(subject, cb=callback)
        await self.nc.flush()  # every subscription is on the server before the shop opens

    async def _on_error(self, exc: Exception) -> None:
        self.counts["connection_errors"] += 1

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 2)

    @property
    def silent(self) -> bool:
        return self.shop.is_silent(self.name)

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counts["handler_errors"] += 1

    async def pause(self) -> None:
        """The time this service takes to do its work."""
        await asyncio.sleep(self.latency.sample(self.rng.gauss(0.0, 1.0)))

    # -- choreography -----------------------------------------------------------------------

    def _event_callback(
        self, handler: Callable[[Body, Cause], Awaitable[None]]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def on_event(msg: Msg) -> None:
            if self.silent:
                self.counts["unanswered"] += 1
                return
            mid = message_id(msg.headers)
            if mid is not None:
                if mid in self.seen_ids:
                    self.counts["duplicates_ignored"] += 1
                    return
                self.seen_ids.remember(mid, True)
            try:
                body = json.loads(msg.data)
            except ValueError:
                self.counts["bad_events"] += 1
                return
            self.counts["events_in"] += 1
            self.spawn(handler(body, Cause.of(msg.headers)))

        return on_event

    async def emit(
        self,
        subject: str,
        body: Body,
        key: str,
        cause: Cause | None,
        correlation_id: str | None = None,
    ) -> bool:
        """Publish one event; with the duplicates fault, publish it again a moment later."""
        if self.silent or self.nc is None:
            return False
        seed = self.shop.knobs.seed
        headers = event_headers(
            self.style, self.name, subject, (seed, key, subject), cause, correlation_id
        )
        data = json.dumps(body).encode()
        await self.nc.publish(subject, data, headers=headers)
        self.counts["published"] += 1
        if republishes(seed, self.shop.faults.duplicates, key, subject):
            self.spawn(self._republish(subject, data, headers))
        return True

    async def _republish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        await self.pause()
        if self.nc is not None and not self.silent:
            await self.nc.publish(subject, data, headers=headers)
            self.counts["duplicates_published"] += 1

    # -- orchestration ----------------------------------------------------------------------

    def _command_callback(
        self, command: Callable[[Body], Reply]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def on_command(msg: Msg) -> None:
            if self.silent:
                self.counts["unanswered"] += 1
                return
            if msg.reply:
                self.spawn(self._answer(msg, command))

        return on_command

    async def _answer(self, msg: Msg, command: Callable[[Body], Reply]) -> None:
        assert self.nc is not None
        key = header(msg.headers, "Idempotency-Key")
        self.counts["commands"] += 1
        if key is not None:
            self.key_seen[key] += 1
            stored = self.key_replies.get(key)
            if stored is not None:
                self.counts["commands_replayed"] += 1
                # a retry while the first attempt still runs waits for that attempt's reply
                data = await asyncio.shield(stored)
                await self.nc.publish(msg.reply, data)
                return
            stored = self.key_replies[key] = asyncio.get_running_loop().create_future()
        await self.pause()
        try:
            body = json.loads(msg.data)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            reply = command(body)
        except (ValueError, BadRequest, TypeError, KeyError, AttributeError) as exc:
            reply = {"ok": False, "error": f"bad_request: {exc}"}
        except Exception as exc:  # a bug must still answer, or retries would wait forever
            self.counts["handler_errors"] += 1
            reply = {"ok": False, "error": f"internal: {exc}"}
        data = json.dumps(reply).encode()
        if key is not None:
            self.key_applied[key] += 1
            stored.set_result(data)
        if not self.silent:
            await self.nc.publish(msg.reply, data)

    async def _stats(self, msg: Msg) -> None:
        if msg.reply and self.nc is not None and not self.silent:
            stats = {"seen": dict(self.key_seen), "applied": dict(self.key_applied)}
            await self.nc.publish(msg.reply, json.dumps(stats).encode())

    # -- noise ------------------------------------------------------------------------------

    async def heartbeat(self, every_s: float) -> None:
        """Liveness noise: carries a customer id shared by many orders, never a flow key."""
        started = time.monotonic()
        seq = 0
        while True:
            await asyncio.sleep(every_s)
            if self.silent or self.nc is None:
                continue
            seq += 1
            beat = {
                "service": self.name,
                "instance": f"{self.name}-1",
                "seq": seq,
                "uptime_s": round(time.monotonic() - started, 1),
                "inflight": len(self.tasks),
                "customer_id": self.last_customer,
            }
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(f"shop.heartbeat.{self.name}", json.dumps(beat).encode())


class PricingService(Service):
    """Plain request/reply: no headers either way, linked only through the reply inbox."""

    name = "pricing"

    def listeners(self) -> dict[str, Callable[[Msg], Awaitable[None]]]:
        return {"shop.pricing.quote": self._quote}

    async def _quote(self, msg: Msg) -> None:
        if self.silent or not msg.reply:
            self.counts["unanswered"] += 1
            return
        self.spawn(self._answer_quote(msg))

    async def _answer_quote(self, msg: Msg) -> None:
        assert self.nc is not None
        await self.pause()
        self.counts["quotes"] += 1
        try:
            items = json.loads(msg.data)["items"]
            reply = {"amount": catalog.quote(items), "currency": catalog.CURRENCY}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"bad_request: {exc}"}
        if not self.silent:
            await self.nc.publish(msg.reply, json.dumps(reply).encode())


@dataclass
class OrderState:
    plan: OrderPlan
    correlation_id: str
    outcome: str | None = None


class OrderService(Service):
    """Takes orders from the generator, places them, and closes them on the others' events."""

    name = "order"
    command_name = "order"
    style = Style(correlation=True)

    def __init__(self, shop: Shop) -> None:
        super().__init__(shop)
        self.orders: Memory = Memory()

    def reactions(self) -> dict[str, Callable[[Body, Cause], Awaitable[None]]]:
        return {
            "shop.payment.declined": self.on_declined,
            "shop.payment.refunded": self.on_refunded,
            "shop.shipment.created": self.on_shipment,
        }

    def commands(self) -> dict[str, Callable[[Body], Reply]]:
        return {"complete": self.complete}

    def complete(self, body: Body) -> Reply:
        need(body, "order_id")
        self.counts["completed_by_command"] += 1
        return {"ok": True}

    async def place(self, plan: OrderPlan) -> bool:
        """Quote the basket, then publish shop.order.placed; False when pricing never answers."""
        assert self.nc is not None
        quote_request = json.dumps({"order_id": plan.order_id, "items": plan.items}).encode()
        amount = None
        for _attempt in range(2):
            if self.silent:
                return False
            try:
                reply = await self.nc.request(
                    "shop.pricing.quote", quote_request, timeout=PRICING_TIMEOUT_S
                )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                self.counts["pricing_timeouts"] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                amount = float(json.loads(reply.data)["amount"])
            except (ValueError, KeyError, TypeError):
                self.counts["pricing_errors"] += 1
            break
        if amount is None:
            return False
        await self.pause()
        correlation_id = hex_id(8, "correlation", self.shop.knobs.seed, plan.order_id)
        self.orders.remember(plan.order_id, OrderState(plan, correlation_id))
        self.last_customer = plan.customer_id
        body = {
            "order_id": plan.order_id,
            "customer_id": plan.customer_id,
            "items": plan.items,
            "amount": amount,
            "currency": catalog.CURRENCY,
            "address": plan.address,
        }
        return await self.emit("shop.order.placed", body, plan.order_id, None, correlation_id)

    def _close(self, order_id: str, outcome: str) -> OrderState | None:
        state: OrderState | None = self.orders.get(order_id)
        if state is None or state.outcome is not None:
            return None  # not ours, or already closed: a late duplicate changes nothing
        state.outcome = outcome
        return state

    async def _cancel(self, body: Body, cause: Cause, outcome: str, reason: str) -> None:
        await self.pause()
        order_id = str(body.get("order_id"))
        state = self._close(order_id, outcome)
        if state is None:
            return
        out = {"order_id": order_id, "reason": reason}
        if await self.emit("shop.order.cancelled", out, order_id, cause, state.correlation_id):
            self.shop.record_outcome(state.plan, outcome)

    async def on_declined(self, body: Body, cause: Cause) -> None:
        await self._cancel(body, cause, "failed", "payment_declined")

    async def on_refunded(self, body: Body, cause: Cause) -> None:
        await self._cancel(body, cause, "compensated", str(body.get("reason", "refunded")))

    async def on_shipment(self, body: Body, cause: Cause) -> None:
        await self.pause()
        order_id = str(body.get("order_id"))
        state = self._close(order_id, "completed")
        if state is None:
            return
        out = {"order_id": order_id, "shipment_id": body.get("shipment_id")}
        if await self.emit("shop.order.completed", out, order_id, cause, state.correlation_id):
            self.shop.record_outcome(state.plan, "completed")


class PaymentService(Service):
    name = "payment"
    command_name = "payment"
    style = Style(cloudevents=True)

    def __init__(self, shop: Shop) -> None:
        super().__init__(shop)
        self.payments: Memory = Memory()  # payment_id -> {order_id, amount, status}
        self.by_order: Memory = Memory()  # order_id -> payment_id (choreography)
        self.attempts: Counter[str] = Counter()

    def reactions(self) -> dict[str, Callable[[Body, Cause], Awaitable[None]]]:
        return {"shop.order.placed": self.on_placed, "shop.stock.failed": self.on_stock_failed}

    def commands(self) -> dict[str, Callable[[Body], Reply]]:
        return {"authorize": self.authorize, "refund": self.refund}

    def authorize(self, body: Body) -> Reply:
        order_id, customer_id, amount = need(body, "order_id", "customer_id", "amount")
        self.last_customer = str(customer_id)
        if catalog.declines(float(amount)):
            self.counts["declined"] += 1
            return {"ok": False, "error": "declined"}
        # each application is a new authorization: that is what idempotency keys prevent
        self.attempts[str(order_id)] += 1
        payment_id = "pay-" + hex_id(
            6, self.shop.knobs.seed, order_id, self.attempts[str(order_id)]
        )
        self.payments.remember(payment_id, {"order_id": order_id, "amount": amount, "status": "ok"})
        self.counts["authorized"] += 1
        return {"ok": True, "payment_id": payment_id}

    def refund(self, body: Body) -> Reply:
        order_id, payment_id = need(body, "order_id", "payment_id")
        payment = self.payments.get(str(payment_id))
        if payment is None or payment["order_id"] != order_id:
            return {"ok": False, "error": "unknown_payment"}
        if payment["status"] != "refunded":
            payment["status"] = "refunded"
            self.counts["refunded"] += 1
        return {"ok": True}

    async def on_placed(self, body: Body, cause: Cause) -> None:
        await self.pause()
        order_id = str(body["order_id"])
        if order_id in self.by_order:
            return
        reply = self.authorize(body)
        self.by_order.remember(order_id, reply.get("payment_id"))
        amount = body["amount"]
        if reply["ok"]:
            out = {"order_id": order_id, "payment_id": reply["payment_id"], "amount": amount}
            await self.emit("shop.payment.authorized", out, order_id, cause)
        else:
            out = {"order_id": order_id, "reason": "card_limit", "amount": amount}
            await self.emit("shop.payment.declined", out, order_id, cause)

    async def on_stock_failed(self, body: Body, cause: Cause) -> None:
        await self.pause()
        order_id = str(body["order_id"])
        payment_id = self.by_order.get(order_id)
        if payment_id is None:
            return
        payment = self.payments[payment_id]
        if payment["status"] == "refunded":
            return
        self.refund({"order_id": order_id, "payment_id": payment_id})
        out = {
            "order_id": order_id,
            "payment_id": payment_id,
            "amount": payment["amount"],
            "reason": "out_of_stock",
        }
        await self.emit("shop.payment.refunded", out, order_id, cause)


class StockService(Service):
    name = "stock"
    command_name = "stock"
    style = Style(correlation=True)

    def __init__(self, shop: Shop) -> None:
        super().__init__(shop)
        self.placed = Projection()
        self.reservations: Memory = Memory()
        self.reserved_orders: Memory = Memory()
        self.attempts: Counter[str] = Counter()

    def reactions(self) -> dict[str, Callable[[Body, Cause], Awaitable[None]]]:
        return {"shop.order.placed": self.on_placed, "shop.payment.authorized": self.on_authorized}

    def commands(self) -> dict[str, Callable[[Body], Reply]]:
        return {"reserve": self.reserve, "release": self.release}

    def reserve(self, body: Body) -> Reply:
        order_id, items = need(body, "order_id", "items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise BadRequest("items must be a list of {sku, qty}")
        missing = catalog.missing_sku(items)
        if missing is not None:
            self.counts["out_of_stock"] += 1
            return {"ok": False, "error": "out_of_stock", "sku": missing}
        self.attempts[str(order_id)] += 1
        reservation_id = "res-" + hex_id(
            6, self.shop.knobs.seed, order_id, self.attempts[str(order_id)]
        )
        self.reservations.remember(reservation_id, {"order_id": order_id, "items": items})
        self.counts["reserved"] += 1
        return {"ok": True, "reservation_id": reservation_id}

    def release(self, body: Body) -> Reply:
        order_id, reservation_id = need(body, "order_id", "reservation_id")
        reservation = self.reservations.get(str(reservation_id))
        if reservation is None or reservation["order_id"] != order_id:
            return {"ok": False, "error": "unknown_reservation"}
        del self.reservations[str(reservation_id)]
        self.counts["released"] += 1
        return {"ok": True}

    async def on_placed(self, body: Body, cause: Cause) -> None:
        self.placed.add(str(body["order_id"]), (body["items"], cause.correlation_id))

    async def on_authorized(self, body: Body, cause: Cause) -> None:
        order_id = str(body["order_id"])
        placed = await self.placed.get(order_id)
        if placed is None or order_id in self.reserved_orders:
            return
        self.reserved_orders.remember(order_id, True)
        items, correlation_id = placed
        await self.pause()
        reply = self.reserve({"order_id": order_id, "items": items})
        if reply["ok"]:
            out = {"order_id": order_id, "reservation_id": reply["reservation_id"], "items": items}
            await self.emit("shop.stock.reserved", out, order_id, cause, correlation_id)
        else:
            out = {"order_id": order_id, "reason": "out_of_stock", "sku": reply["sku"]}
            await self.emit("shop.stock.failed", out, order_id, cause, correlation_id)


class ShippingService(Service):
    name = "shipping"
    command_name = "shipping"
    style = Style(cloudevents=True)
    CARRIERS = ("DHL", "PostNL", "UPS", "GLS")

    def __init__(self, shop: Shop) -> None:
        super().__init__(shop)
        self.placed = Projection()
        self.shipped: Memory = Memory()
        self.attempts: Counter[str] = Counter()

    def reactions(self) -> dict[str, Callable[[Body, Cause], Awaitable[None]]]:
        return {"shop.order.placed": self.on_placed, "shop.stock.reserved": self.on_reserved}

    def commands(self) -> dict[str, Callable[[Body], Reply]]:
        return {"create": self.create}

    def create(self, body: Body) -> Reply:
        order_id, _address = need(body, "order_id", "address")
        self.attempts[str(order_id)] += 1
        shipment_id = "shp-" + hex_id(
            6, self.shop.knobs.seed, order_id, self.attempts[str(order_id)]
        )
        self.counts["shipments"] += 1
        return {"ok": True, "shipment_id": shipment_id}

    async def on_placed(self, body: Body, cause: Cause) -> None:
        self.placed.add(str(body["order_id"]), body["address"])

    async def on_reserved(self, body: Body, cause: Cause) -> None:
        order_id = str(body["order_id"])
        address = await self.placed.get(order_id)
        if address is None or order_id in self.shipped:
            return
        self.shipped.remember(order_id, True)
        await self.pause()
        reply = self.create({"order_id": order_id, "address": address})
        carrier = self.CARRIERS[int(unit(self.shop.knobs.seed, order_id, "carrier") * 4)]
        out = {
            "shipment_id": reply["shipment_id"],
            "order_id": order_id,
            "carrier": carrier,
            "city": address.get("city") if isinstance(address, dict) else None,
        }
        await self.emit("shop.shipment.created", out, order_id, cause)


class NotificationService(Service):
    """Tells the customer; its event names only the shipment, so flows must bridge keys."""

    name = "notification"
    command_name = "notify"

    def reactions(self) -> dict[str, Callable[[Body, Cause], Awaitable[None]]]:
        return {"shop.order.completed": self.on_completed}

    def commands(self) -> dict[str, Callable[[Body], Reply]]:
        return {"send": self.send}

    def send(self, body: Body) -> Reply:
        need(body, "order_id", "message")
        self.counts["sent"] += 1
        return {"ok": True}

    async def on_completed(self, body: Body, cause: Cause) -> None:
        await self.pause()
        shipment_id = body.get("shipment_id")
        out = {"shipment_id": shipment_id, "channel": "email", "template": "order_shipped"}
        await self.emit("shop.notification.sent", out, str(body.get("order_id")), cause)
        self.counts["sent"] += 1


SERVICE_CLASSES: tuple[type[Service], ...] = (
    OrderService,
    PricingService,
    PaymentService,
    StockService,
    ShippingService,
    NotificationService,
)


class Shop:
    """All participants plus the order generator, in one asyncio loop."""

    def __init__(
        self,
        url: str,
        knobs: Knobs,
        *,
        latency: dict[str, Latency] | None = None,
        faults: Faults | None = None,
        heartbeat_s: float = 0.0,
        drain_s: float = 5.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.knobs = knobs
        self.latency = latency or dict(DEFAULT_LATENCY)
        self.faults = faults or Faults()
        self.heartbeat_s = heartbeat_s
        self.drain_s = drain_s
        self.connect_timeout_s = connect_timeout_s
        self.services = {cls.name: cls(self) for cls in SERVICE_CLASSES}
        self.order = self.services["order"]
        assert isinstance(self.order, OrderService)
        self.started = time.monotonic()
        self.placed: dict[str, OrderPlan] = {}
        self.not_placed: list[str] = []
        self.outcomes: dict[str, str] = {}
        self._progress = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    def is_silent(self, service: str) -> bool:
        after = self.faults.silent.get(service)
        return after is not None and time.monotonic() - self.started >= after

    def record_outcome(self, plan: OrderPlan, outcome: str) -> None:
        self.outcomes[plan.order_id] = outcome
        self._progress.set()

    async def start(self) -> None:
        """Connect every service; returns once all subscriptions are in place. When one
        cannot connect, the others are stopped and closed before its ConnectError is raised."""
        connect = ConnectOptions(servers=split_servers(self.url)).resolved()
        connecting = [
            asyncio.ensure_future(service.start(connect)) for service in self.services.values()
        ]
        try:
            await asyncio.gather(*connecting)
        except BaseException:
            # gather leaves the others running: one that failed while asyncio.run() was
            # cancelling it at exit got its traceback printed after the one-line error.
            for task in connecting:
                task.cancel()
            await asyncio.gather(*connecting, return_exceptions=True)
            await self.close()
            raise
        self.started = time.monotonic()
        if self.heartbeat_s > 0:
            for service in self.services.values():
                self._background.append(asyncio.create_task(service.heartbeat(self.heartbeat_s)))

    async def generate(self, stop: asyncio.Event) -> None:
        """Place orders at Poisson arrivals until --orders is reached or `stop` is set; orders
        already being placed finish, so none is half-placed."""
        order = self.services["order"]
        assert isinstance(order, OrderService)
        n = 0
        next_at = time.monotonic()
        placing: set[asyncio.Task[None]] = set()
        while self.knobs.orders is None or n < self.knobs.orders:
            n += 1
            next_at += arrival_gap(self.knobs, n)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            if stop.is_set():
                break
            task = asyncio.create_task(self._place(order, plan_order(self.knobs, n)))
            placing.add(task)
            task.add_done_callback(placing.discard)
        await asyncio.gather(*placing)

    async def _place(self, order: OrderService, plan: OrderPlan) -> None:
        if await order.place(plan):
            self.placed[plan.order_id] = plan
        else:
            self.not_placed.append(plan.order_id)
        self._progress.set()

    def unfinished(self) -> int:
        return sum(1 for order_id in self.placed if order_id not in self.outcomes)

    async def settle(self, within_s: float) -> None:
        """Wait until every placed order has an outcome, or `within_s` passes."""
        deadline = time.monotonic() + within_s
        while self.unfinished() and (left := deadline - time.monotonic()) > 0:
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)

    async def quiesce(self, within_s: float, quiet_s: float = 0.2) -> None:
        """Wait until no service has work in hand for a moment: the events that follow an
        outcome (a notification, a republished duplicate) still reach the bus."""
        deadline = time.monotonic() + within_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if any(service.tasks for service in self.services.values()):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return
            await asyncio.sleep(0.02)

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Start, generate until done or stopped, let in-flight orders settle, close."""
        await self.start()
        if on_ready is not None:
            on_ready()
        try:
            await self.generate(stop)
            await self.settle(self.drain_s)
            await self.quiesce(self.drain_s)
        finally:
            await self.close()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(service.close() for service in self.services.values()))

    def summary(self) -> dict[str, Any]:
        counts = Counter(self.outcomes.values())
        result: dict[str, Any] = {
            "seed": self.knobs.seed,
            "orders": {
                "placed": len(self.placed),
                "completed": counts["completed"],
                "failed": counts["failed"],
                "compensated": counts["compensated"],
                "unfinished": self.unfinished(),
                "not_placed": len(self.not_placed),
            },
            "silent": sorted(self.faults.silent),
            "duplicates_rate": self.faults.duplicates,
            "services": {name: dict(s.counts) for name, s in self.services.items()},
            "duration_s": round(time.monotonic() - self.started, 3),
        }
        if self.knobs.orders is not None:
            result["outcomes"] = {
                order_id: self.outcomes.get(order_id, "unfinished") for order_id in self.placed
            }
        return result


def describe(summary: dict[str, Any]) -> str:
    """The summary as a few lines for a person."""
    o = summary["orders"]
    lines = []
    if o["placed"] or o["not_placed"]:  # services alone place none: no line of zeros
        lines.append(
            f"{o['placed']} orders placed (seed {summary['seed']}): {o['completed']} completed, "
            f"{o['failed']} failed (declined), {o['compensated']} compensated (refunded), "
            f"{o['unfinished']} unfinished"
            + (f", {o['not_placed']} not placed (no price quote)" if o["not_placed"] else "")
        )
    services = summary["services"]
    dup_out = sum(s.get("duplicates_published", 0) for s in services.values())
    dup_in = sum(s.get("duplicates_ignored", 0) for s in services.values())
    if dup_out or dup_in:
        lines.append(f"duplicates: {dup_out} republished, {dup_in} ignored by consumers")
    commands = {n: s["commands"] for n, s in services.items() if s.get("commands")}
    if commands:
        lines.append("commands: " + ", ".join(f"{n} {c}" for n, c in commands.items()))
    if summary["silent"]:
        unanswered = sum(s.get("unanswered", 0) for s in services.values())
        lines.append(f"silent: {', '.join(summary['silent'])} ({unanswered} messages unanswered)")
    return "\n".join(lines) or "no orders placed, no commands answered"
