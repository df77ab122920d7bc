"""Cache hosts for the sandbox: a real memcached in the network namespace of every instance launched with the
operator's user-data (the host tools that SSM scripts call on any sandbox host are in host_tools.py).

When such an instance reaches ``running``, memcached starts inside the instance's namespace (sandbox/network.py)
from the /etc/memcached.conf that the user-data renders, with the IMDS lookup resolved to the instance's own
private IP: so it listens on ``-l <private IP> -p <conf port>`` exactly as on EC2, and only the instance's
security groups decide who reaches it. ``-P``/``-d`` are dropped (the sandbox supervises the process, as systemd
would) and ``-u`` is adapted; a flag memcached rejects fails the host as it would on EC2. While the process is
down, the private IP answers "connection refused", as the real host does.

The first boot is logged as EC2 would show it: the user-data's steps (cloud-init), memcached's own stderr and
systemd's verdict go to the instance's console output (served by GetConsoleOutput, sandbox/aws/console.py) and
the script's part to the host's /var/log/cloud-init-output.log. ``boot_fault`` breaks the next first boots the
way a runtime fault does on EC2 (BOOT_FAULTS): the port taken by another program, or no route to a package
mirror so memcached is never installed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edx_remote_cache.domain.userdata import (
    CONF_BEGIN,
    CONF_END,
    PRIVATE_IP_PLACEHOLDER,
    extract_memcached_conf,
    parse_memcached_conf,
)
from edx_remote_cache.sandbox.aws import AwsServer, decode_user_data
from edx_remote_cache.sandbox.netns import netns_path, nsenter_argv
from edx_remote_cache.sandbox.ssm_agent import HostRegistry, SandboxHost

__all__ = [
    "OWNER_ENV",
    "CacheHost",
    "CacheHostManager",
    "memcached_argv",
    "reap_orphans",
]

OWNER_ENV = "EDX_REMOTE_CACHE_SANDBOX_OWNER"  # marks processes the sandbox started, so orphans can be reaped
START_TIMEOUT = 5.0
BOOT_FAULTS = ("port-taken", "no-mirror")
_NO_UNIT = "Unit memcached.service not found."
_CLOUD_INIT = "Cloud-init v. 24.1.3-0ubuntu3.3"
_NO_MIRROR = (  # apt in a subnet with no route to the mirror (no NAT gateway), as Ubuntu 24.04 prints it
    "Err:1 http://us-east-1.ec2.archive.ubuntu.com/ubuntu noble InRelease",
    "  Could not connect to us-east-1.ec2.archive.ubuntu.com:80 (52.0.0.10), connection timed out",
    "W: Some index files failed to download. They have been ignored, or old ones used instead.",
    "E: Unable to locate package memcached",
    "E: Unable to locate package libmemcached-tools",
)
_SCRIPTS_FAILED = "cc_scripts_user.py[WARNING]: Failed to run module scripts_user (scripts in /var/lib/cloud/instance/scripts)"
# binds memcached's address without listening: memcached's own bind then fails, and a probe is refused
_SQUATTER = (
    "import socket, sys, time\ns = socket.socket()\ns.bind((sys.argv[1], int(sys.argv[2])))\n"
    "print('bound', flush=True)\ntime.sleep(1e9)\n"
)
_DROPPED = {"-P", "--pidfile", "-d", "--daemon"}


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def memcached_argv(conf: str, binary: str = "memcached") -> list[str]:
    """memcached's command line for ``conf`` as systemd would run it: the conf's flags, in the foreground."""
    argv = [binary]
    user: str | None = None
    for flag, value in parse_memcached_conf(conf):
        name = flag.split("=", 1)[0]
        if name in _DROPPED:
            continue
        if name in ("-u", "--user"):
            user = value if value is not None else flag.partition("=")[2] or None
            continue
        argv.append(flag)
        if value is not None:
            argv.append(value)
    if os.geteuid() == 0:
        # The Debian package creates "memcache" on the real host; stand in with root only if this machine lacks it.
        # Any other user is kept as is, so a user the real host would not have fails here too.
        user = user or "memcache"
        argv += ["-u", "root" if user == "memcache" and not _user_exists(user) else user]
    return argv


def conf_port(conf: str) -> int:
    """The port the host's memcached listens on, as its clients see it."""
    port = 11211
    for flag, value in parse_memcached_conf(conf):
        if flag in ("-p", "--port") and value and value.isdigit():
            port = int(value)
        elif flag.startswith("--port=") and flag[7:].isdigit():
            port = int(flag[7:])
    return port


def reap_orphans() -> list[int]:
    """Kill processes left by sandboxes whose Python process died (SIGKILL, crash); returns their pids."""
    killed: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        marker = f"{OWNER_ENV}=".encode()
        for item in environ.split(b"\0"):
            if item.startswith(marker):
                owner = item[len(marker) :].decode(errors="replace")
                if owner.isdigit() and int(owner) != me and not Path(f"/proc/{owner}").exists():
                    with contextlib.suppress(OSError):
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed.append(int(entry.name))
                break
    return killed


@dataclass
class CacheHost:
    """One cache host's memcached, as the sandbox runs it."""

    host: SandboxHost
    conf_port: int
    process: subprocess.Popen[bytes] | None = None
    state: str = "stopped"  # running | stopped | failed (as systemd would say: active / inactive / failed)
    failure: str | None = None
    enabled: bool = True
    instance_running: bool = False
    hung: bool = False
    fail_restarts: bool = False
    installed: bool = True  # False: apt never installed memcached (boot fault "no-mirror")
    console: list[str] = field(default_factory=list)  # what the instance printed at boot (GetConsoleOutput)
    squatter: subprocess.Popen[bytes] | None = None  # another program on memcached's port (boot fault)
    booted_at: float = field(default_factory=time.monotonic)

    def say(self, tag: str, text: str, *, log: bool = False) -> None:
        """A console line as the serial console shows it (``[ uptime] tag[pid]: text``); ``log`` also appends it
        to /var/log/cloud-init-output.log (the user-data script's own output)."""
        uptime = 5.0 + time.monotonic() - self.booted_at
        self.console.append(f"[{uptime:12.6f}] {tag}: {text}" if tag else text)
        if log:
            with open(self.host.var_log / "cloud-init-output.log", "a", encoding="utf-8") as out:
                out.write(text + "\n")

    @property
    def instance_id(self) -> str:
        return self.host.instance_id

    @property
    def endpoint(self) -> str:
        """What the operator dials: ``<private ip>:<conf port>``."""
        return f"{self.host.private_ip}:{self.conf_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    @property
    def conf_path(self) -> Path:
        """The host's /etc/memcached.conf (its /etc overlay's upper layer)."""
        return self.host.etc_upper / "memcached.conf"


class CacheHostManager:
    """Keeps one memcached per running cache host, driven by EC2 state and by the host's (fake) systemctl."""

    def __init__(
        self,
        aws: AwsServer,
        registry: HostRegistry,
        hosts_dir: Path,
        runtime_dir: Path,
        *,
        on_host: Callable[[SandboxHost], None] | None = None,
        memcached: str | None = None,
    ) -> None:
        self.aws = aws
        self.registry = registry
        self.hosts_dir = hosts_dir
        self.runtime_dir = runtime_dir
        self.on_host = on_host
        self.memcached = memcached or shutil.which("memcached") or "/usr/bin/memcached"
        self.hosts: dict[str, CacheHost] = {}
        self.boot_fault: str | None = None  # one of BOOT_FAULTS: applies to instances that boot from now on
        self._lock = threading.RLock()
        self._closed = False

    # -- EC2 state → processes --------------------------------------------------------------------------------------

    def sync(self, rebooted: tuple[str, ...] = (), networked: frozenset[str] | None = None) -> None:
        """Bring memcached processes in line with EC2: start on running, kill on stopped/terminated.

        ``networked``: the instances the VPC has given a namespace. An instance EC2 launched after the caller
        looked at the VPC (another RunInstances answered meanwhile) boots on its own hook's sync instead: booted
        now, it would have no network, memcached would fail to start, and the boot would look broken."""
        with self._lock:
            if self._closed:
                return
            for backend in self.aws.ec2_backends():
                for instance in backend.all_instances():
                    if (
                        networked is not None
                        and instance.id not in networked
                        and instance.id not in self.hosts
                    ):
                        continue
                    self._sync_instance(instance, backend.region_name, instance.id in rebooted)

    def _sync_instance(self, instance: Any, region: str, rebooted: bool) -> None:
        cache = self.hosts.get(instance.id)
        running = instance.state == "running"
        if cache is None:
            if not running:
                return
            conf = extract_memcached_conf(decode_user_data(instance.user_data) or "")
            if conf is None:
                return
            cache = self._register(instance, region, conf)
            cache.instance_running = True
            self._first_boot(cache)  # cloud-init: install, write the conf, enable, restart
            return
        if running and (not cache.instance_running or rebooted):
            if rebooted:
                self._stop(cache, state="stopped")
            cache.instance_running = True
            if cache.enabled:  # systemd starts an enabled memcached at boot, from the conf on disk
                self._start(cache, self._read_conf(cache))
        elif not running and cache.instance_running:
            cache.instance_running = False
            self._stop(cache, state="stopped")
            _end(cache.squatter)  # every program of the instance goes with it
            cache.squatter = None

    def _first_boot(self, cache: CacheHost) -> None:
        """The user-data at first boot, and what it prints: memcached's stderr and systemd's verdict included."""
        say = cache.say
        say("cloud-init[987]", f"{_CLOUD_INIT} running 'modules:final'. Up 9.80 seconds.", log=True)
        if self.boot_fault == "no-mirror":
            for line in _NO_MIRROR:
                say("cloud-init[987]", line, log=True)
            cache.installed = False
            self._fail(cache, _NO_UNIT)
            say("cloud-init[987]", _SCRIPTS_FAILED, log=True)
            return
        say("cloud-init[987]", "Setting up memcached (1.6.24-1build3) ...", log=True)
        if self.boot_fault == "port-taken":
            self._squat(cache)
        log_path = cache.host.dir / "memcached.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        if self._start(cache, self._read_conf(cache)):
            say("", "[  OK  ] Started memcached.service - memcached daemon.")
            say("cloud-init[987]", f"{_CLOUD_INIT} finished. Datasource DataSourceEc2Local.", log=True)
            return
        try:
            with open(log_path, "rb") as log:
                log.seek(offset)
                printed = log.read()[-4000:].decode(errors="replace").splitlines()
        except FileNotFoundError:  # memcached never ran: systemd's reason is all there is
            printed = [cache.failure or "memcached did not start"]
        for line in printed:
            if line.strip() and not line.startswith("--- "):
                say("memcached[1203]", line)
        say("", "[FAILED] Failed to start memcached.service - memcached daemon.")
        say("cloud-init[987]", _SCRIPTS_FAILED, log=True)

    def _squat(self, cache: CacheHost) -> None:
        """Another program binds memcached's address and port in the instance first (a runtime fault)."""
        if cache.host.netns is None:
            return
        process = subprocess.Popen(
            [*nsenter_argv(cache.host.netns), sys.executable, "-c", _SQUATTER,
             cache.host.private_ip, str(cache.conf_port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={OWNER_ENV: str(os.getpid()), "PATH": "/usr/bin:/bin"}, start_new_session=True,
        )  # fmt: skip
        assert process.stdout is not None
        process.stdout.readline()  # "bound" (or EOF if it could not: then memcached starts)
        cache.squatter = process

    def console_text(self, instance_id: str) -> str | None:
        """The instance's console output so far; None when it is not a cache host."""
        with self._lock:
            cache = self.hosts.get(instance_id)
            if cache is None:
                return None
            return "".join(line + "\n" for line in cache.console)

    def _register(self, instance: Any, region: str, conf: str) -> CacheHost:
        host = SandboxHost(
            instance_id=instance.id,
            kind="cache",
            private_ip=instance.private_ip,
            region=region,
            dir=self.hosts_dir / instance.id,
        )
        host.create_dirs()
        cache = CacheHost(host=host, conf_port=conf_port(conf))
        body = conf.replace(PRIVATE_IP_PLACEHOLDER, host.private_ip)
        cache.conf_path.write_text(f"{CONF_BEGIN}\n{body}{CONF_END}\n", encoding="utf-8")
        self.hosts[host.instance_id] = cache
        if self.on_host is not None:
            self.on_host(host)
        self.registry.add(host)
        return cache

    @staticmethod
    def _read_conf(cache: CacheHost) -> str | OSError:
        path = cache.conf_path if os.path.lexists(cache.conf_path) else Path("/etc/memcached.conf")
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return exc

    # -- processes --------------------------------------------------------------------------------------------------

    def _start(self, cache: CacheHost, conf: str | OSError) -> bool:
        """Start memcached (if not running) from ``conf``; on failure the host is ``failed`` with the reason."""
        if cache.process is not None and cache.process.poll() is None:
            return True
        if isinstance(conf, OSError):
            return self._fail(cache, f"cannot read /etc/memcached.conf: {conf.strerror or conf}")
        if not cache.installed:
            return self._fail(cache, _NO_UNIT)
        cache.conf_port = conf_port(conf)
        ok, detail = self._spawn(cache, conf)
        if not ok:
            return self._fail(cache, detail)
        cache.state, cache.failure, cache.hung = "running", None, False
        return True

    def _spawn(self, cache: CacheHost, conf: str) -> tuple[bool, str]:
        port_file = self.runtime_dir / f"{cache.instance_id}.port"
        port_file.unlink(missing_ok=True)
        argv = memcached_argv(conf, self.memcached)
        if cache.host.netns is None or not netns_path(cache.host.netns).exists():
            return False, f"{cache.instance_id} has no network interface in the sandbox VPC"
        log_path = cache.host.dir / "memcached.log"
        with open(log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            offset = log.tell()
            process = subprocess.Popen(
                [*nsenter_argv(cache.host.netns), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={
                    "MEMCACHED_PORT_FILENAME": str(port_file),
                    OWNER_ENV: str(os.getpid()),
                    "PATH": "/usr/bin:/bin",
                },
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False, f"memcached exited with {process.returncode}: {_tail(log_path, offset)}"
            if port_file.exists():
                for line in port_file.read_text(errors="replace").splitlines():
                    if line.startswith("TCP INET:"):
                        cache.process = process
                        return True, ""
            time.sleep(0.003)
        _terminate(process)
        return False, f"memcached did not listen within {START_TIMEOUT:.0f} s: {_tail(log_path, offset)}"

    def _fail(self, cache: CacheHost, reason: str) -> bool:
        cache.state, cache.failure = "failed", reason
        return False

    def _stop(self, cache: CacheHost, *, state: str) -> None:
        if cache.process is not None:
            _terminate(cache.process)
            cache.process = None
        cache.state, cache.hung = state, False

    def refresh(self) -> None:
        """Notice memcached processes that died on their own (systemd would report them failed)."""
        with self._lock:
            for cache in self.hosts.values():
                if cache.process is not None and cache.process.poll() is not None:
                    cache.failure = f"memcached exited with {cache.process.returncode}"
                    cache.process, cache.state = None, "failed"

    # -- systemctl on a cache host ----------------------------------------------------------------------------------

    def unit(self, instance_id: str, action: str, conf: str | OSError | None) -> tuple[int, str, str]:
        """``systemctl ACTION memcached`` on the host; ``conf`` is its /etc/memcached.conf as the script saw it."""
        self.refresh()
        with self._lock:
            cache = self.hosts[instance_id]
            text = conf if conf is not None else self._read_conf(cache)
            failed_job = (
                "Job for memcached.service failed because the control process exited with error code.\n"
                'See "systemctl status memcached.service" and "journalctl -xeu memcached.service" for details.\n'
            )
            if action in (
                "start",
                "restart",
                "try-restart",
                "reload-or-restart",
                "force-reload",
                "reload",
            ):
                if action == "try-restart" and cache.state != "running":
                    return 0, "", ""
                if not cache.installed:
                    return 5, "", f"Failed to {action} memcached.service: {_NO_UNIT}\n"
                if action != "start":
                    self._stop(cache, state="stopped")
                if cache.fail_restarts:
                    self._fail(cache, "restart failed (sandbox fault)")
                    return 1, "", failed_job
                # Type=simple: systemctl returns 0 once the process is forked, even if memcached dies at once
                self._start(cache, text)
                return 0, "", ""
            if action == "stop":
                self._stop(cache, state="stopped")
                return 0, "", ""
            if action == "enable":
                cache.enabled = True
                return 0, "", ""
            if action == "disable":
                cache.enabled = False
                return 0, "", ""
            if action == "is-enabled":
                return (0, "enabled\n", "") if cache.enabled else (1, "disabled\n", "")
            if action in ("is-active", "status"):
                word = {"running": "active", "stopped": "inactive", "failed": "failed"}[cache.state]
                rc = 0 if word == "active" else 3
                if action == "is-active":
                    return rc, word + "\n", ""
                text_status = f"● memcached.service - memcached daemon\n     Active: {word}\n"
                if cache.failure and word == "failed":
                    text_status += f"     Error: {cache.failure}\n"
                return rc, text_status, ""
            if action == "is-failed":
                return (0, "failed\n", "") if cache.state == "failed" else (1, "active\n", "")
            return 1, "", f"Unknown command verb {action}.\n"

    # -- faults -----------------------------------------------------------------------------------------------------

    def get(self, instance_id: str) -> CacheHost:
        with self._lock:
            if instance_id not in self.hosts:
                raise KeyError(f"{instance_id} is not a sandbox cache host (yet)")
            return self.hosts[instance_id]

    def kill(self, instance_id: str) -> None:
        """SIGKILL the host's memcached (systemd would then call the unit failed)."""
        with self._lock:
            cache = self.get(instance_id)
            if cache.process is None:
                raise RuntimeError(f"memcached on {instance_id} is not running")
            cache.process.send_signal(signal.SIGKILL)
            cache.process.wait()
            cache.failure = "memcached killed by SIGKILL (sandbox fault)"
            cache.process, cache.state, cache.hung = None, "failed", False

    def hang(self, instance_id: str) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered."""
        with self._lock:
            cache = self.get(instance_id)
            if cache.process is None:
                raise RuntimeError(f"memcached on {instance_id} is not running")
            cache.process.send_signal(signal.SIGSTOP)
            cache.hung = True

    def resume(self, instance_id: str) -> None:
        with self._lock:
            cache = self.get(instance_id)
            if cache.process is not None:
                cache.process.send_signal(signal.SIGCONT)
            cache.hung = False

    def set_fail_restarts(self, instance_id: str, fail: bool) -> None:
        with self._lock:
            self.get(instance_id).fail_restarts = fail

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for cache in self.hosts.values():
                if cache.process is not None:
                    _terminate(cache.process)
                    cache.process = None
                _end(cache.squatter)
                cache.squatter = None
                cache.state = "stopped"


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: memcached keeps nothing on disk, and its graceful SIGTERM exit takes ~0.7 s per restart."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def _end(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        _terminate(process)
        if process.stdout is not None:
            process.stdout.close()


def _tail(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            return log.read()[-2000:].decode(errors="replace").strip() or "(no output)"
    except OSError:
        return "(no log)"
