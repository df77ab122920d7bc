"""Commands and invocations as the Run Command API shows them: statuses, truncated output, the plugin
view, and the API's pagination and filters."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edx_remote_cache.sandbox.aws import ApiError

STDOUT_LIMIT = 24_000
STDERR_LIMIT = 8_000
PLUGIN_OUTPUT_LIMIT = 2_500
PLUGIN_NAME = "aws:runShellScript"
DOCUMENT = "AWS-RunShellScript"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}


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
