"""Connection options as a NATS user knows them (natscli's flags and contexts) -> nats.connect."""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "nats://127.0.0.1:4222"


class ConnectError(Exception):
    """Connecting failed in a way the user can fix; the message is one line."""


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
            ctx = (
                ssl.create_default_context(cafile=self.tlsca)
                if self.tlsca
                else (ssl.create_default_context())
            )
            if self.tlscert:
                if not self.tlskey:
                    raise ConnectError("--tlscert needs --tlskey")
                ctx.load_cert_chain(self.tlscert, self.tlskey)
            kw["tls"] = ctx
        return kw

    def display_servers(self) -> str:
        """Server URLs with any user:password@ removed, safe for a file or a screen."""
        return ",".join(redact_url(u) for u in self.servers)


def split_servers(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def redact_url(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or ""
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
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if is_auth_error(exc):
        return f"authorization failed at {servers}: check user, password, token or credentials"
    if isinstance(exc, ssl.SSLError) or "ssl" in lowered or "tls" in lowered:
        return f"TLS failed at {servers}: {text}"
    return f"cannot connect to {servers}: {text}"
