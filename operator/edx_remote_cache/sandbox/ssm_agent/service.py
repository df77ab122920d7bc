"""The Run Command API over the sandbox hosts (SendCommand and friends), and one agent thread per host that
takes that host's invocations in order while it is reachable."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from edx_remote_cache.sandbox.aws import ApiError, AwsFrontend, Request, Response, json_response
from edx_remote_cache.sandbox.ssm_agent.commands import (
    DOCUMENT,
    PLUGIN_NAME,
    Command,
    Invocation,
    _matches_filters,
    _page,
)
from edx_remote_cache.sandbox.ssm_agent.hosts import (
    TIMED_OUT_EXIT,
    HostRegistry,
    NamespaceRunner,
    SandboxHost,
)

AGENT_VERSION = "3.3.40.0"


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


def _json_handler(
    handler: Callable[[Mapping[str, Any], str], dict[str, Any]],
) -> Callable[[Request], Response]:
    def hook(request: Request) -> Response:
        return json_response(handler(request.params, request.region))

    return hook
