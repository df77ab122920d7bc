"""The one seam between an endpoint the operator knows (an EC2 private ``ip:port``) and the address it dials.

Production dials what it is given (:class:`IdentityResolver`). The sandbox runs every "cache host" as a
memcached on 127.0.0.1 and publishes a JSON map from EC2 endpoints to loopback addresses
(:class:`MapFileResolver`). Anything missing from that map raises :class:`UnmappedAddress` *before* a
socket exists, so a sandbox run can never reach out to a real 10.x / 172.31.x address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

__all__ = [
    "DEFAULT_PORT",
    "ENV_ADDRESS_MAP",
    "AddressResolver",
    "IdentityResolver",
    "InvalidEndpoint",
    "MapFileResolver",
    "UnmappedAddress",
    "format_endpoint",
    "is_loopback_host",
    "parse_endpoint",
    "resolver_from_env",
]

ENV_ADDRESS_MAP = "EDX_REMOTE_CACHE_ADDRESS_MAP"
DEFAULT_PORT = 11211
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class InvalidEndpoint(ValueError):
    """The endpoint is not ``host:port`` (or ``[v6]:port``); nothing was dialed."""


class UnmappedAddress(LookupError):
    """The endpoint has no entry in the address map, so it must not be dialed at all."""

    def __init__(self, endpoint: str, detail: str = "not in the address map") -> None:
        super().__init__(f"{endpoint}: {detail}")
        self.endpoint = endpoint


class AddressResolver(Protocol):
    """Turns an endpoint string into the (host, port) actually dialed."""

    def resolve(self, endpoint: str) -> tuple[str, int]: ...


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port``, ``[::1]:port`` or bare ``host`` (memcached's default port) → (host, port)."""
    text = endpoint.strip()
    if not text:
        raise InvalidEndpoint("empty endpoint")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidEndpoint(f"{endpoint!r}: expected [ipv6]:port")
        has_port, port_text = bool(rest), rest[1:]
    elif text.count(":") > 1:  # bare IPv6 without brackets: no port
        host, has_port, port_text = text, False, ""
    else:
        host, colon, port_text = text.partition(":")
        has_port = bool(colon)
    if not host:
        raise InvalidEndpoint(f"{endpoint!r}: missing host")
    if not has_port:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidEndpoint(f"{endpoint!r}: port must be 1-65535")
    return host, int(port_text)


def format_endpoint(host: str, port: int) -> str:
    """Canonical ``host:port`` (brackets for IPv6), the form used as address-map keys."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual localhost names."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class IdentityResolver:
    """Production: dial exactly the endpoint we were given."""

    def resolve(self, endpoint: str) -> tuple[str, int]:
        return parse_endpoint(endpoint)

    def __repr__(self) -> str:
        return "IdentityResolver()"


class MapFileResolver:
    """Sandbox: look endpoints up in a JSON file ``{"10.0.1.5:11211": "127.0.0.1:40123", ...}``.

    The file is re-read whenever its (inode, mtime, size) changes, because the sandbox rewrites it as
    cache hosts start and stop. A missing file is an empty map. A file that does not parse (caught
    mid-write) keeps the last good map and is retried on the next call. Targets must be loopback unless
    ``allow_non_loopback`` is set: the map exists precisely so nothing else gets dialed.
    Thread-safe: probes resolve from worker threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_non_loopback: bool = False) -> None:
        self.path = Path(path)
        self.allow_non_loopback = allow_non_loopback
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._map: dict[str, tuple[str, int]] = {}

    def resolve(self, endpoint: str) -> tuple[str, int]:
        host, port = parse_endpoint(endpoint)
        key = format_endpoint(host, port)
        mapping = self._current()
        target = mapping.get(key)
        if target is None:
            raise UnmappedAddress(endpoint, f"not in the address map {self.path}")
        if not self.allow_non_loopback and not is_loopback_host(target[0]):
            raise UnmappedAddress(endpoint, f"maps to non-loopback {format_endpoint(*target)}; refusing")
        return target

    def snapshot(self) -> dict[str, str]:
        """The current map as ``{endpoint: "host:port"}`` (re-read if the file changed)."""
        return {k: format_endpoint(*v) for k, v in self._current().items()}

    def _current(self) -> Mapping[str, tuple[str, int]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            with self._lock:
                self._signature, self._map = None, {}
            return self._map
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if signature != self._signature:
                parsed = self._load()
                if parsed is not None:
                    self._signature, self._map = signature, parsed
            return self._map

    def _load(self) -> dict[str, tuple[str, int]] | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # half-written or vanished between stat and read: keep the last good map
        if not isinstance(raw, dict):
            return None
        parsed: dict[str, tuple[str, int]] = {}
        for source, target in raw.items():
            if not isinstance(source, str) or not isinstance(target, str):
                continue
            try:
                parsed[format_endpoint(*parse_endpoint(source))] = parse_endpoint(target)
            except InvalidEndpoint:
                continue  # a bad entry stays unmapped rather than poisoning the rest
        return parsed

    def __repr__(self) -> str:
        return f"MapFileResolver({str(self.path)!r})"


def resolver_from_env(environ: Mapping[str, str] = os.environ) -> AddressResolver:
    """``$EDX_REMOTE_CACHE_ADDRESS_MAP`` set → :class:`MapFileResolver` on that file, else identity."""
    path = environ.get(ENV_ADDRESS_MAP, "").strip()
    if path:
        return MapFileResolver(path)
    return IdentityResolver()
