"""The EdxRemoteCache spec as a typed, validated model.

The operator re-validates every spec itself: it must not trust that the CRD installed in the cluster is the
latest one. Every problem becomes one `SpecProblem` naming the field path and the fix, so a bad manifest
surfaces as a Stalled condition (or a `validate` error) that tells the user exactly what to change.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from edx_remote_cache.domain.userdata import (
    ExtraArgError,
    MemcachedSettings,
    memcached_refusals,
    parse_extra_arg,
)

# The cache host runs Ubuntu 24.04 LTS (memcached 1.6.24 from its archive; the user-data, the memcached.conf
# format and the extraArgs allow-list are checked against memcached 1.6). It does not need the Open edX hosts'
# release. Canonical publishes the current AMI per architecture as a public SSM parameter.
UBUNTU_RELEASE = "24.04"
UBUNTU_MEMCACHED_VERSION = "1.6.24-1build3"
_UBUNTU_PARAMETER = "/aws/service/canonical/ubuntu/server/{release}/stable/current/{arch}/hvm/ebs-gp3/ami-id"
DEFAULT_AMI_PARAMETERS = {
    "x86_64": _UBUNTU_PARAMETER.format(release=UBUNTU_RELEASE, arch="amd64"),
    "arm64": _UBUNTU_PARAMETER.format(release=UBUNTU_RELEASE, arch="arm64"),
}
DEFAULT_AMI_PARAMETER = DEFAULT_AMI_PARAMETERS["x86_64"]
# What CRDs before Ubuntu 24.04 filled in as the default; stored objects still carry it, and it is read as "not set"
# (20.04 is out of standard support). It only chooses the AMI of future launches: running hosts are not replaced.
LEGACY_DEFAULT_AMI_PARAMETERS = frozenset(
    {"/aws/service/canonical/ubuntu/server/20.04/stable/current/amd64/hvm/ebs-gp2/ami-id"}
)
# Graviton (arm64) families carry a "g" after the generation: t4g, m7g, c7gn, r8g, x2gd, im4gn, is4gen, g5g; a1 too.
_GRAVITON_FAMILY = re.compile(r"^(a1|[a-z]+[0-9]+[a-z]*g[a-z]*)$")
DEFAULT_CONFIG_FILES = (
    "/edx/etc/lms.yml",
    "/edx/etc/studio.yml",
    "/edx/etc/ecommerce.yml",
    "/edx/etc/insights.yml",
)
DEFAULT_ANSIBLE_VARS_FILES = ("/edx/app/edx_ansible/server-vars.yml",)
# Native (Koa/Lilac) installs run the services under supervisor; restart only what reads the changed file.
DEFAULT_RESTART_COMMANDS: dict[str, tuple[str, ...]] = {
    "/edx/etc/lms.yml": ("/edx/bin/supervisorctl", "restart", "lms", "edxapp_worker:lms_default_1"),
    "/edx/etc/studio.yml": ("/edx/bin/supervisorctl", "restart", "cms", "edxapp_worker:cms_default_1"),
    "/edx/etc/ecommerce.yml": ("/edx/bin/supervisorctl", "restart", "ecommerce"),
    "/edx/etc/insights.yml": ("/edx/bin/supervisorctl", "restart", "insights"),
}

# RAM in MiB of common instance types; unknown types need an explicit memcached.memoryMiB.
INSTANCE_TYPE_RAM_MIB: dict[str, int] = {
    "t2.micro": 1024, "t2.small": 2048, "t2.medium": 4096, "t2.large": 8192, "t2.xlarge": 16384,
    "t3.micro": 1024, "t3.small": 2048, "t3.medium": 4096, "t3.large": 8192, "t3.xlarge": 16384,
    "t3.2xlarge": 32768, "t3a.micro": 1024, "t3a.small": 2048, "t3a.medium": 4096, "t3a.large": 8192,
    "t3a.xlarge": 16384, "t4g.small": 2048, "t4g.medium": 4096, "t4g.large": 8192,
    "m5.large": 8192, "m5.xlarge": 16384, "m5.2xlarge": 32768, "m6i.large": 8192, "m6i.xlarge": 16384,
    "r5.large": 16384, "r5.xlarge": 32768, "r5.2xlarge": 65536, "r6i.large": 16384, "r6i.xlarge": 32768,
    "r6g.large": 16384, "r6g.xlarge": 32768, "c5.large": 4096, "c5.xlarge": 8192,
    "t4g.micro": 1024, "t4g.xlarge": 16384, "m7g.medium": 4096, "m7g.large": 8192, "m7g.xlarge": 16384,
    "r7g.medium": 8192, "r7g.large": 16384, "r7g.xlarge": 32768, "c7g.large": 4096, "c7g.xlarge": 8192,
    "m7i.large": 8192, "m7i.xlarge": 16384, "r7i.large": 16384, "r7i.xlarge": 32768,
}  # fmt: skip
# Leave a quarter of the RAM to Ubuntu 24.04 (about 250 MiB with the SSM agent and snapd), memcached 1.6's
# per-connection buffers and its hash table: on a 1 GiB type that still leaves memcached 768 MiB of items.
MEMORY_SHARE = 0.75


def instance_architecture(instance_type: str) -> str:
    """EC2's architecture name for an instance type: "arm64" for Graviton families, else "x86_64"."""
    return "arm64" if _GRAVITON_FAMILY.match(instance_type.partition(".")[0]) else "x86_64"


def parameter_architecture(parameter: str) -> str | None:
    """The architecture an AMI parameter's path names (Canonical's and Amazon's paths do), or None."""
    parts = set(re.split(r"[/_-]", parameter.lower()))
    if "arm64" in parts:
        return "arm64"
    return "x86_64" if parts & {"amd64", "x86"} else None


_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
_SG_ID = re.compile(r"^sg-[0-9a-f]{8,17}$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
_YAML_PATH = re.compile(r"^/[A-Za-z0-9_./-]+\.ya?ml$")
_COMMAND_WORD = re.compile(r"^[A-Za-z0-9_./:=@%+,-]+$")


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a spec: where (`spec.a.b[0]`) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """A spec that cannot be acted on; carries every problem found, not just the first."""

    def __init__(self, problems: Iterable[SpecProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def _pattern(value: str, pattern: re.Pattern[str], example: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{value!r} is not valid; expected something like {example}")
    return value


def _cidr(value: str) -> str:
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 CIDR ({exc}); write it like 10.0.0.0/16") from None
    return str(network)


def _command_words(words: list[str]) -> list[str]:
    for word in words:
        if not _COMMAND_WORD.match(word):
            raise ValueError(
                f"{word!r} has characters a command word may not contain; commands are argv lists run without "
                "a shell, use letters, digits and _ . / : = @ % + , - only"
            )
    return words


def _extra_arg(value: str) -> str:
    try:
        parse_extra_arg(value)
    except ExtraArgError as exc:
        raise ValueError(str(exc)) from None
    return value


def _yaml_path(value: str) -> str:
    _pattern(value, _YAML_PATH, "/edx/etc/lms.yml")
    if "/../" in value or value.endswith("/.."):
        raise ValueError(f"{value!r}: '..' is not allowed in a path")
    return value


InstanceId = Annotated[str, AfterValidator(lambda v: _pattern(v, _INSTANCE_ID, "i-0123456789abcdef0"))]
SecurityGroupId = Annotated[str, AfterValidator(lambda v: _pattern(v, _SG_ID, "sg-0123456789abcdef0"))]
Cidr = Annotated[str, AfterValidator(_cidr)]
YamlPath = Annotated[str, AfterValidator(_yaml_path)]
CommandWord = Annotated[str, Field(max_length=256), AfterValidator(lambda v: _command_words([v])[0])]
ExtraArg = Annotated[str, AfterValidator(_extra_arg)]
TagValue = Annotated[str, Field(max_length=256)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, validate_default=True
    )


class RootVolume(_Model):
    size_gi_b: int = Field(8, alias="sizeGiB", ge=8, le=16384)
    encrypted: bool = True


class InstanceSpec(_Model):
    instance_type: str = "t3.medium"
    ami: str | None = None
    ami_parameter: str = (
        DEFAULT_AMI_PARAMETER  # when unset, the Ubuntu 24.04 image of the type's architecture
    )
    subnet_id: str
    key_name: str | None = Field(None, max_length=255)
    iam_instance_profile: str | None = Field(None, max_length=2048)
    root_volume: RootVolume = RootVolume()
    tags: dict[str, TagValue] = {}
    replicas: int = Field(1, ge=1, le=16)
    adopt_instance_ids: list[InstanceId] = Field(default_factory=list, max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _default_ami_parameter(cls, data: Any) -> Any:
        """No amiParameter (or the pre-24.04 default): Ubuntu 24.04 for the instance type's architecture."""
        if not isinstance(data, Mapping):
            return data
        given = data.get("amiParameter", data.get("ami_parameter"))
        if given is None or given in LEGACY_DEFAULT_AMI_PARAMETERS:
            itype = data.get("instanceType", data.get("instance_type", "t3.medium"))
            arch = instance_architecture(itype) if isinstance(itype, str) else "x86_64"
            data = {k: v for k, v in data.items() if k not in ("amiParameter", "ami_parameter")}
            data["amiParameter"] = DEFAULT_AMI_PARAMETERS[arch]
        return data

    @field_validator("instance_type")
    @classmethod
    def _type(cls, v: str) -> str:
        return _pattern(v, re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"), "t3.medium")

    @field_validator("ami")
    @classmethod
    def _ami(cls, v: str | None) -> str | None:
        return v if v is None else _pattern(v, _AMI_ID, "ami-0123456789abcdef0")

    @field_validator("subnet_id")
    @classmethod
    def _subnet(cls, v: str) -> str:
        return _pattern(v, _SUBNET_ID, "subnet-0123456789abcdef0")

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key.startswith("aws:") or key.startswith("edx-remote-cache.openedx.org/"):
                raise ValueError(f"tag key {key!r} is reserved (aws:* and edx-remote-cache.openedx.org/*)")
        return v


class MemcachedSpec(_Model):
    port: int = Field(11211, ge=1024, le=65535)
    memory_mi_b: int | None = Field(None, alias="memoryMiB", ge=64, le=1048576)
    max_connections: int = Field(1024, ge=16, le=65536)
    extra_args: list[ExtraArg] = Field(default_factory=list, max_length=16)
    version: str | None = None

    @field_validator("version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        return (
            v if v is None else _pattern(v, re.compile(r"^[0-9][A-Za-z0-9.+~:-]*$"), UBUNTU_MEMCACHED_VERSION)
        )


class NetworkSpec(_Model):
    allow_from_security_groups: list[SecurityGroupId] = Field(default_factory=list, max_length=50)
    allow_from_cidrs: list[Cidr] = Field(default_factory=list, max_length=50)
    ssh_from_cidrs: list[Cidr] = Field(default_factory=list, max_length=50)
    allow_public: bool = False


class RolloutSpec(_Model):
    max_concurrency: int = Field(1, ge=1, le=50)
    max_errors: int = Field(0, ge=0, le=50)


class OpenedxSpec(_Model):
    hosts: list[InstanceId] = Field(default_factory=list, max_length=200)
    host_selector: dict[str, TagValue] = {}
    config_files: list[YamlPath] = Field(default_factory=lambda: list(DEFAULT_CONFIG_FILES), max_length=32)
    ansible_vars_files: list[YamlPath] = Field(
        default_factory=lambda: list(DEFAULT_ANSIBLE_VARS_FILES), max_length=8
    )
    restart_commands: dict[YamlPath, list[CommandWord]] = {}
    verify_command: list[CommandWord] = Field(default_factory=list, max_length=32)
    rollout: RolloutSpec = RolloutSpec()
    disable_local_memcached: bool = False

    def restart_command_for(self, path: str) -> tuple[str, ...]:
        """The argv that reloads whatever reads `path` (spec override, else the native-install default)."""
        if path in self.restart_commands:
            return tuple(self.restart_commands[path])
        return DEFAULT_RESTART_COMMANDS.get(path, ())


class ProbeSpec(_Model):
    interval_seconds: int = Field(5, ge=1, le=3600)
    timeout_seconds: float = Field(1.0, ge=0.05, le=60)
    failure_threshold: int = Field(3, ge=1, le=100)


class HealingSpec(_Model):
    enabled: bool = True
    max_replacements_per_hour: int = Field(2, ge=0, le=60)


class EdxRemoteCacheSpec(_Model):
    region: str
    instance: InstanceSpec
    memcached: MemcachedSpec = MemcachedSpec()
    network: NetworkSpec = NetworkSpec()
    openedx: OpenedxSpec
    probe: ProbeSpec = ProbeSpec()
    healing: HealingSpec = HealingSpec()
    drift_interval_seconds: int = Field(60, ge=5, le=86400)
    deletion_policy: Literal["Delete", "Retain"] = "Delete"
    revert_hosts_on_delete: bool = True
    paused: bool = False

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        return _pattern(v, _REGION, "us-east-1")

    @property
    def memory_mib(self) -> int:
        """memcached -m: explicit, or ~75% of the instance type's RAM (validated to exist)."""
        if self.memcached.memory_mi_b is not None:
            return self.memcached.memory_mi_b
        return int(INSTANCE_TYPE_RAM_MIB[self.instance.instance_type] * MEMORY_SHARE)

    @property
    def memcached_settings(self) -> MemcachedSettings:
        return MemcachedSettings(
            port=self.memcached.port,
            memory_mib=self.memory_mib,
            max_connections=self.memcached.max_connections,
            extra_args=tuple(parse_extra_arg(a) for a in self.memcached.extra_args),
            version=self.memcached.version,
        )


# Fixes for pydantic's error types, so a message says what to do and not only what failed.
_FIXES = {
    "missing": "this field is required; add it",
    "extra_forbidden": "unknown field; check the spelling against `kubectl explain edxremotecache.spec`",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
}


def _path(loc: tuple[int | str, ...]) -> str:
    out = "spec"
    for part in loc:
        if isinstance(part, int) or "/" in part or "." in part:
            out += f"[{part}]"
        elif part not in ("function-after", "[key]"):
            out += f".{part}"
    return out


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "value_error":
        return str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    if kind in ("greater_than_equal", "less_than_equal", "too_long", "too_short"):
        bound = {"greater_than_equal": "at least", "less_than_equal": "at most"}.get(kind)
        if bound:
            limit = error["ctx"]["ge" if kind == "greater_than_equal" else "le"]
            return f"must be {bound} {limit} (got {error['input']!r})"
        return f"{error['msg'].lower()}; shorten the list"
    if kind == "literal_error":
        return f"got {error['input']!r}; {error['msg'].lower()}"
    fix = _FIXES.get(kind)
    return f"{fix} (got {error['input']!r})" if fix and kind != "missing" else fix or error["msg"]


def _cross_field_problems(spec: EdxRemoteCacheSpec) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    if spec.memcached.memory_mi_b is not None or spec.instance.instance_type in INSTANCE_TYPE_RAM_MIB:
        # an unknown instance type is reported below; without it the memory (and -I's bound) is not known
        refusals = memcached_refusals(spec.memcached_settings)
        problems += [SpecProblem("spec.memcached.extraArgs", refusal) for refusal in refusals]
    net = spec.network
    if not net.allow_public:
        for field, cidrs in (("allowFromCidrs", net.allow_from_cidrs), ("sshFromCidrs", net.ssh_from_cidrs)):
            for index, cidr in enumerate(cidrs):
                if cidr.endswith("/0"):
                    problems.append(
                        SpecProblem(
                            f"spec.network.{field}[{index}]",
                            f"{cidr} opens the cache host to the whole internet and memcached has no "
                            "authentication; use your VPC or bastion CIDR, or set spec.network.allowPublic: true",
                        )
                    )
    itype = spec.instance.instance_type
    wanted, named = instance_architecture(itype), parameter_architecture(spec.instance.ami_parameter)
    if spec.instance.ami is None and named is not None and named != wanted:
        problems.append(
            SpecProblem(
                "spec.instance.amiParameter",
                f"names an {named} image but {itype} runs {wanted}; remove amiParameter (the default follows the "
                f"instance type) or use {DEFAULT_AMI_PARAMETERS[wanted]}",
            )
        )
    ram = INSTANCE_TYPE_RAM_MIB.get(itype)
    if ram is None and spec.memcached.memory_mi_b is None:
        problems.append(
            SpecProblem(
                "spec.memcached.memoryMiB",
                f"instance type {itype!r} is not in the operator's RAM table, so memoryMiB cannot be derived; "
                "set spec.memcached.memoryMiB explicitly (about 75% of the type's RAM)",
            )
        )
    if ram is not None and spec.memcached.memory_mi_b is not None and spec.memcached.memory_mi_b > ram:
        problems.append(
            SpecProblem(
                "spec.memcached.memoryMiB",
                f"{spec.memcached.memory_mi_b} MiB is more than the {ram} MiB of RAM of {itype}; use at most "
                f"{int(ram * MEMORY_SHARE)} or a larger instance type",
            )
        )
    if not spec.openedx.hosts and not spec.openedx.host_selector:
        problems.append(
            SpecProblem(
                "spec.openedx.hosts",
                "no Open edX hosts: list their instance ids in spec.openedx.hosts or select them by tag with "
                "spec.openedx.hostSelector",
            )
        )
    adopt = spec.instance.adopt_instance_ids
    if adopt and len(adopt) != spec.instance.replicas:
        problems.append(
            SpecProblem(
                "spec.instance.adoptInstanceIds",
                f"{len(adopt)} instance(s) to adopt but replicas is {spec.instance.replicas}; make them equal",
            )
        )
    if len(set(spec.openedx.hosts)) != len(spec.openedx.hosts):
        problems.append(
            SpecProblem("spec.openedx.hosts", "an instance id is listed twice; list each host once")
        )
    overlap = set(adopt) & set(spec.openedx.hosts)
    if overlap:
        problems.append(
            SpecProblem(
                "spec.instance.adoptInstanceIds",
                f"{sorted(overlap)} are also Open edX hosts; a cache host must be its own instance",
            )
        )
    for path in spec.openedx.restart_commands:
        if path not in spec.openedx.config_files and path not in spec.openedx.ansible_vars_files:
            problems.append(
                SpecProblem(
                    f"spec.openedx.restartCommands[{path}]",
                    "names a file that is not in configFiles; add the file there or remove this entry",
                )
            )
    return problems


def parse_spec(raw: Mapping[str, Any] | None) -> EdxRemoteCacheSpec:
    """Validate a raw `spec` mapping; raise SpecError listing every problem with its path and fix."""
    if not isinstance(raw, Mapping):
        raise SpecError([SpecProblem("spec", "the object has no spec; add one (see examples/minimal.yaml)")])
    try:
        spec = EdxRemoteCacheSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecError(SpecProblem(_path(e["loc"]), _message(e)) for e in exc.errors()) from None
    problems = _cross_field_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def immutable_changes(spec: EdxRemoteCacheSpec, status: Mapping[str, Any]) -> list[str]:
    """The fields AWS cannot change in place that differ from where the object's resources live (its status).

    The CRD refuses these changes too (a CEL transition rule); this covers an apiserver without CEL, a CRD
    applied late, and `kubectl replace --force`-style edits that slip past it.
    """
    changes = []
    region = status.get("region")
    if region and region != spec.region:
        changes.append(f"spec.region {region} -> {spec.region}")
    subnet = status.get("subnetId")
    if subnet and subnet != spec.instance.subnet_id:
        changes.append(f"spec.instance.subnetId {subnet} -> {spec.instance.subnet_id}")
    return changes


def where_it_runs(spec: EdxRemoteCacheSpec, status: Mapping[str, Any]) -> EdxRemoteCacheSpec:
    """``spec`` with the region and subnet the resources were created in (probing, healing and teardown use it)."""
    instance = spec.instance.model_copy(
        update={"subnet_id": status.get("subnetId") or spec.instance.subnet_id}
    )
    return spec.model_copy(update={"region": status.get("region") or spec.region, "instance": instance})
