"""Low-level Linux network-namespace plumbing for the sandbox VPC: run a command in a namespace, make a socket in
one, and bridge a loopback TCP port from one namespace to another.

Why a socket bridge rather than a route: the emulators (moto, the Kubernetes API) listen on 127.0.0.1 in the
machine's own namespace, and a namespace cannot reach another namespace's loopback. A route between them would be
a route *out* of the sandbox, which the safety rule forbids. Instead the sandbox process opens a listening socket
*inside* the operator's namespace (a thread enters it with setns(2) just long enough to create the socket; a
socket keeps the namespace it was created in) and copies bytes to the emulator on the root namespace's loopback.
The same URL (``http://127.0.0.1:PORT``) then works in both namespaces, and the operator's namespace still has no
route to anything but the VPC.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["NETNS_DIR", "PortBridge", "SocketModule", "netns_path", "nsenter_argv", "run", "socket_in"]

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ROOT_NS_FD: int | None = None
_ROOT_LOCK = threading.Lock()


def netns_path(name: str) -> Path:
    """Where ``ip netns add NAME`` binds the namespace (what nsenter and setns open)."""
    return NETNS_DIR / name


def nsenter_argv(name: str | None) -> list[str]:
    """The prefix that runs a command in namespace ``name`` (nothing for the machine's own namespace)."""
    return [] if name is None else ["nsenter", f"--net={netns_path(name)}", "--"]


def run(
    argv: Sequence[str], *, netns: str | None = None, stdin: str | None = None, check: bool = True
) -> str:
    """Run an `ip`/`nft` command (in ``netns``); raise with its stderr if it fails."""
    done = subprocess.run(
        [*nsenter_argv(netns), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _root_fd() -> int:
    """A handle on the namespace this process started in, opened once (threads return to it after setns)."""
    global _ROOT_NS_FD
    with _ROOT_LOCK:
        if _ROOT_NS_FD is None:
            _ROOT_NS_FD = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        return _ROOT_NS_FD


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(
    name: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A new socket that lives in namespace ``name``: this thread enters it, creates the socket, and returns."""
    if name is None:
        return socket.socket(family, kind, proto)
    root = _root_fd()
    target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            return socket.socket(family, kind, proto)
        finally:
            _setns(root)
    finally:
        os.close(target)


class SocketModule:
    """A stand-in for the ``socket`` module whose sockets live in namespace ``name`` (pymemcache's
    ``socket_module=``): a client in this process that dials from inside the sandbox VPC."""

    def __init__(self, name: str) -> None:
        self.name = name

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        return socket_in(self.name, family, type, proto)

    def __getattr__(self, attr: str) -> object:
        return getattr(socket, attr)


class PortBridge:
    """Listen on 127.0.0.1:``port`` in namespace ``listen_ns`` and copy each connection to 127.0.0.1:``port``
    in ``connect_ns`` (None: the machine's own namespace). Only loopback is ever dialed."""

    def __init__(self, port: int, *, listen_ns: str | None, connect_ns: str | None) -> None:
        self.port = port
        self.listen_ns, self.connect_ns = listen_ns, connect_ns
        self._server = socket_in(listen_ns)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", port))
        self._server.listen(128)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"sandbox-bridge-{port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket_in(self.connect_ns)
        try:
            upstream.connect(("127.0.0.1", self.port))
        except OSError:
            upstream.close()
            client.close()
            return
        pump = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        pump.start()
        _pump(client, upstream)
        pump.join()
        for sock in (client, upstream):
            sock.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=2)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until EOF, then pass the half-close on (HTTP keep-alive clients rely on it)."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
