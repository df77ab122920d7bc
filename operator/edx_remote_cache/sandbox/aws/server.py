"""Moto's server on 127.0.0.1 with the frontend in front: the account per server, Canonical's Ubuntu images and
their public parameters, and the boto3 clients the sandbox itself uses."""

from __future__ import annotations

import base64
import contextlib
import os
import random
import socket
import threading
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from moto.core.base_backend import backend_lock
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from edx_remote_cache.domain.spec import DEFAULT_AMI_PARAMETERS
from edx_remote_cache.sandbox.aws.frontend import INTERNAL_USER_AGENT, AwsFrontend, CallRecorder
from edx_remote_cache.sandbox.aws.strict_ec2 import Ec2Strictness

ACCESS_KEY_ID = "sandbox"
SECRET_ACCESS_KEY = "sandbox"
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
