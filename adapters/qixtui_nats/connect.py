"""Connection options as a NATS user knows them (natscli's flags and contexts) -> nats.connect."""

from __future__ import annotations

import json
import os
import shlex
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

DEFAULT_URL = "nats://127.0.0.1:4222"
SCHEMES = ("nats", "tls", "ws", "wss")


class ConnectError(Exception):
    """Connecting failed in a way the user can fix; the message is one line."""


class TLSNotOffered(NatsError):
    """A nats-py error, so its connect and reconnect loops count it as one failed attempt
    (and go on to the next server, or try again later) instead of dying of it."""


class Client(NatsClient):
    """nats-py's client, except that once TLS was asked for (a tls:// URL, --tlsca,
    --tlscert) it takes TLS whenever the server offers it and never sends its CONNECT,
    credentials included, in the clear. nats-py upgrades only when the server requires
    TLS; natscli upgrades when it is offered and refuses a server without it."""

    def _tls_wanted(self) -> bool:
        """TLS asked for on a TCP connection (wss:// is the websocket's own TLS): by an
        option, or by any tls:// URL in the pool, as natscli does."""
        server = self._current_server
        if server is None or server.uri.scheme == "wss":
            return False
        return self.options.get("tls") is not None or any(
            srv.uri.scheme in ("tls", "wss") for srv in self._server_pool
        )

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        # Read before nats-py decides on TLS: offered (allow_non_tls) counts as required.
        if self._tls_wanted() and info.get("tls_available"):
            info["tls_required"] = True
        await super()._process_info(info, initial_connection)

    def _connect_command(self) -> bytes:
        server = self._current_server
        if server is not None and self._tls_wanted():
            writer = getattr(self._transport, "_io_writer", None)
            if writer is None or writer.get_extra_info("ssl_object") is None:
                url = redact_url(server.uri.geturl())
                why = (
                    "is plain WebSocket, never encrypted (use wss://)"
                    if server.uri.scheme == "ws"
                    else "does not offer TLS"
                )
                raise TLSNotOffered(f"TLS was asked for, but {url} {why}; nothing was sent")
        return super()._connect_command()


@dataclass
class ConnectOptions:
    servers: list[str] = field(default_factory=list)
    context: str | None = None
    creds: str | None = None
    nkey: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tlsca: str | None = None
    tlscert: str | None = None
    tlskey: str | None = None
    name: str = "qixtui"

    def resolved(self) -> ConnectOptions:
        """Fill what was not given from the natscli context, then NATS_URL, then the default."""
        opts = ConnectOptions(**self.__dict__)
        if opts.context:
            _apply_context(opts, load_context(opts.context))
        if not opts.servers:
            env_url = os.environ.get("NATS_URL")
            opts.servers = split_servers(env_url) if env_url else [DEFAULT_URL]
        if opts.user and opts.password is None:
            opts.password = os.environ.get("NATS_PASSWORD")
        for url in opts.servers:
            check_url(url)
        schemes = {urlsplit(url).scheme for url in opts.servers if "://" in url}
        if "ws" in schemes and (opts.tlsca or opts.tlscert or schemes & {"tls", "wss"}):
            # aiohttp sends a ws:// URL's user:password in its plain HTTP upgrade, before
            # any check on the connection could refuse it.
            raise ConnectError("TLS was asked for, but ws:// is never encrypted: use wss://")
        return opts

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for nats.connect (credentials included, so never log this)."""
        kw: dict[str, Any] = {"servers": self.servers, "name": self.name}
        if self.creds:
            _must_exist(self.creds, "credentials file")
            _need_nkeys("--creds")
            kw["user_credentials"] = self.creds
        if self.nkey:
            _must_exist(self.nkey, "nkey seed file")
            _need_nkeys("--nkey")
            kw["nkeys_seed"] = self.nkey
        if self.user:
            kw["user"] = self.user
            kw["password"] = self.password or ""
        if self.token:
            kw["token"] = self.token
        if self.tlsca or self.tlscert:
            kw["tls"] = self._tls_context()
        return kw

    def _tls_context(self) -> ssl.SSLContext:
        if self.tlscert and not self.tlskey:
            raise ConnectError("--tlscert needs --tlskey")
        for path, what in ((self.tlsca, "--tlsca"), (self.tlscert, "--tlscert"),
                           (self.tlskey, "--tlskey")):  # fmt: skip
            if path:
                _must_exist(path, f"{what} file")
        try:
            ctx = ssl.create_default_context(cafile=self.tlsca)
        except (ssl.SSLError, OSError) as exc:
            raise ConnectError(f"--tlsca {self.tlsca}: not a PEM CA certificate ({exc})") from None
        if self.tlscert:
            try:
                ctx.load_cert_chain(self.tlscert, self.tlskey)
            except (ssl.SSLError, OSError) as exc:
                raise ConnectError(
                    f"--tlscert {self.tlscert} / --tlskey {self.tlskey}: not a PEM certificate "
                    f"and its key ({exc})"
                ) from None
        return ctx

    def display_servers(self) -> str:
        """Server URLs with any user:password@ removed, safe for a file or a screen."""
        return ",".join(redact_url(u) for u in self.servers)

    def identity_flags(self) -> list[str]:
        """The flags for who connects and how (user, credential and TLS files), as a child
        command or a hint repeats them; passwords and tokens travel in the environment."""
        parts: list[str] = []
        for flag, value in (
            ("--creds", self.creds),
            ("--nkey", self.nkey),
            ("--user", self.user),
            ("--tlsca", self.tlsca),
            ("--tlscert", self.tlscert),
            ("--tlskey", self.tlskey),
        ):
            if value:
                parts += [flag, value]
        return parts

    def flags(self) -> str:
        """Command-line flags that reach this bus again, for a command the user is told to
        run next: no password or token (those come from the environment or a prompt)."""
        context = ["--context", self.context] if self.context else []
        return shlex.join(["-s", self.display_servers(), *context, *self.identity_flags()])


def check_url(url: str) -> None:
    """A server URL nats-py can use, or a ConnectError saying what is wrong with it."""
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        parts.port  # noqa: B018 - parsing the port is part of the check
    except ValueError as exc:
        raise ConnectError(f"not a server URL: {_strip_userinfo(url)} ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise ConnectError(
            f"not a server URL: {_strip_userinfo(url)} (the scheme is nats, tls, ws or wss)"
        )
    if not parts.hostname:
        raise ConnectError(f"not a server URL: {_strip_userinfo(url)} (no host)")


def _strip_userinfo(url: str) -> str:
    """A URL that may not even parse, without what comes before an @ (a password)."""
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def split_servers(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def redact_url(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address: without brackets the port would run into it
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def context_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nats" / "context"


def load_context(name: str) -> dict[str, Any]:
    path = context_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConnectError(f"nats context {name!r} not found ({path})") from None
    except (OSError, ValueError) as exc:
        raise ConnectError(f"nats context {name!r} unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ConnectError(f"nats context {name!r} is not a JSON object")
    return data


def _apply_context(opts: ConnectOptions, ctx: dict[str, Any]) -> None:
    if not opts.servers and ctx.get("url"):
        opts.servers = split_servers(str(ctx["url"]))
    for ours, theirs in [
        ("user", "user"),
        ("password", "password"),
        ("token", "token"),
        ("creds", "creds"),
        ("nkey", "nkey"),
        ("tlsca", "ca"),
        ("tlscert", "cert"),
        ("tlskey", "key"),
    ]:
        if getattr(opts, ours) is None and ctx.get(theirs):
            setattr(opts, ours, str(ctx[theirs]))


def _must_exist(path: str, what: str) -> None:
    if not Path(path).is_file():
        raise ConnectError(f"{what} not found: {path}")


def _need_nkeys(flag: str) -> None:
    try:
        import nkeys  # noqa: F401
    except ImportError:
        raise ConnectError(f"{flag} needs the nkeys package: pip install 'qixtui[nkeys]'") from None


def is_auth_error(exc: BaseException | None) -> bool:
    """nats-py reports a refused login as a plain Error carrying the server's text."""
    text = str(exc).lower() if exc is not None else ""
    return "authorization" in text or "authentication" in text


def describe_connect_error(exc: BaseException, servers: str) -> str:
    """One line for a failed connect, naming the cause a user can act on."""
    if isinstance(exc, ConnectError | TLSNotOffered):  # ours already say it
        return str(exc)
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if is_auth_error(exc):
        return f"authorization failed at {servers}: check user, password, token or credentials"
    if isinstance(exc, ssl.SSLError) or "ssl" in lowered or "tls" in lowered:
        return f"TLS failed at {servers}: {text}"
    return f"cannot connect to {servers}: {text}"
