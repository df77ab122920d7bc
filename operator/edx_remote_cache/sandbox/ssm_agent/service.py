"""SSM Run Command for the sandbox: the API moto lacks, and an agent per host that really runs the scripts.

Moto's SendCommand answers Success and runs nothing; DescribeInstanceInformation and ListCommandInvocations are
not implemented. Here a command sent to a sandbox host is queued for that host's agent (a worker thread) and
run exactly as sent, as one bash script (the ``commands`` lines joined by newlines), in the host's network
namespace of the sandbox VPC (``nsenter --net``; a host without one gets no network at all) and inside
``unshare --mount --pid``: the host's sandbox root is bind-mounted at ``/edx``, ``/etc`` is a per-host
overlay (so the script can rewrite ``/etc/memcached.conf`` and never touches the real one), and every process
the script leaves behind dies with it. The host's fake
``curl``/``systemctl`` come first on the agent's PATH, as a real agent has its own environment.

Statuses, truncation (24,000/8,000 characters), the 137 exit code of an execution timeout and the
"failed to run commands: exit status N" line follow the real agent. GetCommandInvocation answers
``InvocationDoesNotExist`` for ``invocation_delay`` seconds after SendCommand, as real SSM does.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edx_remote_cache.sandbox.aws import ApiError, AwsFrontend, Request, Response, json_response

__all__ = [
    "AGENT_VERSION",
    "HostRegistry",
    "NamespaceRunner",
    "SandboxHost",
    "SandboxSetupError",
    "ScriptResult",
    "SsmService",
]

AGENT_VERSION = "3.3.40.0"
STDOUT_LIMIT = 24_000
STDERR_LIMIT = 8_000
PLUGIN_OUTPUT_LIMIT = 2_500
PLUGIN_NAME = "aws:runShellScript"
DOCUMENT = "AWS-RunShellScript"
TIMED_OUT_EXIT = 137  # the agent's "stopped preemptively" code: 128 + SIGKILL
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}

_SETUP = r"""set -e
mount --bind "$1" /edx
mount -t overlay sandbox-etc -o "lowerdir=/etc,upperdir=$2,workdir=$3" /etc
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

    def create_dirs(self) -> None:
        for path in (self.root, self.bin_dir, self.etc_upper, self.etc_work, self.ssm_dir):
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
    """Runs a host's script in its own mount + network + pid namespace (see the module docstring)."""

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


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"
    )


@dataclass
class Invocation:
    command: Command
    instance_id: str
    instance_name: str
    status: str = "Pending"
    details: str = "Pending"
    response_code: int = -1
    stdout: str = ""
    stderr: str = ""
    started: float | None = None
    ended: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def visible(self) -> bool:
        return time.monotonic() >= self.command.visible_at

    def finish(self, status: str, details: str, code: int, stdout: str = "", stderr: str = "") -> None:
        self.status, self.details, self.response_code = status, details, code
        self.stdout, self.stderr = stdout, stderr
        self.ended = time.time()

    def to_get_result(self) -> dict[str, Any]:
        elapsed = ""
        if self.started is not None:
            elapsed = f"PT{((self.ended or time.time()) - self.started):.3f}S"
        return {
            "CommandId": self.command.command_id,
            "InstanceId": self.instance_id,
            "Comment": self.command.comment,
            "DocumentName": self.command.document_name,
            "DocumentVersion": self.command.document_version,
            "PluginName": PLUGIN_NAME,
            "ResponseCode": self.response_code,
            "ExecutionStartDateTime": _iso(self.started),
            "ExecutionElapsedTime": elapsed,
            "ExecutionEndDateTime": _iso(self.ended),
            "Status": self.status,
            "StatusDetails": self.details,
            "StandardOutputContent": self.stdout[:STDOUT_LIMIT],
            "StandardOutputUrl": "",
            "StandardErrorContent": self.stderr[:STDERR_LIMIT],
            "StandardErrorUrl": "",
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
        }

    def to_list_item(self, details: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "CommandId": self.command.command_id,
            "InstanceId": self.instance_id,
            "InstanceName": self.instance_name,
            "Comment": self.command.comment,
            "DocumentName": self.command.document_name,
            "DocumentVersion": self.command.document_version,
            "RequestedDateTime": self.command.requested,
            "Status": self.status,
            "StatusDetails": self.details,
            "TraceOutput": "",
            "StandardOutputUrl": "",
            "StandardErrorUrl": "",
            "CommandPlugins": [],
            "ServiceRole": "",
            "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
        }
        if details:
            plugin: dict[str, Any] = {
                "Name": PLUGIN_NAME,
                "Status": self.status,
                "StatusDetails": self.details,
                "ResponseCode": self.response_code,
                "Output": _plugin_output(self.stdout, self.stderr),
                "StandardOutputUrl": "",
                "StandardErrorUrl": "",
                "OutputS3Region": self.command.region,
                "OutputS3BucketName": "",
                "OutputS3KeyPrefix": "",
            }
            if self.started is not None:
                plugin["ResponseStartDateTime"] = self.started
            if self.ended is not None:
                plugin["ResponseFinishDateTime"] = self.ended
            item["CommandPlugins"] = [plugin]
        return item


def _plugin_output(stdout: str, stderr: str, capacity: int = PLUGIN_OUTPUT_LIMIT) -> str:
    """The short Output of ListCommandInvocations(Details=True): stdout, then stderr after an ERROR banner."""
    banner = "\n----------ERROR-------\n"
    out_mark, err_mark = "\n---Output truncated---", "\n---Error truncated----"
    text = stdout + (banner + stderr if stderr else "")
    if len(text) <= capacity:
        return text
    if not stderr:
        return stdout[: capacity - len(out_mark)] + out_mark
    if not stdout:
        return banner + stderr[: capacity - len(banner) - len(err_mark)] + err_mark
    half = (capacity - len(banner)) // 2
    out = stdout if len(stdout) <= half else stdout[: half - len(out_mark)] + out_mark
    room = capacity - len(out) - len(banner)
    err = stderr if len(stderr) <= room else stderr[: room - len(err_mark)] + err_mark
    return out + banner + err


@dataclass
class Command:
    command_id: str
    document_name: str
    document_version: str
    comment: str
    parameters: dict[str, list[str]]
    instance_ids: list[str]
    targets: list[dict[str, Any]]
    requested: float
    visible_at: float  # monotonic
    delivery_deadline: float  # monotonic
    timeout_seconds: int
    execution_timeout: float
    max_concurrency: str
    max_errors: str
    region: str
    working_directory: str
    invocations: dict[str, Invocation] = field(default_factory=dict)

    @property
    def script(self) -> str:
        return "\n".join(self.parameters.get("commands", [])) + "\n"

    def status(self) -> tuple[str, str]:
        states = [i.status for i in self.invocations.values()]
        if not states:
            return "Success", "Success"
        if any(s not in TERMINAL for s in states):
            started = any(i.started is not None or i.status in TERMINAL for i in self.invocations.values())
            return ("InProgress", "InProgress") if started else ("Pending", "Pending")
        details = [i.details for i in self.invocations.values()]
        if all(s == "Success" for s in states):
            return "Success", "Success"
        if all(s == "Cancelled" for s in states):
            return "Cancelled", "Cancelled"
        errors = sum(d in ("Failed", "ExecutionTimedOut") for d in details)
        delivery = sum(d == "DeliveryTimedOut" for d in details)
        limit = _max_errors(self.max_errors, len(states))
        if errors > limit:
            return ("Failed", "Failed") if "Failed" in details else ("TimedOut", "ExecutionTimedOut")
        if delivery and delivery + errors == len(states):
            return "TimedOut", "DeliveryTimedOut"
        return "Success", "Incomplete"

    def to_dict(self) -> dict[str, Any]:
        status, details = self.status()
        invocations = list(self.invocations.values())
        return {
            "CommandId": self.command_id,
            "DocumentName": self.document_name,
            "DocumentVersion": self.document_version,
            "Comment": self.comment,
            "ExpiresAfter": self.requested + self.timeout_seconds + self.execution_timeout,
            "Parameters": self.parameters,
            "InstanceIds": self.instance_ids,
            "Targets": self.targets,
            "RequestedDateTime": self.requested,
            "Status": status,
            "StatusDetails": details,
            "OutputS3Region": self.region,
            "OutputS3BucketName": "",
            "OutputS3KeyPrefix": "",
            "MaxConcurrency": self.max_concurrency,
            "MaxErrors": self.max_errors,
            "TargetCount": len(invocations),
            "CompletedCount": sum(i.status in TERMINAL for i in invocations),
            "ErrorCount": sum(i.details in ("Failed", "ExecutionTimedOut") for i in invocations),
            "DeliveryTimedOutCount": sum(i.details == "DeliveryTimedOut" for i in invocations),
            "ServiceRole": "",
            "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
            "TimeoutSeconds": self.timeout_seconds,
            "TriggeredAlarms": [],
        }


def _max_errors(value: str, targets: int) -> int:
    if value.endswith("%"):
        return int(targets * int(value[:-1] or 0) / 100)
    return int(value or 0)


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiError("InvalidNextToken", "The specified token isn't valid.") from exc
    if offset < 0:
        raise ApiError("InvalidNextToken", "The specified token isn't valid.")
    return offset


def _page(
    items: list[Any], params: Mapping[str, Any], default: int, low: int, high: int
) -> tuple[list[Any], str]:
    size = params.get("MaxResults", default)
    if not isinstance(size, int) or not low <= size <= high:
        raise ApiError(
            "ValidationException",
            f"1 validation error detected: Value '{size}' at 'maxResults' failed to satisfy constraint: "
            f"Member must have value between {low} and {high}",
        )
    start = _decode_token(params.get("NextToken"))
    page = items[start : start + size]
    return page, _encode_token(start + size) if start + size < len(items) else ""


class _Agent:
    """One host's SSM agent: a worker thread taking that host's invocations in order, when reachable."""

    def __init__(self, service: SsmService, host: SandboxHost) -> None:
        self.service = service
        self.host = host
        self.queue: list[Invocation] = []
        self.wake = threading.Condition()
        self.stopping = False
        self.current: Invocation | None = None
        self.thread = threading.Thread(
            target=self._loop, name=f"sandbox-ssm-agent-{host.instance_id}", daemon=True
        )
        self.thread.start()

    def submit(self, invocation: Invocation) -> None:
        with self.wake:
            self.queue.append(invocation)
            self.wake.notify()

    def poke(self) -> None:
        with self.wake:
            self.wake.notify()

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            if self.current is not None:
                self.current.cancel.set()
            self.wake.notify()
        self.thread.join(timeout=10)

    def _next(self) -> Invocation | None:
        with self.wake:
            while not self.stopping:
                self.service.expire()
                self.queue = [i for i in self.queue if i.status == "Pending"]
                if self.queue and self.service.registry.reachable(self.host):
                    self.current = self.queue.pop(0)
                    return self.current
                self.wake.wait(timeout=0.05)
            return None

    def _loop(self) -> None:
        while (invocation := self._next()) is not None:
            try:
                self.service.execute(self.host, invocation)
            finally:
                with self.wake:
                    self.current = None


class SsmService:
    """The Run Command API over the sandbox hosts; other SSM calls (parameters...) go to moto as usual."""

    def __init__(
        self,
        registry: HostRegistry,
        runner: NamespaceRunner,
        *,
        invocation_delay: float = 0.2,
        timeout_scale: float = 1.0,
        account_id: str = "123456789012",
    ) -> None:
        self.account_id = account_id
        self.registry = registry
        self.runner = runner
        self.invocation_delay = invocation_delay
        # < 1 shortens delivery/execution timeouts (TimeoutSeconds is at least 30), so tests need not wait
        self.timeout_scale = timeout_scale
        self.registration_delay = 0.0  # seconds before a new cache host's agent is registered (a fault)
        self._commands: dict[str, Command] = {}
        self._order: list[str] = []
        self._lock = threading.RLock()
        self._agents: dict[str, _Agent] = {}

    def install(self, frontend: AwsFrontend) -> None:
        for operation, handler in {
            "SendCommand": self.send_command,
            "GetCommandInvocation": self.get_command_invocation,
            "ListCommandInvocations": self.list_command_invocations,
            "ListCommands": self.list_commands,
            "CancelCommand": self.cancel_command,
            "DescribeInstanceInformation": self.describe_instance_information,
        }.items():
            frontend.on_before("ssm", operation, _json_handler(handler))

    def stop(self) -> None:
        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
        for agent in agents:
            agent.stop()

    def poke(self, instance_id: str | None = None) -> None:
        """Wake agents (an instance started, an agent came back online)."""
        with self._lock:
            agents = [a for i, a in self._agents.items() if instance_id in (None, i)]
        for agent in agents:
            agent.poke()

    def _agent(self, host: SandboxHost) -> _Agent:
        with self._lock:
            if host.instance_id not in self._agents:
                self._agents[host.instance_id] = _Agent(self, host)
            return self._agents[host.instance_id]

    # -- the agent's side -------------------------------------------------------------------------------------------

    def expire(self) -> None:
        """Delivery timeouts, and commands for terminated instances that can never be delivered."""
        now = time.monotonic()
        with self._lock:
            for command in self._commands.values():
                for invocation in command.invocations.values():
                    if invocation.status != "Pending":
                        continue
                    if now >= command.delivery_deadline:
                        invocation.finish("TimedOut", "DeliveryTimedOut", -1)
                    elif self.registry.instance_state(invocation.instance_id) in (None, "terminated"):
                        invocation.finish("Failed", "Undeliverable", -1)

    def execute(self, host: SandboxHost, invocation: Invocation) -> None:
        command = invocation.command
        with self._lock:  # the API may have expired or cancelled it meanwhile
            if invocation.status != "Pending":
                return
            if invocation.cancel.is_set():
                invocation.finish("Cancelled", "Cancelled", -1)
                return
            invocation.status = invocation.details = "InProgress"
            invocation.started = time.time()
        run_dir = host.ssm_dir / command.command_id
        result = self.runner.run(
            host,
            command.script,
            timeout=command.execution_timeout * self.timeout_scale,
            workdir=run_dir,
            cancel=invocation.cancel,
            cwd=command.working_directory or None,
        )
        stderr = result.stderr
        if result.cancelled:
            invocation.finish("Cancelled", "Cancelled", -1, result.stdout, stderr)
        elif result.timed_out or result.exit_code == TIMED_OUT_EXIT:
            invocation.finish("TimedOut", "ExecutionTimedOut", TIMED_OUT_EXIT, result.stdout, stderr)
        elif result.exit_code == 0:
            invocation.finish("Success", "Success", 0, result.stdout, stderr)
        else:
            if stderr and not stderr.endswith("\n"):
                stderr += "\n"
            stderr += f"failed to run commands: exit status {result.exit_code}"
            invocation.finish("Failed", "Failed", result.exit_code, result.stdout, stderr)

    # -- the API ----------------------------------------------------------------------------------------------------

    def _managed(self) -> list[SandboxHost]:
        """Hosts whose agent is registered: DescribeInstanceInformation lists them, SendCommand accepts them."""
        now = time.monotonic()
        return [
            h
            for h in self.registry.all()
            if h.ssm_visible_at <= now
            and self.registry.instance_state(h.instance_id) not in (None, "terminated")
        ]

    def register(self, host: SandboxHost) -> None:
        """A new host's agent registers after ``registration_delay`` (real agents take a while after boot)."""
        host.ssm_visible_at = time.monotonic() + self.registration_delay

    def send_command(self, params: Mapping[str, Any], region: str) -> dict[str, Any]:
        document = str(params.get("DocumentName", ""))
        if document.rsplit("/", 1)[-1] != DOCUMENT:
            raise ApiError(
                "InvalidDocument", f"Document {document} does not exist (the sandbox runs {DOCUMENT})"
            )
        version = str(params.get("DocumentVersion") or "1")
        if version not in ("1", "$DEFAULT", "$LATEST"):
            raise ApiError("InvalidDocumentVersion", f"Document version {version} does not exist")
        parameters = params.get("Parameters") or {}
        unknown = sorted(set(parameters) - {"commands", "executionTimeout", "workingDirectory"})
        commands = parameters.get("commands")
        if unknown or not isinstance(commands, list) or not commands:
            detail = f"unknown parameters {unknown}" if unknown else "commands is required"
            raise ApiError("InvalidParameters", f"Parameters for document {DOCUMENT} are invalid: {detail}")
        execution_timeout = 3600
        if parameters.get("executionTimeout"):
            raw = parameters["executionTimeout"][0]
            if not str(raw).isdigit() or not 1 <= int(raw) <= 172800:
                raise ApiError(
                    "InvalidParameters", "executionTimeout must be an integer between 1 and 172800"
                )
            execution_timeout = int(raw)
        timeout_seconds = params.get("TimeoutSeconds", 3600)
        if not isinstance(timeout_seconds, int) or not 30 <= timeout_seconds <= 2592000:
            raise ApiError(
                "ValidationException",
                f"1 validation error detected: Value '{timeout_seconds}' at 'timeoutSeconds' failed to satisfy "
                "constraint: Member must have value between 30 and 2592000",
            )
        instance_ids = list(params.get("InstanceIds") or [])
        targets = list(params.get("Targets") or [])
        if instance_ids and targets:
            raise ApiError("InvalidParameters", "specify either InstanceIds or Targets, not both")
        if len(set(instance_ids)) != len(instance_ids):
            raise ApiError("DuplicateInstanceId", "Instance Id is duplicated in the request")
        managed = {h.instance_id: h for h in self._managed()}
        if targets:
            chosen = self._resolve_targets(targets, list(managed.values()))
        elif instance_ids:
            bad = [i for i in instance_ids if i not in managed]
            if bad:
                raise ApiError(
                    "InvalidInstanceId",
                    f"Instances [{bad}] not in a valid state for account {self.account_id}",
                )
            chosen = [managed[i] for i in instance_ids]
        else:
            raise ApiError("ValidationException", "either InstanceIds or Targets is required")
        working_directory = (parameters.get("workingDirectory") or [""])[0]
        now, mono = time.time(), time.monotonic()
        command = Command(
            command_id=str(uuid.uuid4()),
            document_name=DOCUMENT,
            document_version=version if version.isdigit() else "1",
            comment=str(params.get("Comment", "")),
            parameters={k: [str(x) for x in v] for k, v in parameters.items()},
            instance_ids=instance_ids,
            targets=targets,
            requested=now,
            visible_at=mono + self.invocation_delay,
            delivery_deadline=mono + timeout_seconds * self.timeout_scale,
            timeout_seconds=timeout_seconds,
            execution_timeout=execution_timeout,
            max_concurrency=str(params.get("MaxConcurrency", "50")),
            max_errors=str(params.get("MaxErrors", "0")),
            region=region,
            working_directory=working_directory,
        )
        for host in chosen:
            command.invocations[host.instance_id] = Invocation(command, host.instance_id, host.hostname)
        with self._lock:
            self._commands[command.command_id] = command
            self._order.append(command.command_id)
        for host in chosen:
            self._agent(host).submit(command.invocations[host.instance_id])
        return {"Command": command.to_dict()}

    def _resolve_targets(
        self, targets: list[dict[str, Any]], managed: list[SandboxHost]
    ) -> list[SandboxHost]:
        chosen = managed
        for target in targets:
            key, values = str(target.get("Key", "")), [str(v) for v in target.get("Values", [])]
            if key == "InstanceIds":
                chosen = [h for h in chosen if h.instance_id in values]
            elif key.startswith("tag:"):
                tag = key[4:]
                chosen = [h for h in chosen if self.registry.instance_tags(h.instance_id).get(tag) in values]
            elif key == "tag-key":
                chosen = [
                    h for h in chosen if any(v in self.registry.instance_tags(h.instance_id) for v in values)
                ]
            else:
                raise ApiError(
                    "InvalidParameters", f"the sandbox supports Targets keys InstanceIds and tag:*, not {key}"
                )
        return chosen

    def _command(self, command_id: str) -> Command | None:
        with self._lock:
            return self._commands.get(command_id)

    def get_command_invocation(self, params: Mapping[str, Any], region: str) -> dict[str, Any]:
        plugin = params.get("PluginName")
        if plugin not in (None, PLUGIN_NAME):
            raise ApiError("InvalidPluginName", "The plugin name isn't valid.")
        command = self._command(str(params.get("CommandId", "")))
        invocation = command.invocations.get(str(params.get("InstanceId", ""))) if command else None
        if invocation is None or not invocation.visible:
            raise ApiError("InvocationDoesNotExist", "")
        self.expire()
        return invocation.to_get_result()

    def _invocations(self, params: Mapping[str, Any]) -> list[Invocation]:
        with self._lock:
            commands = [self._commands[c] for c in reversed(self._order)]
        command_id, instance_id = params.get("CommandId"), params.get("InstanceId")
        if command_id is not None:
            commands = [c for c in commands if c.command_id == command_id]
        found = [
            i
            for c in commands
            for i in c.invocations.values()
            if i.visible and (instance_id is None or i.instance_id == instance_id)
        ]
        return [i for i in found if _matches_filters(i.command, i.status, params.get("Filters") or [])]

    def list_command_invocations(self, params: Mapping[str, Any], region: str) -> dict[str, Any]:
        self.expire()
        page, token = _page(self._invocations(params), params, 50, 1, 50)
        result: dict[str, Any] = {
            "CommandInvocations": [i.to_list_item(bool(params.get("Details"))) for i in page]
        }
        if token:
            result["NextToken"] = token
        return result

    def list_commands(self, params: Mapping[str, Any], region: str) -> dict[str, Any]:
        self.expire()
        with self._lock:
            commands = [self._commands[c] for c in reversed(self._order)]
        if params.get("CommandId") is not None:
            commands = [c for c in commands if c.command_id == params["CommandId"]]
            if not commands:
                raise ApiError("InvalidCommandId", "")
        if params.get("InstanceId") is not None:
            commands = [c for c in commands if params["InstanceId"] in c.invocations]
        commands = [c for c in commands if _matches_filters(c, c.status()[0], params.get("Filters") or [])]
        page, token = _page(commands, params, 50, 1, 50)
        result: dict[str, Any] = {"Commands": [c.to_dict() for c in page]}
        if token:
            result["NextToken"] = token
        return result

    def cancel_command(self, params: Mapping[str, Any], region: str) -> dict[str, Any]:
        command = self._command(str(params.get("CommandId", "")))
        if command is None:
            raise ApiError("InvalidCommandId", "")
        chosen = params.get("InstanceIds") or list(command.invocations)
        for instance_id in chosen:
            invocation = command.invocations.get(instance_id)
            if invocation is None:
                raise ApiError(
                    "InvalidInstanceId", f"Instance {instance_id} is not part of command {command.command_id}"
                )
            if invocation.status == "Pending":
                invocation.cancel.set()
                invocation.finish("Cancelled", "Cancelled", -1)
            elif invocation.status == "InProgress":
                invocation.cancel.set()
        return {}

    def describe_instance_information(self, params: Mapping[str, Any], region: str) -> dict[str, Any]:
        if params.get("Filters") and params.get("InstanceInformationFilterList"):
            raise ApiError(
                "InvalidFilterKey", "use either Filters or InstanceInformationFilterList, not both"
            )
        filters = [
            (str(f.get("Key", "")), [str(v) for v in f.get("Values", [])])
            for f in params.get("Filters") or []
        ]
        filters += [
            (str(f.get("key", "")), [str(v) for v in f.get("valueSet", [])])
            for f in params.get("InstanceInformationFilterList") or []
        ]
        infos = [self._instance_information(h) for h in self._managed()]
        for key, values in filters:
            infos = [i for i in infos if self._info_matches(i, key, values)]
        page, token = _page(infos, params, 50, 5, 50)
        result: dict[str, Any] = {"InstanceInformationList": page}
        if token:
            result["NextToken"] = token
        return result

    def _info_matches(self, info: Mapping[str, Any], key: str, values: list[str]) -> bool:
        fields = {
            "InstanceIds": "InstanceId",
            "PingStatus": "PingStatus",
            "PlatformTypes": "PlatformType",
            "ResourceType": "ResourceType",
            "AgentVersion": "AgentVersion",
            "AssociationStatus": "AssociationStatus",
        }
        if key in fields:
            return str(info.get(fields[key])) in values
        if key.startswith("tag:"):
            return self.registry.instance_tags(str(info["InstanceId"])).get(key[4:]) in values
        if key == "tag-key":
            return any(v in self.registry.instance_tags(str(info["InstanceId"])) for v in values)
        raise ApiError("InvalidFilterKey", f"The filter key {key} isn't valid.")

    def _instance_information(self, host: SandboxHost) -> dict[str, Any]:
        online = self.registry.reachable(host)
        last_ping = time.time() if online else (host.offline_since or host.registered)
        return {
            "InstanceId": host.instance_id,
            "PingStatus": "Online" if online else "ConnectionLost",
            "LastPingDateTime": last_ping,
            "AgentVersion": AGENT_VERSION,
            "IsLatestVersion": False,
            "PlatformType": "Linux",
            "PlatformName": "Ubuntu",
            "PlatformVersion": "24.04",
            "ResourceType": "EC2Instance",
            "IPAddress": host.private_ip,
            "ComputerName": f"{host.hostname}.ec2.internal",
            "AssociationStatus": "Success",
            "LastAssociationExecutionDate": host.registered,
            "LastSuccessfulAssociationExecutionDate": host.registered,
            "RegistrationDate": host.registered,
            "SourceId": host.instance_id,
            "SourceType": "AWS::EC2::Instance",
        }

    def set_online(self, instance_id: str, online: bool) -> None:
        host = self.registry.get(instance_id)
        if host is None:
            raise KeyError(f"{instance_id} is not a sandbox host")
        host.agent_online = online
        host.offline_since = None if online else time.time()
        if online:
            self.poke(instance_id)

    def invocations(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        """Every invocation so far (for tests), newest first, ignoring the visibility delay.

        Each carries everything SSM would keep in its invocation history, untruncated: ``Parameters`` (every
        document parameter as sent), ``Script``, and ``FullStdout`` / ``FullStderr`` as the agent captured
        them. The secrets test asserts over all of it that no config file content ever left a host.
        """
        with self._lock:
            commands = [self._commands[c] for c in reversed(self._order)]
        return [
            {
                **i.to_get_result(),
                "Script": c.script,
                "Parameters": {k: list(v) for k, v in c.parameters.items()},
                "FullStdout": i.stdout,
                "FullStderr": i.stderr,
            }
            for c in commands
            for i in c.invocations.values()
            if instance_id in (None, i.instance_id)
        ]


def _matches_filters(command: Command, status: str, filters: Iterable[Mapping[str, Any]]) -> bool:
    for item in filters:
        key, value = str(item.get("key", "")), str(item.get("value", ""))
        if key == "Status" and status != value:
            return False
        if key == "DocumentName" and command.document_name != value:
            return False
        if key in ("InvokedAfter", "InvokedBefore"):
            try:
                when = dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError as exc:
                raise ApiError("InvalidFilterValue", f"{value} is not an ISO 8601 date") from exc
            if (key == "InvokedAfter" and command.requested < when) or (
                key == "InvokedBefore" and command.requested > when
            ):
                return False
        elif key not in ("Status", "DocumentName", "ExecutionStage"):
            raise ApiError("InvalidFilterKey", f"The filter key {key} isn't valid.")
    return True


def _json_handler(
    handler: Callable[[Mapping[str, Any], str], dict[str, Any]],
) -> Callable[[Request], Response]:
    def hook(request: Request) -> Response:
        return json_response(handler(request.params, request.region))

    return hook
