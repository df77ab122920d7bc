"""The WSGI layer in front of moto: parses every call, records it (:class:`CallRecorder`), and runs the
before/after hooks that make the sandbox as strict as AWS (:mod:`.strict_ec2`, the SSM service)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

_log = logging.getLogger(__name__)
INTERNAL_USER_AGENT = "edx-remote-cache-sandbox-internal"
_READ_ONLY_PREFIXES = ("Describe", "Get", "List")


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
