"""Host tools for every sandbox host: a fake ``curl`` (the instance metadata service, IMDSv2), a fake
``systemctl`` and a fake ``journalctl`` (memcached's unit log), written first on the host's SSM agent PATH, and
the control socket that systemctl talks to.

On cache hosts ``systemctl ... memcached`` acts on the real memcached (:mod:`.cache_hosts`); other units
are just state.
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edx_remote_cache.sandbox.cache_hosts import CacheHostManager
from edx_remote_cache.sandbox.ssm_agent import HostRegistry, SandboxHost

__all__ = ["ControlServer", "Systemctl", "write_host_tools"]

_CURL = r"""#!/bin/bash
# Sandbox stand-in for curl on @IID@: answers the EC2 instance metadata service (IMDSv2) for this host;
# anything else fails as it would with no network. (A real curl is at /usr/bin/curl, and cannot connect either.)
method=GET; url=""; token=""; fail=0; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -X|--request) method=$2; shift 2 ;;
    -H|--header) case "$2" in [Xx]-aws-ec2-metadata-token:*) token=${2#*:}; token=${token# } ;; esac; shift 2 ;;
    -o|--output) out=$2; shift 2 ;;
    -d|--data|--data-raw|--data-binary|-m|--max-time|--connect-timeout|--retry|--retry-delay|-w|--write-out|\
-u|--user|-A|--user-agent|-e|--referer|-x|--proxy|--resolve|--cacert|-E|--cert|-b|--cookie|-c|--cookie-jar) shift 2 ;;
    --fail|-f) fail=1; shift ;;
    --*) shift ;;
    -*) case "$1" in *f*) fail=1 ;; esac; shift ;;
    *) url=$1; shift ;;
  esac
done
emit() { if [ -n "$out" ]; then printf '%s' "$1" > "$out"; else printf '%s' "$1"; fi; }
case "$url" in
  http://169.254.169.254/*|http://169.254.169.254) ;;
  *)
    host=${url#*://}; host=${host%%/*}; host=${host%%:*}
    case "$host" in
      [0-9]*.[0-9]*.[0-9]*.[0-9]*) echo "curl: (7) Failed to connect to $host port 80 after 0 ms: Network is unreachable" >&2; exit 7 ;;
      *) echo "curl: (6) Could not resolve host: $host" >&2; exit 6 ;;
    esac ;;
esac
path=${url#http://169.254.169.254}
if [ "$path" = /latest/api/token ]; then
  if [ "$method" != PUT ]; then emit "Method Not Allowed"; [ $fail = 1 ] && exit 22; exit 0; fi
  emit "@TOKEN@"; exit 0
fi
if [ "$token" != "@TOKEN@" ]; then
  [ $fail = 1 ] && { echo "curl: (22) The requested URL returned error: 401" >&2; exit 22; }
  emit "<?xml version=\"1.0\"?><html><head><title>401 - Unauthorized</title></head></html>"; exit 0
fi
case "$path" in
  /latest/meta-data/local-ipv4) emit "@IP@" ;;
  /latest/meta-data/instance-id) emit "@IID@" ;;
  /latest/meta-data/local-hostname|/latest/meta-data/hostname) emit "@HOSTNAME@.ec2.internal" ;;
  /latest/meta-data/placement/region) emit "@REGION@" ;;
  /latest/meta-data/placement/availability-zone) emit "@REGION@a" ;;
  *) [ $fail = 1 ] && { echo "curl: (22) The requested URL returned error: 404" >&2; exit 22; }
     emit "<?xml version=\"1.0\"?><html><head><title>404 - Not Found</title></head></html>" ;;
esac
"""

_JOURNALCTL = r"""#!/bin/bash
# Sandbox stand-in for journalctl on @IID@: memcached's unit log is what the sandbox's memcached printed.
unit=""; lines=10
while [ $# -gt 0 ]; do
  case "$1" in
    -u|--unit) unit=$2; shift 2 ;;
    -n|--lines) lines=$2; shift 2 ;;
    --unit=*) unit=${1#*=}; shift ;;
    --lines=*) lines=${1#*=}; shift ;;
    *) shift ;;
  esac
done
case "$unit" in memcached|memcached.service) ;; *) echo "-- No entries --"; exit 0 ;; esac
if [ ! -s "@LOG@" ]; then echo "-- No entries --"; exit 0; fi
grep -v '^--- ' "@LOG@" | tail -n "$lines" | sed "s/^/$(date '+%b %d %H:%M:%S') @HOSTNAME@ memcached[1]: /"
"""

_SYSTEMCTL = r'''#!@PYTHON@ -IS
"""Sandbox stand-in for systemctl on @IID@: asks the sandbox to act on this host's units."""
import json
import socket
import sys


def main() -> int:
    conf, conf_error = None, None
    try:
        with open("/etc/memcached.conf", encoding="utf-8", errors="replace") as handle:
            conf = handle.read()
    except OSError as exc:
        conf_error = f"{exc.strerror}: /etc/memcached.conf"
    request = {"host": "@IID@", "args": sys.argv[1:], "conf": conf, "conf_error": conf_error}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect("@SOCKET@")
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        reply = json.loads(data)
    except (OSError, ValueError) as exc:
        print(f"System has not been booted with systemd as init system (PID 1). Can't operate. ({exc})", file=sys.stderr)
        return 1
    sys.stdout.write(reply.get("stdout", ""))
    sys.stderr.write(reply.get("stderr", ""))
    return int(reply.get("rc", 1))


sys.exit(main())
'''


def write_host_tools(host: SandboxHost, control_socket: Path) -> None:
    """The host's fake curl (IMDS answers), systemctl (via the control socket) and journalctl, first on its PATH."""
    host.bin_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "@IID@": host.instance_id,
        "@IP@": host.private_ip,
        "@HOSTNAME@": host.hostname,
        "@REGION@": host.region,
        "@TOKEN@": f"AQAEA-sandbox-imds-token-{host.instance_id}",
        "@SOCKET@": str(control_socket),
        "@PYTHON@": sys.executable,
        "@LOG@": str(host.dir / "memcached.log"),
    }
    for name, template in (("curl", _CURL), ("systemctl", _SYSTEMCTL), ("journalctl", _JOURNALCTL)):
        text = template
        for key, value in values.items():
            text = text.replace(key, value)
        path = host.bin_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)


@dataclass
class _Unit:
    active: bool = True
    enabled: bool = True


class Systemctl:
    """What ``systemctl`` does on a sandbox host: memcached on cache hosts is real; other units are just state."""

    OPTIONS_WITH_VALUE = {
        "-t",
        "--type",
        "-p",
        "--property",
        "-H",
        "--host",
        "-M",
        "--machine",
        "-n",
        "--lines",
    }

    def __init__(self, registry: HostRegistry, caches: CacheHostManager) -> None:
        self.registry = registry
        self.caches = caches
        self._units: dict[str, dict[str, _Unit]] = {}
        self._lock = threading.Lock()

    def _edx_units(self, instance_id: str) -> dict[str, _Unit]:
        # An Open edX native host runs these; memcached is the local cache the operator may disable.
        with self._lock:
            return self._units.setdefault(
                instance_id,
                {
                    name: _Unit()
                    for name in ("memcached", "supervisor", "nginx", "mysql", "mongod", "rabbitmq-server")
                },
            )

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        instance_id = str(request.get("host", ""))
        args = [str(a) for a in request.get("args", [])]
        rc, out, err = self._run(instance_id, args, request.get("conf"), request.get("conf_error"))
        host = self.registry.get(instance_id)
        if host is not None:
            with open(host.dir / "systemctl.log", "a", encoding="utf-8") as log:
                log.write(json.dumps({"time": time.time(), "args": args, "rc": rc}) + "\n")
        return {"rc": rc, "stdout": out, "stderr": err}

    def _run(
        self, instance_id: str, args: list[str], conf: str | None, conf_error: str | None
    ) -> tuple[int, str, str]:
        host = self.registry.get(instance_id)
        if host is None:
            return 1, "", "Failed to connect to bus: No such file or directory\n"
        words, quiet, now = [], False, False
        skip = False
        for arg in args:
            if skip:
                skip = False
            elif arg in self.OPTIONS_WITH_VALUE:
                skip = True
            elif arg in ("-q", "--quiet"):
                quiet = True
            elif arg == "--now":
                now = True
            elif not arg.startswith("-"):
                words.append(arg)
        if not words:
            return 0, "", ""
        verb, units = words[0], [u.removesuffix(".service") for u in words[1:]]
        if verb == "daemon-reload":
            return 0, "", ""
        if not units:
            return 1, "", f"Too few arguments for {verb}.\n"
        rc, out, err = 0, "", ""
        for unit in units:
            actions = [verb]
            if now and verb in ("enable", "disable"):
                actions.append("start" if verb == "enable" else "stop")
            for action in actions:
                code, o, e = self._unit(host, unit, action, conf, conf_error)
                rc, out, err = max(rc, code), out + ("" if quiet else o), err + e
        return rc, out, err

    def _unit(
        self, host: SandboxHost, unit: str, action: str, conf: str | None, conf_error: str | None
    ) -> tuple[int, str, str]:
        if host.kind == "cache" and unit == "memcached":
            text: str | OSError | None = OSError(conf_error) if conf_error else conf
            return self.caches.unit(host.instance_id, action, text)
        units = self._edx_units(host.instance_id) if host.kind == "edx" else {}
        state = units.get(unit)
        if state is None:
            if action in ("is-active", "status"):
                return (
                    3 if action == "is-active" else 4,
                    "inactive\n" if action == "is-active" else "",
                    (f"Unit {unit}.service could not be found.\n" if action == "status" else ""),
                )
            if action in ("enable", "disable", "is-enabled"):
                return 1, "", f"Failed to {action} unit: Unit file {unit}.service does not exist.\n"
            return 5, "", f"Failed to {action} {unit}.service: Unit {unit}.service not found.\n"
        if action in ("start", "restart", "try-restart", "reload", "reload-or-restart"):
            state.active = True
        elif action == "stop":
            state.active = False
        elif action == "enable":
            state.enabled = True
        elif action == "disable":
            state.enabled = False
        elif action == "is-active":
            return (0, "active\n", "") if state.active else (3, "inactive\n", "")
        elif action == "is-enabled":
            return (0, "enabled\n", "") if state.enabled else (1, "disabled\n", "")
        elif action == "status":
            word = "active (running)" if state.active else "inactive (dead)"
            return (0 if state.active else 3), f"● {unit}.service\n     Active: {word}\n", ""
        elif action in ("mask", "unmask"):
            return 0, "", ""
        else:
            return 1, "", f"Unknown command verb {action}.\n"
        return 0, "", ""

    def unit_state(self, instance_id: str, unit: str) -> tuple[bool, bool] | None:
        """(active, enabled) of a non-memcached-cache unit, for tests."""
        state = self._edx_units(instance_id).get(unit)
        return None if state is None else (state.active, state.enabled)


class ControlServer:
    """A unix socket on which the hosts' fake systemctl reaches the sandbox (it works across net namespaces)."""

    def __init__(self, path: Path, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = path
        self.handler = handler
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        handler = self.handler

        class Handle(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    request = json.loads(self.rfile.readline() or b"{}")
                    reply = handler(request)
                except Exception as exc:  # the script gets an error, the sandbox keeps serving
                    reply = {"rc": 1, "stdout": "", "stderr": f"sandbox systemctl error: {exc!r}\n"}
                with contextlib.suppress(OSError):  # the script was killed (timeout, teardown) meanwhile
                    self.wfile.write(json.dumps(reply).encode())

        self.path.unlink(missing_ok=True)
        server = socketserver.ThreadingUnixStreamServer(str(self.path), Handle)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox-control", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.path.unlink(missing_ok=True)
