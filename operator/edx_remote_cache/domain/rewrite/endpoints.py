"""Endpoint spellings as users type them and as memcached clients read them (pure; no YAML here)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

__all__ = [
    "DEFAULT_PORT",
    "RewriteError",
    "endpoint_key",
    "format_endpoint",
    "is_local",
    "is_local_endpoint",
    "local_endpoints",
    "normalize_targets",
    "parse_endpoint",
]

DEFAULT_PORT = 11211
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?")


class RewriteError(ValueError):
    """Input we refuse to rewrite; ``line`` (1-based) points at the offending YAML when there is one."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        self.problem = message
        super().__init__(f"line {line}: {message}" if line is not None else message)


def parse_endpoint(s: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port`` as typed by a user; the message says how to fix bad input."""
    if not isinstance(s, str):
        raise RewriteError(f"endpoint must be a string like 10.0.0.5:11211, got {s!r}")
    text = s.strip()
    if not text:
        raise RewriteError("empty endpoint: expected HOST:PORT such as 10.0.0.5:11211")
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\]:([0-9]+)", text)
        if not m:
            raise RewriteError(f"bad endpoint {s!r}: expected [IPv6]:PORT such as [::1]:11211")
        host, port_text = m.group(1), m.group(2)
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(host)
        except ValueError:
            raise RewriteError(f"bad endpoint {s!r}: {host!r} is not an IPv6 address") from None
    else:
        if "://" in text:
            raise RewriteError(f"bad endpoint {s!r}: expected HOST:PORT, not a URL")
        colons = text.count(":")
        if colons == 0:
            raise RewriteError(f"bad endpoint {s!r}: missing port, expected HOST:PORT such as {text}:11211")
        if colons > 1:
            raise RewriteError(f"bad endpoint {s!r}: write IPv6 addresses in brackets, e.g. [::1]:11211")
        host, port_text = text.split(":")
        if not _HOSTNAME.fullmatch(host):
            raise RewriteError(f"bad endpoint {s!r}: {host!r} is not a hostname or IPv4 address")
        if host.replace(".", "").isdigit():
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise RewriteError(f"bad endpoint {s!r}: {host!r} is not a valid IPv4 address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RewriteError(f"bad endpoint {s!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_endpoints(port: int = DEFAULT_PORT) -> frozenset[str]:
    """The spellings of "memcached on this machine" that a rewrite moves away from."""
    check_port(port)
    return frozenset({f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"::1:{port}"})


def is_local_endpoint(entry: str) -> bool:
    """True for one LOCATION entry naming memcached on this machine, as :func:`revert` may write it back.

    Any spelling a rewrite treats as local qualifies (``localhost``, ``127.0.0.1``, ``::1``, any port,
    python-memcached's ``inet:`` prefixes); surrounding blanks and lists (``;`` / ``,``) do not.
    """
    return isinstance(entry, str) and bool(entry) and entry == entry.strip() and is_local(entry)


def check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise RewriteError(f"port must be a number from 1 to 65535, got {port!r}")


def endpoint_key(entry: str) -> tuple[str, int] | str:
    """Compare entries as memcached clients would read them: case-blind host, default port 11211."""
    text = entry.strip()
    for prefix in ("inet6:", "inet:"):  # python-memcached spellings
        if text.startswith(prefix):
            text = text[len(prefix) :]
    try:
        host, port = parse_endpoint(text)
        return host.lower(), port
    except RewriteError:
        pass
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    candidates = [(text, DEFAULT_PORT)]
    if text.count(":") > 1:  # unbracketed v6 such as ::1:11211
        host, _, port_text = text.rpartition(":")
        if port_text.isdigit():
            candidates.insert(0, (host, int(port_text)))
    for host, port in candidates:
        try:
            return str(ipaddress.ip_address(host)), port
        except ValueError:
            continue
    if _HOSTNAME.fullmatch(text):
        return text.lower(), DEFAULT_PORT
    return text


def is_local(entry: str) -> bool:
    key = endpoint_key(entry)
    return isinstance(key, tuple) and key[0] in _LOCAL_HOSTS


def normalize_targets(values: Iterable[str] | str, what: str) -> tuple[str, ...]:
    items = (values,) if isinstance(values, str) else tuple(values)
    out: list[str] = []
    for item in items:
        try:
            endpoint = format_endpoint(*parse_endpoint(item))
        except RewriteError as exc:
            raise RewriteError(f"{what}: {exc}") from None
        if endpoint not in out:
            out.append(endpoint)
    return tuple(out)
