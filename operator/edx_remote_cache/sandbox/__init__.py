"""The sandbox cloud: AWS (EC2 + SSM), memcached cache hosts, Open edX hosts and a Kubernetes API, with a real
private network (the sandbox VPC, sandbox/network.py).

    with Sandbox() as sb:
        ec2 = sb.client("ec2")                   # or: os.environ.update(sb.env())
        ...                                      # run the operator in sb.network's operator namespace
        sb.faults.kill_memcached(instance_id)

Every EC2 instance gets a network namespace carrying the private IP that EC2 reports, its security groups
enforced as nftables rules; cache hosts run memcached there, and SSM scripts run there. The operator runs in a
namespace of its own outside the VPC. The emulators listen on 127.0.0.1 of this machine and, through socket
bridges, at the same address inside the operator's namespace. No namespace has a default route, so nothing can
leave the machine. Each sandbox has its own AWS account in moto, so several can run in one process. Heavy
imports (moto) happen in :meth:`start`, so importing this package stays cheap.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from edx_remote_cache.sandbox.aws import AwsServer, CallRecorder
    from edx_remote_cache.sandbox.cache_hosts import CacheHost, CacheHostManager
    from edx_remote_cache.sandbox.edx_hosts import SupervisorctlCall
    from edx_remote_cache.sandbox.faults import Faults
    from edx_remote_cache.sandbox.host_tools import ControlServer, Systemctl
    from edx_remote_cache.sandbox.network import SandboxNetwork
    from edx_remote_cache.sandbox.ssm_agent import HostRegistry, NamespaceRunner, SsmService

__all__ = ["Sandbox", "read_env_file"]

_CHECKED_RUNNER = False
INSTANCE_CHANGES = (
    "RunInstances",
    "StartInstances",
    "StopInstances",
    "TerminateInstances",
    "RebootInstances",
)
GROUP_CHANGES = ("RunInstances", "ModifyInstanceAttribute", "ModifyNetworkInterfaceAttribute")
FILTER_CHANGES = (
    "AuthorizeSecurityGroupIngress",
    "RevokeSecurityGroupIngress",
    "ModifyInstanceAttribute",
    "ModifyNetworkInterfaceAttribute",
    "ModifySecurityGroupRules",
    "DeleteSecurityGroup",
)
EDX_HOST_COUNT = 2
VPC_CIDR = "10.0.0.0/16"
SUBNET_CIDR = "10.0.1.0/24"


class Sandbox:
    """Starts and stops the whole sandbox cloud (see the module docstring); a context manager."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        with_kube: bool = True,
        region: str = "us-east-1",
        ssm_invocation_delay: float = 0.2,
        ssm_timeout_scale: float = 1.0,
    ) -> None:
        self.region = region
        self.with_kube = with_kube
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self._ssm_invocation_delay = ssm_invocation_delay
        self._ssm_timeout_scale = ssm_timeout_scale
        self.workdir: Path = Path()
        self.runtime_dir: Path = Path()
        self.network: SandboxNetwork | None = None
        self.kubeconfig_path: Path | None = None
        self.kube: Any = None
        self.aws: AwsServer | None = None
        self.vpc_id = ""
        self.subnet_id = ""
        self.edx_security_group_id = ""
        self.edx_hosts: list[str] = []
        self.roots: dict[str, Path] = {}
        self.faults: Faults | None = None
        self.ssm: SsmService | None = None
        self.cache_manager: CacheHostManager | None = None
        self.systemctl: Systemctl | None = None
        self.registry: HostRegistry | None = None
        self._runner: NamespaceRunner | None = None
        self._control: ControlServer | None = None
        self._created_workdir = False
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        if self._started:
            raise RuntimeError("this Sandbox is already running")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        global _CHECKED_RUNNER
        from edx_remote_cache.sandbox.aws import AwsServer, ConsoleOutputs
        from edx_remote_cache.sandbox.cache_hosts import CacheHostManager, reap_orphans
        from edx_remote_cache.sandbox.faults import Faults
        from edx_remote_cache.sandbox.host_tools import ControlServer, Systemctl
        from edx_remote_cache.sandbox.ssm_agent import (
            HostRegistry,
            NamespaceRunner,
            SandboxSetupError,
            SsmService,
        )

        self._started = True
        self.edx_hosts, self.roots = [], {}
        reap_orphans()
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="edx-remote-cache-sandbox-"))
            self._created_workdir = True
        else:
            self.workdir = self._workdir_arg.resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
        # a short path (unix socket length limit) where memcached, whatever its -u user, can write its port file
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="erc-sbx-"))
        self.runtime_dir.chmod(0o1777)
        hosts_dir = self.workdir / "hosts"
        hosts_dir.mkdir(exist_ok=True)

        if shutil.which("memcached") is None:
            raise SandboxSetupError("the sandbox runs real memcached processes: apt-get install memcached")
        self._runner = NamespaceRunner()
        self._runner.prepare()
        from edx_remote_cache.sandbox.network import SandboxNetwork

        self.network = SandboxNetwork(VPC_CIDR)
        self.network.start()

        aws = self.aws = AwsServer(self.region)
        self.registry = HostRegistry(self._instance_state, self._instance_tags)
        control_socket = self.runtime_dir / "control.sock"
        self.cache_manager = CacheHostManager(
            aws,
            self.registry,
            hosts_dir,
            self.runtime_dir,
            on_host=self._on_cache_host,
        )
        self.systemctl = Systemctl(self.registry, self.cache_manager)
        self._control = ControlServer(control_socket, self.systemctl)
        self._control.start()
        self.ssm = SsmService(
            self.registry,
            self._runner,
            invocation_delay=self._ssm_invocation_delay,
            timeout_scale=self._ssm_timeout_scale,
            account_id=aws.account_id,
        )
        aws.add_setup(self.ssm.install)
        aws.add_setup(self._install_lifecycle_hooks)
        aws.add_setup(ConsoleOutputs(self._console_output).install)
        aws.start()
        self.network.expose_to_operator(aws.port)
        self.faults = Faults(self)

        self._create_network_and_edx_hosts(hosts_dir, control_socket)
        if not _CHECKED_RUNNER:
            self._runner.check(self.registry.get(self.edx_hosts[0]))  # type: ignore[arg-type]
            _CHECKED_RUNNER = True

        if self.with_kube:
            from edx_remote_cache.sandbox.kube import KubeApi

            self.kube = KubeApi()
            self.kube.start()
            self.kubeconfig_path = self.workdir / "kubeconfig"
            self.kube.write_kubeconfig(self.kubeconfig_path)
            self.network.expose_to_operator(int(self.kube.port))
        atexit.register(self.stop)

    def _on_cache_host(self, host: Any) -> None:
        from edx_remote_cache.sandbox.host_tools import write_host_tools

        write_host_tools(host, self.runtime_dir / "control.sock")
        if self.network is not None:
            host.netns = self.network.namespace(host.instance_id)
        if self.ssm is not None:
            self.ssm.register(host)

    def _console_output(self, instance_id: str) -> str | None:
        """GetConsoleOutput's text: a cache host's boot log, "" for another instance, None for an unknown one."""
        caches = self.cache_manager
        text = caches.console_text(instance_id) if caches is not None else None
        if text is not None:
            return text
        return "" if self._instance(instance_id) is not None else None

    def _install_lifecycle_hooks(self, frontend: Any) -> None:
        """After EC2 changes an instance or a security group: reshape the VPC's namespaces and filters, then
        bring the cache hosts' memcached in line (a new instance needs its namespace before memcached starts)."""
        from edx_remote_cache.sandbox.vpc_view import align_eni_groups, observe

        def sync(request: Any, status: int, body: bytes) -> None:
            caches, ssm, network = self.cache_manager, self.ssm, self.network
            if caches is None or ssm is None or network is None:  # tearing down
                return None
            if status < 300 and request.operation in GROUP_CHANGES:
                align_eni_groups(
                    self._aws().ec2_backends(), eni_wins=request.operation != "ModifyInstanceAttribute"
                )
            instances, groups = observe(self._aws().ec2_backends())
            network.sync(instances, groups)
            if request.operation in INSTANCE_CHANGES:
                rebooted: tuple[str, ...] = ()
                if request.operation == "RebootInstances":
                    rebooted = tuple(v for k, v in request.params.items() if k.startswith("InstanceId."))
                caches.sync(rebooted, networked=frozenset(i.instance_id for i in instances))
                ssm.poke()
            return None

        for operation in (*INSTANCE_CHANGES, *FILTER_CHANGES):
            frontend.on_after("ec2", operation, sync)

    def _create_network_and_edx_hosts(self, hosts_dir: Path, control_socket: Path) -> None:
        from edx_remote_cache.sandbox.aws import UBUNTU_AMI_ID
        from edx_remote_cache.sandbox.edx_hosts import EDX_ROLE_TAG, build_root
        from edx_remote_cache.sandbox.host_tools import write_host_tools
        from edx_remote_cache.sandbox.ssm_agent import SandboxHost

        assert self.aws is not None and self.registry is not None
        ec2 = self.aws.client("ec2", internal=True)
        self.vpc_id = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
        self.subnet_id = ec2.create_subnet(
            VpcId=self.vpc_id, CidrBlock=SUBNET_CIDR, AvailabilityZone=f"{self.region}a"
        )["Subnet"]["SubnetId"]
        self.edx_security_group_id = ec2.create_security_group(
            GroupName="openedx-app", Description="Open edX app servers", VpcId=self.vpc_id
        )["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=self.edx_security_group_id,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            ],
        )
        for index in range(1, EDX_HOST_COUNT + 1):
            reservation = ec2.run_instances(
                ImageId=UBUNTU_AMI_ID,
                InstanceType="t3.xlarge",
                MinCount=1,
                MaxCount=1,
                SubnetId=self.subnet_id,
                SecurityGroupIds=[self.edx_security_group_id],
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": [
                            {"Key": "Name", "Value": f"openedx-app-{index}"},
                            {"Key": EDX_ROLE_TAG, "Value": "app"},
                            {"Key": "openedx-release", "Value": "open-release/koa.3"},
                        ],
                    }
                ],
            )
            instance = reservation["Instances"][0]
            host = SandboxHost(
                instance_id=instance["InstanceId"],
                kind="edx",
                private_ip=instance["PrivateIpAddress"],
                region=self.region,
                dir=hosts_dir / instance["InstanceId"],
                netns=self.network.namespace(instance["InstanceId"]) if self.network else None,
            )
            build_root(host)
            write_host_tools(host, control_socket)
            self.registry.add(host)
            self.edx_hosts.append(host.instance_id)
            self.roots[host.instance_id] = host.root

    def stop(self) -> None:
        """Tear everything down: agents, memcached, servers; then the temporary directories. Idempotent."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        errors: list[BaseException] = []

        def attempt(step: Any) -> None:
            try:
                step()
            except Exception as exc:
                errors.append(exc)

        if self.ssm is not None:
            attempt(self.ssm.stop)
        if self.cache_manager is not None:
            attempt(self.cache_manager.close)
        if self._control is not None:
            attempt(self._control.stop)
        if self.network is not None:
            attempt(self.network.stop)
        if self.aws is not None:
            attempt(self.aws.stop)
        if self.kube is not None:
            attempt(self.kube.stop)
        self.ssm = self.cache_manager = self._control = self.aws = self.kube = None  # type: ignore[assignment]
        self.network = None
        if self._started:
            if self.runtime_dir != Path():
                shutil.rmtree(self.runtime_dir, ignore_errors=True)
            if self._created_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False
        if errors:
            raise errors[0]

    # -- where things are ---------------------------------------------------------------------------------------------

    @property
    def aws_endpoint_url(self) -> str:
        return self._aws().endpoint_url

    @property
    def calls(self) -> CallRecorder:
        """Every AWS call the code under test made (operation, params, time, status, error code)."""
        return self._aws().recorder

    @property
    def cache_hosts(self) -> dict[str, CacheHost]:
        """Cache hosts (instances launched with the operator's memcached user-data) by instance id."""
        return dict(self._caches().hosts)

    def cache_host(self, instance_id: str, *, timeout: float = 5.0) -> CacheHost:
        """The cache host for ``instance_id``, waiting up to ``timeout`` for it to boot."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._caches().get(instance_id)
            except KeyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def supervisorctl_calls(self, instance_id: str) -> list[SupervisorctlCall]:
        from edx_remote_cache.sandbox.edx_hosts import supervisorctl_calls

        return supervisorctl_calls(self.roots[instance_id])

    def systemctl_calls(self, instance_id: str) -> list[dict[str, Any]]:
        """Every systemctl call an SSM script made on the host: ``{"time", "args", "rc"}``."""
        import json

        host = self._registry().get(instance_id)
        if host is None:
            raise KeyError(f"{instance_id} is not a sandbox host")
        try:
            lines = (host.dir / "systemctl.log").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines]

    def in_namespace(self, target: str) -> list[str]:
        """The command prefix that runs a program in ``target``'s network namespace (an instance id, or
        ``operator``), as ``edx-remote-cache sandbox exec`` does."""
        from edx_remote_cache.sandbox.netns import nsenter_argv

        return nsenter_argv(self._network().namespace(target))

    def lms_check(
        self, instance_id: str, files: tuple[str, ...] = ("lms.yml", "studio.yml"), *, timeout: float = 60
    ) -> list[dict[str, Any]]:
        """Run "the LMS" (sandbox/lms.py) on Open edX host ``instance_id``: set and get through every memcached
        alias of its current config files, from its namespace; one dict per alias (``ok``, ``error``, ...)."""
        import json
        import subprocess
        import sys

        from edx_remote_cache.sandbox.cache_hosts import OWNER_ENV

        configs = [arg for name in files for arg in ("--config", str(self.roots[instance_id] / "etc" / name))]
        argv = [
            *self.in_namespace(instance_id),
            sys.executable,
            "-m",
            "edx_remote_cache.sandbox.lms",
            "check",
        ]
        env = {**os.environ, OWNER_ENV: str(os.getpid())}
        done = subprocess.run(
            [*argv, *configs], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(
                f"the LMS on {instance_id} did not run ({done.returncode}): {done.stderr[-2000:]}"
            )
        return lines

    def client(self, service: str) -> Any:
        """A boto3 client on the sandbox's AWS (its calls are recorded like the operator's)."""
        return self._aws().client(service)

    def env(self) -> dict[str, str]:
        """What a process needs to use this sandbox (kubectl, boto3, the operator)."""
        from edx_remote_cache import PROBE_SOURCE_ENV
        from edx_remote_cache.sandbox.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY

        env = {
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "SANDBOX_VPC_CIDR": VPC_CIDR,
            "SANDBOX_OPERATOR_IP": self._network().operator_ip,
            "SANDBOX_NETNS_PREFIX": self._network().prefix,
            PROBE_SOURCE_ENV: f"{self._network().operator_ip}/32",
            "SANDBOX_SUBNET_ID": self.subnet_id,
            "SANDBOX_VPC_ID": self.vpc_id,
            "SANDBOX_EDX_HOSTS": ",".join(self.edx_hosts),
            "SANDBOX_EDX_SECURITY_GROUP": self.edx_security_group_id,
            "SANDBOX_ROOTS": ",".join(f"{iid}={path}" for iid, path in self.roots.items()),
        }
        if self.kubeconfig_path is not None:
            env = {"KUBECONFIG": str(self.kubeconfig_path), **env}
        return env

    def write_env_file(self, path: str | os.PathLike[str]) -> Path:
        """Shell ``KEY=VALUE`` lines between ``set -a``/``set +a``, so ``source FILE`` exports them all."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# edx-remote-cache sandbox: `source` this file (set -a exports every variable).", "set -a"]
        lines += [f"{key}={shlex.quote(value)}" for key, value in self.env().items()]
        lines.append("set +a")
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return target

    # -- internals (used by faults) -----------------------------------------------------------------------------------

    def _aws(self) -> AwsServer:
        if self.aws is None:
            raise RuntimeError("the sandbox is not running: start() it first")
        return self.aws

    def _caches(self) -> CacheHostManager:
        if self.cache_manager is None:
            raise RuntimeError("the sandbox is not running: start() it first")
        return self.cache_manager

    def _ssm(self) -> SsmService:
        if self.ssm is None:
            raise RuntimeError("the sandbox is not running: start() it first")
        return self.ssm

    def _network(self) -> SandboxNetwork:
        if self.network is None:
            raise RuntimeError("the sandbox is not running: start() it first")
        return self.network

    def _registry(self) -> HostRegistry:
        if self.registry is None:
            raise RuntimeError("the sandbox is not running: start() it first")
        return self.registry

    def _ec2_internal(self) -> Any:
        return self._aws().client("ec2", internal=True)

    def _instance(self, instance_id: str) -> Any:
        if self.aws is None:
            return None
        for backend in self.aws.ec2_backends():
            instance = backend.get_instance_by_id(instance_id)
            if instance is not None:
                return instance
        return None

    def _instance_state(self, instance_id: str) -> str | None:
        instance = self._instance(instance_id)
        return None if instance is None else str(instance.state)

    def _instance_tags(self, instance_id: str) -> dict[str, str]:
        instance = self._instance(instance_id)
        if instance is None:
            return {}
        return {tag["key"]: tag["value"] for tag in instance.get_tags()}


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a file written by :meth:`Sandbox.write_env_file` (skips comments and ``set`` lines)."""
    env: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#") or line.startswith("set ") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value)
        env[key] = parts[0] if parts else ""
    return env
