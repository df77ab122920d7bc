"""AWS for the sandbox: moto's server on 127.0.0.1, behind a WSGI layer that records calls and is as strict as AWS.

Moto is kinder than AWS in ways that would let operator bugs through, so the layer in front of it refuses what
AWS refuses (measured against moto 5.2.5):

* RunInstances ``ClientToken`` is idempotent: a repeat returns the first launch, a changed request with the
  same token is ``IdempotentParameterMismatch`` (moto launches again).
* RunInstances with an AMI that does not exist is ``InvalidAMIID.NotFound`` (moto launches anyway).
* ModifyInstanceAttribute of ``instanceType``/``userData`` needs a stopped instance (``IncorrectInstanceState``).
* DeleteSecurityGroup of a group an instance or another group's rule still uses is ``DependencyViolation``.
* A fault can make new instances invisible to DescribeInstances for a while (EC2's eventual consistency).

Everything is per server, in the WSGI layer: moto's classes are not patched. Each server has its own AWS account
(moto's ``x-moto-account-id`` header, set on every request here), so sandboxes in one process, and ``mock_aws``
users of the default account, never see each other's state.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import boto3
from botocore.config import Config
from moto.core.base_backend import backend_lock
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from edx_remote_cache.domain.spec import DEFAULT_AMI_PARAMETERS

__all__ = [
    "INTERNAL_USER_AGENT",
    "UBUNTU_AMI_ID",
    "UBUNTU_AMI_PARAMETER",
    "UBUNTU_ARM64_AMI_ID",
    "UBUNTU_ARM64_AMI_PARAMETER",
    "ApiError",
    "AwsCall",
    "AwsServer",
    "CallRecorder",
    "Request",
]

_log = logging.getLogger(__name__)
ACCESS_KEY_ID = "sandbox"
SECRET_ACCESS_KEY = "sandbox"
INTERNAL_USER_AGENT = "edx-remote-cache-sandbox-internal"
# Ubuntu 24.04 LTS as Canonical publishes it: one image and one public SSM parameter per architecture.
UBUNTU_AMI_PARAMETER = DEFAULT_AMI_PARAMETERS["x86_64"]
UBUNTU_AMI_ID = "ami-0d2404ab5e1d0f7a3"
UBUNTU_ARM64_AMI_PARAMETER = DEFAULT_AMI_PARAMETERS["arm64"]
UBUNTU_ARM64_AMI_ID = "ami-0a2404ab5e1d0f7a4"
_UBUNTU_IMAGES = (  # (id, parameter, architecture, Canonical's name for the arch)
    (UBUNTU_AMI_ID, UBUNTU_AMI_PARAMETER, "x86_64", "amd64"),
    (UBUNTU_ARM64_AMI_ID, UBUNTU_ARM64_AMI_PARAMETER, "arm64", "arm64"),
)
CANONICAL_OWNER_ID = "099720109477"
_READ_ONLY_PREFIXES = ("Describe", "Get", "List")
_INSTANCE_ID = re.compile(r"<instanceId>(i-[0-9a-f]+)</instanceId>")


class ApiError(Exception):
    """An AWS error response; rendered in the protocol of the service that was called."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class AwsCall:
    """One API call as the sandbox saw it (``params``: EC2 query parameters flattened, or the JSON body)."""

    service: str
    operation: str
    params: Mapping[str, Any]
    region: str | None
    at: float  # time.monotonic() when the call arrived
    status: int
    error_code: str | None
    internal: bool  # made by the sandbox itself (faults, seeding), not by the code under test

    @property
    def mutating(self) -> bool:
        return not self.operation.startswith(_READ_ONLY_PREFIXES)


class CallRecorder:
    """Thread-safe log of API calls, so tests can count what the operator did (sandbox-internal calls excluded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[AwsCall] = []

    def add(self, call: AwsCall) -> None:
        with self._lock:
            self._calls.append(call)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    @staticmethod
    def now() -> float:
        """A timestamp to pass as ``since``/``until`` (same clock as :attr:`AwsCall.at`)."""
        return time.monotonic()

    def calls(
        self,
        operation: str | None = None,
        *,
        service: str | None = None,
        mutating: bool | None = None,
        since: float | None = None,
        until: float | None = None,
        include_internal: bool = False,
    ) -> list[AwsCall]:
        with self._lock:
            found = list(self._calls)
        return [
            c
            for c in found
            if (operation is None or c.operation == operation)
            and (service is None or c.service == service)
            and (mutating is None or c.mutating == mutating)
            and (since is None or c.at >= since)
            and (until is None or c.at < until)
            and (include_internal or not c.internal)
        ]

    def count(self, operation: str | None = None, **filters: Any) -> int:
        return len(self.calls(operation, **filters))


@dataclass
class Request:
    """A parsed API request, as handed to the before/after hooks."""

    service: str
    operation: str
    params: dict[str, Any]
    region: str
    internal: bool
    state: dict[str, Any] = field(default_factory=dict)  # hooks' scratch space for this request
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run after the response, even on error


Response = tuple[int, list[tuple[str, str]], bytes]
BeforeHook = Callable[[Request], Response | None]
AfterHook = Callable[[Request, int, bytes], bytes | None]


def _flatten_query(raw: str) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else v for k, v in parse_qs(raw, keep_blank_values=True).items()}


def _indexed(params: Mapping[str, Any], prefix: str) -> list[str]:
    """``InstanceId.1``, ``InstanceId.2``... in order."""
    values, index = [], 1
    while f"{prefix}.{index}" in params:
        values.append(str(params[f"{prefix}.{index}"]))
        index += 1
    return values


def ec2_error(code: str, message: str, status: int = 400) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{_xml_escape(code)}</Code><Message>{_xml_escape(message)}</Message>"
        f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    return status, [("Content-Type", "text/xml")], body


def json_response(payload: Mapping[str, Any], status: int = 200) -> Response:
    headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", str(uuid.uuid4()))]
    return status, headers, json.dumps(payload, default=str).encode()


def json_error(code: str, message: str, status: int = 400) -> Response:
    status, headers, body = json_response({"__type": code, "message": message}, status)
    return status, [*headers, ("x-amzn-ErrorType", code)], body


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _error_code(status: int, body: bytes) -> str | None:
    if status < 400:
        return None
    match = re.search(rb"<Code>([^<]+)</Code>", body) or re.search(rb'"__type"\s*:\s*"([^"]+)"', body)
    return match.group(1).decode(errors="replace").split("#")[-1] if match else str(status)


class AwsFrontend:
    """WSGI layer in front of moto: parses each call, records it, runs before/after hooks, else passes through."""

    def __init__(
        self, app: Callable[..., Any], recorder: CallRecorder, default_region: str, account_id: str
    ) -> None:
        self.app = app
        self.recorder = recorder
        self.default_region = default_region
        self.account_id = account_id
        self.before: dict[tuple[str, str], list[BeforeHook]] = {}
        self.after: dict[tuple[str, str], list[AfterHook]] = {}
        # moto's backends are not thread-safe (500 concurrent launches once hit "dictionary changed size during
        # iteration" in CreateSecurityGroup): AWS never answers that, so calls into moto take turns
        self._moto_lock = threading.Lock()

    def on_before(self, service: str, operation: str, hook: BeforeHook) -> None:
        self.before.setdefault((service, operation), []).append(hook)

    def on_after(self, service: str, operation: str, hook: AfterHook) -> None:
        self.after.setdefault((service, operation), []).append(hook)

    def _parse(self, environ: dict[str, Any], body: bytes) -> Request | None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        scope = re.search(r"Credential=[^/]+/[0-9]+/([^/]+)/([^/]+)/", auth)
        region = scope.group(1) if scope else self.default_region
        service = scope.group(2) if scope else ""
        internal = INTERNAL_USER_AGENT in environ.get("HTTP_USER_AGENT", "")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            prefix, _, operation = target.partition(".")
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                params = {}
            name = "ssm" if prefix == "AmazonSSM" else (service or prefix.lower())
            return Request(name, operation, params if isinstance(params, dict) else {}, region, internal)
        query = body.decode(errors="replace") if body else environ.get("QUERY_STRING", "")
        params = _flatten_query(query)
        operation = params.get("Action")
        if not isinstance(operation, str):
            return None
        return Request(service or "unknown", operation, params, region, internal)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        arrived = time.monotonic()
        environ["HTTP_X_MOTO_ACCOUNT_ID"] = self.account_id  # this sandbox's own account in moto
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = _Rewound(body)
        request = self._parse(environ, body)
        if request is None:
            return self.app(environ, start_response)
        key = (request.service, request.operation)
        response: Response | None = None
        try:
            for hook in [
                *self.before.get(("*", "*"), []),
                *self.before.get(key, []),
            ]:  # ("*", "*"): every call
                response = hook(request)
                if response is not None:
                    break
            if response is None:
                with self._moto_lock:
                    response = self._call_moto(environ)
                if response[0] < 400:
                    for after in self.after.get(key, []):
                        rewritten = after(request, response[0], response[2])
                        if rewritten is not None:
                            response = (response[0], response[1], rewritten)
        except ApiError as exc:
            render = json_error if request.service == "ssm" else ec2_error
            response = render(exc.code, exc.message, exc.status)
        except Exception as exc:  # a sandbox bug: say so in an AWS-shaped 500 rather than an HTML page
            _log.exception("sandbox hook failed on %s.%s", request.service, request.operation)
            render = json_error if request.service == "ssm" else ec2_error
            response = render("InternalError", f"sandbox error in {request.operation}: {exc!r}", 500)
        finally:
            for cleanup in request.cleanups:
                cleanup()
        status, headers, payload = response
        self.recorder.add(
            AwsCall(
                service=request.service,
                operation=request.operation,
                params=request.params,
                region=request.region,
                at=arrived,
                status=status,
                error_code=_error_code(status, payload),
                internal=request.internal,
            )
        )
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(payload))))
        start_response(f"{status} {_REASONS.get(status, 'Status')}", headers)
        return [payload]

    def _call_moto(self, environ: dict[str, Any]) -> Response:
        captured: dict[str, Any] = {}

        def capture(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        chunks = self.app(environ, capture)
        try:
            payload = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return int(captured["status"].split()[0]), list(captured["headers"]), payload


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}


class _Rewound:
    """A re-readable request body (moto reads it again after we did)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._pos + size
        chunk, self._pos = self._data[self._pos : end], min(end, len(self._data))
        return chunk

    def readline(self, size: int = -1) -> bytes:
        end = self._data.find(b"\n", self._pos)
        end = len(self._data) if end < 0 else end + 1
        if size is not None and size >= 0:
            end = min(end, self._pos + size)
        chunk, self._pos = self._data[self._pos : end], end
        return chunk

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


@dataclass
class _TokenEntry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    fingerprint: str | None = None
    response: bytes | None = None


class Ec2Strictness:
    """The hooks that make moto's EC2 behave like AWS where moto is kinder (see the module docstring)."""

    def __init__(self, server: AwsServer) -> None:
        self.server = server
        self._tokens: dict[tuple[str, str], _TokenEntry] = {}
        self._tokens_lock = threading.Lock()
        self._lock = threading.Lock()
        self.hide_new_for = 0.0  # seconds a newly launched instance stays out of DescribeInstances
        self._visible_at: dict[str, float] = {}

    def install(self, frontend: AwsFrontend) -> None:
        frontend.on_before("ec2", "RunInstances", self._run_instances_before)
        frontend.on_after("ec2", "RunInstances", self._run_instances_after)
        frontend.on_before("ec2", "ModifyInstanceAttribute", self._modify_instance_attribute)
        frontend.on_before("ec2", "DeleteSecurityGroup", self._delete_security_group)
        frontend.on_before("ec2", "DescribeInstances", self._describe_instances_before)
        frontend.on_after("ec2", "DescribeInstances", self._describe_instances_after)

    # -- invisibility ---------------------------------------------------------------------------------------------

    def hide(self, instance_id: str, seconds: float) -> None:
        with self._lock:
            self._visible_at[instance_id] = time.monotonic() + seconds

    def hidden(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            for iid in [i for i, t in self._visible_at.items() if t <= now]:
                del self._visible_at[iid]
            return set(self._visible_at)

    def _describe_instances_before(self, request: Request) -> Response | None:
        if request.internal:
            return None
        asked = _indexed(request.params, "InstanceId")
        missing = [i for i in asked if i in self.hidden()]
        if missing:
            if len(missing) > 1:
                raise ApiError(
                    "InvalidInstanceID.NotFound", f"The instance IDs '{', '.join(missing)}' do not exist"
                )
            raise ApiError("InvalidInstanceID.NotFound", f"The instance ID '{missing[0]}' does not exist")
        return None

    def _describe_instances_after(self, request: Request, status: int, body: bytes) -> bytes | None:
        hidden = set() if request.internal else self.hidden()
        if not hidden or not any(i.encode() in body for i in hidden):
            return None
        root = ET.fromstring(body)
        ns = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""

        def q(tag: str) -> str:
            return f"{{{ns}}}{tag}" if ns else tag

        reservations = root.find(q("reservationSet"))
        for reservation in list(reservations if reservations is not None else []):
            instances = reservation.find(q("instancesSet"))
            if instances is None:
                continue
            for item in list(instances):
                if item.findtext(q("instanceId")) in hidden:
                    instances.remove(item)
            if len(instances) == 0 and reservations is not None:
                reservations.remove(reservation)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True, default_namespace=ns or None)

    # -- RunInstances: AMI exists, ClientToken idempotency ----------------------------------------------------------

    @staticmethod
    def _fingerprint(params: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(sorted(params.items()), default=str).encode()).hexdigest()

    def _run_instances_before(self, request: Request) -> Response | None:
        image_id = request.params.get("ImageId")
        if image_id and image_id not in self.server.ec2_backend(request.region).amis:
            raise ApiError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        token = request.params.get("ClientToken")
        if not token:
            return None
        with self._tokens_lock:
            entry = self._tokens.setdefault((request.region, token), _TokenEntry())
        entry.lock.acquire()  # a concurrent twin waits here until the first launch has answered
        request.cleanups.append(entry.lock.release)
        fingerprint = self._fingerprint(request.params)
        if entry.response is None:  # first use (or the first use failed): launch, and remember the answer
            entry.fingerprint = fingerprint
            request.state["token_entry"] = entry
            return None
        if entry.fingerprint != fingerprint:
            raise ApiError(
                "IdempotentParameterMismatch",
                "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).",
            )
        return 200, [("Content-Type", "text/xml")], entry.response

    def _run_instances_after(self, request: Request, status: int, body: bytes) -> bytes | None:
        entry = request.state.get("token_entry")
        if isinstance(entry, _TokenEntry):
            entry.response = body
        if self.hide_new_for > 0 and not request.internal:
            for iid in _INSTANCE_ID.findall(body.decode(errors="replace")):
                self.hide(iid, self.hide_new_for)
        return None

    # -- state rules ------------------------------------------------------------------------------------------------

    def _modify_instance_attribute(self, request: Request) -> Response | None:
        params = request.params
        attribute = str(params.get("Attribute", ""))
        changes = [a for a in ("InstanceType", "UserData") if f"{a}.Value" in params]
        if attribute in ("instanceType", "userData"):
            changes.append(attribute)
        if not changes:
            return None
        iid = str(params.get("InstanceId", ""))
        instance = self.server.ec2_backend(request.region).get_instance_by_id(iid)
        if instance is not None and instance.state != "stopped":
            raise ApiError("IncorrectInstanceState", f"The instance '{iid}' is not in the 'stopped' state.")
        return None

    def _delete_security_group(self, request: Request) -> Response | None:
        backend = self.server.ec2_backend(request.region)
        group_id = request.params.get("GroupId")
        if not group_id and request.params.get("GroupName"):
            group = backend.get_security_group_by_name_or_id(request.params["GroupName"])
            group_id = group.id if group is not None else None
        if not group_id:
            return None
        for instance in backend.all_instances():
            if instance.state != "terminated" and any(g.id == group_id for g in instance.security_groups):
                raise ApiError("DependencyViolation", f"resource {group_id} has a dependent object")
        for eni in backend.enis.values():
            attached = getattr(eni, "instance", None)
            if attached is not None and attached.state == "terminated":
                continue
            if any(getattr(g, "id", g) == group_id for g in eni.group_set):
                raise ApiError("DependencyViolation", f"resource {group_id} has a dependent object")
        for vpc_groups in backend.groups.values():
            for other in vpc_groups.values():
                if other.id == group_id:
                    continue
                for rule in [*other.ingress_rules, *other.egress_rules]:
                    if (rule.source_group or {}).get("GroupId") == group_id:
                        raise ApiError("DependencyViolation", f"resource {group_id} has a dependent object")
        return None


class _QuietHandler(MotoRequestHandler):
    """Moto's handler without one log line per request (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class _LoopbackMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer with our WSGI layer in front, tracking connections so stop() can close keep-alives."""

    def __init__(self, frontend_factory: Callable[[Any], AwsFrontend]) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self._frontend_factory = frontend_factory
        self.frontend: AwsFrontend | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def _server_entry(self) -> None:
        self.frontend = self._frontend_factory(DomainDispatcherApplication(create_backend_app))
        server = make_server(self._ip_address, self._port, self.frontend, True, request_handler=_QuietHandler)
        accept = server.get_request

        def tracked_accept() -> tuple[socket.socket, Any]:
            conn, address = accept()
            with self._connections_lock:
                self._connections.add(conn)
            return conn, address

        server.get_request = tracked_accept  # type: ignore[method-assign]
        finish = server.shutdown_request

        def untrack(request: Any) -> None:
            with self._connections_lock:
                self._connections.discard(request)
            finish(request)

        server.shutdown_request = untrack  # type: ignore[method-assign]
        self._server = server
        self._server_ready_event.set()
        server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        super().stop()
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._server is not None:
            self._server.server_close()


_BOTO_SESSION: boto3.session.Session | None = None
_BOTO_LOCK = threading.Lock()


def boto_session() -> boto3.session.Session:
    """One boto3 session for all sandbox clients: its loader caches service models (a new one costs ~0.3 s)."""
    global _BOTO_SESSION
    with _BOTO_LOCK:
        if _BOTO_SESSION is None:
            _BOTO_SESSION = boto3.session.Session()
        return _BOTO_SESSION


def _import_moto_ec2() -> None:
    """Import moto's EC2 models, letting its import-time ``Session().get_available_regions(...)`` loop share one
    boto3 session (each fresh session re-parses botocore's endpoint data: ~0.5 s of the import)."""
    import sys

    if "moto.ec2.models" in sys.modules:
        return
    shared, original = boto_session(), boto3.Session

    def session(*args: Any, **kwargs: Any) -> boto3.session.Session:
        return shared if not args and not kwargs else original(*args, **kwargs)

    boto3.Session = session  # type: ignore[assignment,misc]
    try:
        import moto.ec2.models  # noqa: F401
    finally:
        boto3.Session = original  # type: ignore[misc]


def forget_account(account_id: str) -> None:
    """Drop moto's state for one account (moto keeps every account's state process-wide)."""
    _import_moto_ec2()
    from moto.ec2.models import ec2_backends
    from moto.iam.models import iam_backends
    from moto.ssm.models import ssm_backends

    with backend_lock:
        for backends in (ec2_backends, ssm_backends, iam_backends):
            backends.pop(account_id, None)


def new_account_id() -> str:
    """A fresh 12-digit account for one sandbox (MOTO_ACCOUNT_ID, if set, wins: moto reads it first)."""
    return os.environ.get("MOTO_ACCOUNT_ID") or str(random.SystemRandom().randrange(10**11, 10**12))


class AwsServer:
    """Moto on 127.0.0.1 (ephemeral port) with strict EC2, the call recorder and hooks for the rest of the sandbox."""

    def __init__(self, region: str = "us-east-1") -> None:
        self.region = region
        self.account_id = new_account_id()
        self.recorder = CallRecorder()
        self.strict = Ec2Strictness(self)
        self._server: _LoopbackMotoServer | None = None
        self._setup: list[Callable[[AwsFrontend], None]] = [self.strict.install]
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def frontend(self) -> AwsFrontend:
        assert self._server is not None and self._server.frontend is not None, "start() first"
        return self._server.frontend

    def add_setup(self, setup: Callable[[AwsFrontend], None]) -> None:
        """Register hooks (called with the WSGI layer when the server starts)."""
        self._setup.append(setup)

    def _make_frontend(self, app: Any) -> AwsFrontend:
        frontend = AwsFrontend(app, self.recorder, self.region, self.account_id)
        for setup in self._setup:
            setup(frontend)
        return frontend

    def start(self) -> None:
        forget_account(self.account_id)
        self._create_backends()
        server = _LoopbackMotoServer(self._make_frontend)
        server.start()
        self._server = server
        host, self.port = server.get_host_and_port()
        if host != "127.0.0.1":
            server.stop()
            raise RuntimeError(f"moto bound {host}, not loopback; refusing to run")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        with self._clients_lock:
            self._clients.clear()
        forget_account(self.account_id)

    def _create_backends(self) -> None:
        """Create the EC2/SSM backends without moto's ~1300 default AMIs (2 s), and seed Ubuntu 24.04 (both arches)."""
        from moto.ec2.models import ec2_backends
        from moto.ec2.models.amis import Ami
        from moto.ssm.models import Parameter, ssm_backends

        previous = os.environ.get("MOTO_EC2_LOAD_DEFAULT_AMIS")
        os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
        try:
            ec2 = ec2_backends[self.account_id][self.region]
        finally:
            if previous is None:
                os.environ.pop("MOTO_EC2_LOAD_DEFAULT_AMIS", None)
            else:
                os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = previous
        ssm = ssm_backends[self.account_id][self.region]
        for image_id, parameter, architecture, arch in _UBUNTU_IMAGES:
            ec2.amis[image_id] = Ami(
                ec2,
                image_id,
                name=f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-20250610",
                description=f"Canonical, Ubuntu, 24.04, {arch} noble image",
                owner_id=CANONICAL_OWNER_ID,
                public=True,
                virtualization_type="hvm",
                architecture=architecture,
                root_device_type="ebs",
                root_device_name="/dev/sda1",
                hypervisor="xen",
                region_name=self.region,
            )
            if parameter not in ssm._parameters:
                ssm._parameters[parameter].append(
                    Parameter(
                        account_id=self.account_id,
                        name=parameter,
                        value=image_id,
                        parameter_type="String",
                        description=None,
                        allowed_pattern=None,
                        keyid=None,
                        last_modified_date=time_now(),
                        version=1,
                        data_type="text",
                    )
                )

    def ec2_backend(self, region: str | None = None) -> Any:
        from moto.ec2.models import ec2_backends

        return ec2_backends[self.account_id][region or self.region]

    def ec2_backends(self) -> list[Any]:
        """The EC2 backends of the regions used so far (the operator may use another region than ours)."""
        from moto.ec2.models import ec2_backends

        with backend_lock:
            if self.account_id not in ec2_backends:
                return []
            return list(dict.values(ec2_backends[self.account_id]))

    def client(self, service: str, *, internal: bool = False) -> Any:
        """A boto3 client on this server; ``internal`` calls are the sandbox's own (faults), unrecorded by default."""
        key = f"{service}:{internal}"
        with self._clients_lock:
            if key not in self._clients:
                config = Config(
                    user_agent_extra=INTERNAL_USER_AGENT if internal else None,
                    retries={"max_attempts": 1 if internal else 3, "mode": "standard"},
                )
                self._clients[key] = boto_session().client(
                    service,
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=ACCESS_KEY_ID,
                    aws_secret_access_key=SECRET_ACCESS_KEY,
                    config=config,
                )
            return self._clients[key]


def time_now() -> Any:
    from moto.core.utils import utcnow

    return utcnow()


def decode_user_data(value: Any) -> str | None:
    """Moto keeps user-data base64-encoded, as sent."""
    if value is None:
        return None
    try:
        return base64.b64decode(str(value)).decode("utf-8", errors="replace")
    except ValueError:
        return None
