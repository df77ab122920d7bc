"""A sandbox host as SSM sees it, and how its scripts really run: in the host's network namespace, inside
``unshare --mount --pid`` with its root at ``/edx`` and a per-host ``/etc`` overlay (see the package docstring).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TIMED_OUT_EXIT = 137  # the agent's "stopped preemptively" code: 128 + SIGKILL
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin"

_SETUP = r"""set -e
mount --bind "$1" /edx
mount -t overlay sandbox-etc -o "lowerdir=/etc,upperdir=$2,workdir=$3" /etc
if [ -d "$6" ]; then mount --bind "$6" /var/log; fi
cd "$4"
set +e
exec /bin/bash "$5"
"""


class SandboxSetupError(RuntimeError):
    """The machine cannot run sandbox scripts in a namespace; the message says what to do."""


@dataclass
class SandboxHost:
    """One sandbox machine: an EC2 instance id, its private IP and the directories that stand for its disk."""

    instance_id: str
    kind: str  # "edx" or "cache"
    private_ip: str
    region: str
    dir: Path
    agent_online: bool = True
    offline_since: float | None = None
    registered: float = field(default_factory=time.time)
    ssm_visible_at: float = 0.0  # time.monotonic() from which the agent is registered with SSM
    netns: str | None = None  # its network namespace in the sandbox VPC (sandbox/network.py)

    @property
    def root(self) -> Path:
        """What the host sees as /edx."""
        return self.dir / "root"

    @property
    def bin_dir(self) -> Path:
        """Fake curl/systemctl, first on the agent's PATH."""
        return self.dir / "bin"

    @property
    def etc_upper(self) -> Path:
        """The host's own changes to /etc (overlay upper dir): e.g. its memcached.conf."""
        return self.dir / "etc" / "upper"

    @property
    def etc_work(self) -> Path:
        return self.dir / "etc" / "work"

    @property
    def ssm_dir(self) -> Path:
        return self.dir / "ssm"

    @property
    def var_log(self) -> Path:
        """What the host's scripts see as /var/log (e.g. a cache host's cloud-init-output.log)."""
        return self.dir / "var-log"

    def create_dirs(self) -> None:
        for path in (self.root, self.bin_dir, self.etc_upper, self.etc_work, self.ssm_dir, self.var_log):
            path.mkdir(parents=True, exist_ok=True)

    @property
    def hostname(self) -> str:
        return "ip-" + self.private_ip.replace(".", "-")


class HostRegistry:
    """The sandbox hosts by instance id (thread-safe); EC2 state comes from moto via ``instance_state``."""

    def __init__(
        self, instance_state: Callable[[str], str | None], instance_tags: Callable[[str], dict[str, str]]
    ):
        self._hosts: dict[str, SandboxHost] = {}
        self._lock = threading.Lock()
        self.instance_state = instance_state
        self.instance_tags = instance_tags

    def add(self, host: SandboxHost) -> None:
        with self._lock:
            self._hosts[host.instance_id] = host

    def get(self, instance_id: str) -> SandboxHost | None:
        with self._lock:
            return self._hosts.get(instance_id)

    def all(self) -> list[SandboxHost]:
        with self._lock:
            return list(self._hosts.values())

    def reachable(self, host: SandboxHost) -> bool:
        """The agent can take commands: it is online and its instance runs."""
        return host.agent_online and self.instance_state(host.instance_id) == "running"


@dataclass
class ScriptResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    cancelled: bool = False


class NamespaceRunner:
    """Runs a host's script in its own mount + network + pid namespace (see the package docstring)."""

    def __init__(self) -> None:
        self.argv = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
        if os.geteuid() != 0:
            self.argv.insert(1, "--map-root-user")
        if shutil.which("setpriv"):  # if this Python process dies, its scripts die too (via --kill-child)
            self.argv = ["setpriv", "--pdeathsig", "KILL", "--", *self.argv]

    def prepare(self) -> None:
        """Make sure /edx exists as a mount point and a trivial script runs; raise loudly if not."""
        if shutil.which("unshare") is None:
            raise SandboxSetupError("the sandbox needs util-linux's `unshare`: apt-get install util-linux")
        edx = Path("/edx")
        if not edx.is_dir():
            try:
                edx.mkdir(mode=0o755)
            except OSError as exc:
                raise SandboxSetupError(
                    "the sandbox bind-mounts each host's root at /edx inside a private mount namespace, so the "
                    f"directory /edx must exist (it stays empty): run `sudo mkdir /edx` ({exc})"
                ) from exc

    def check(self, host: SandboxHost) -> None:
        result = self.run(host, "echo sandbox-ok\n", timeout=10)
        if result.exit_code != 0 or result.stdout.strip() != "sandbox-ok":
            hint = (
                "run as root, or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
                if os.geteuid() != 0
                else "the kernel must allow mount/net/pid namespaces and overlayfs"
            )
            raise SandboxSetupError(
                f"cannot run sandbox scripts with `{' '.join(self.argv)}`: exit {result.exit_code}, "
                f"stderr {result.stderr.strip()!r}; {hint}"
            )

    def run(
        self,
        host: SandboxHost,
        script: str,
        *,
        timeout: float,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
        on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
        cwd: str | None = None,
    ) -> ScriptResult:
        """Run ``script`` as the host's agent would; ``cwd`` is a path as the host sees it (default: the run dir)."""
        run_dir = workdir or host.ssm_dir / f"adhoc-{uuid.uuid4()}"
        run_dir.mkdir(parents=True, exist_ok=True)
        script_path = run_dir / "_script.sh"
        script_path.write_text(script, encoding="utf-8")
        argv = [*self.argv, "--", "/bin/bash", "-c", _SETUP, "sandbox-setup"]
        if host.netns is not None:  # the host's own network instead of none
            argv = ["nsenter", f"--net=/run/netns/{host.netns}", "--", *(a for a in argv if a != "--net")]
        argv += [
            str(host.root),
            str(host.etc_upper),
            str(host.etc_work),
            cwd or str(run_dir),
            str(script_path),
            str(host.var_log),
        ]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else self.agent_env(host),
            cwd=str(run_dir),
            start_new_session=True,
        )
        if on_start is not None:
            on_start(process)
        deadline = time.monotonic() + timeout
        timed_out = cancelled = False
        out = err = b""
        while True:
            try:
                out, err = process.communicate(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                elif time.monotonic() >= deadline:
                    timed_out = True
                else:
                    continue
                _kill_group(process)
                out, err = process.communicate()
                break
        (run_dir / "stdout").write_bytes(out)
        (run_dir / "stderr").write_bytes(err)
        code = TIMED_OUT_EXIT if timed_out else process.returncode
        return ScriptResult(
            exit_code=code,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            timed_out=timed_out,
            cancelled=cancelled,
        )

    @staticmethod
    def agent_env(host: SandboxHost) -> dict[str, str]:
        """The agent's own environment: not the sandbox's (no AWS_ENDPOINT_URL and such leak into scripts)."""
        return {
            "PATH": f"{host.bin_dir}:{SYSTEM_PATH}",
            "LANG": "C.UTF-8",
            "AWS_SSM_INSTANCE_ID": host.instance_id,
            "AWS_SSM_REGION_NAME": host.region,
        }


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL unshare's process group: --kill-child then takes the namespace's init, and with it everything."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
