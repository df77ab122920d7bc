"""Open edX hosts over SSM Run Command, pure: what to read, how to splice, the plan, the apply script, drift.

Roles, one module each: :mod:`.protocol` (bash quoting, the ERC line protocol, limits), :mod:`.read` (the
read scripts and their output), :mod:`.splice` (byte splices), :mod:`.plan` (what a host needs),
:mod:`.apply` (the script that writes, restarts, verifies and rolls back), :mod:`.drift` (the batched
hash check), :mod:`.result` (what a push did, as status). No boto3, no sockets, no subprocesses:
:mod:`edx_remote_cache.adapters.host_push` sends what these render and hands the output back.
"""

from __future__ import annotations

from edx_remote_cache.domain.hosts.apply import (
    ApplyOutcome,
    StepLog,
    backup_timestamp,
    execution_timeout,
    parse_apply_output,
    render_apply_script,
)
from edx_remote_cache.domain.hosts.plan import (
    FileChange,
    HostPlan,
    RestartFor,
    plan_push,
    plan_revert,
)
from edx_remote_cache.domain.hosts.protocol import (
    BACKUP_SUFFIX,
    KEEP_BACKUPS,
    LOCAL_MEMCACHED_UNIT,
    MAX_FILE_BYTES,
    MAX_SCRIPT_CHARS,
    SSM_STDOUT_LIMIT,
    STEP_TIMEOUT_SECONDS,
    SYSTEMCTL,
    PlanError,
    ProtocolError,
    TransferError,
    host_paths,
)
from edx_remote_cache.domain.hosts.read import (
    FileMeta,
    FileRead,
    HostSnapshot,
    ReadHeader,
    ServiceState,
    StreamChunk,
    assemble_snapshot,
    chunk_offsets,
    parse_chunk_output,
    parse_hash_output,
    parse_read_output,
    render_chunk_script,
    render_hash_script,
    render_read_script,
)
from edx_remote_cache.domain.hosts.result import (
    ERROR_STATES,
    HOST_STATES,
    HostPushResult,
    HostState,
    LocalEndpoints,
)
from edx_remote_cache.domain.hosts.splice import (
    Copy,
    Data,
    Segment,
    apply_segments,
    splice_segments,
)

__all__ = [
    "BACKUP_SUFFIX",
    "ERROR_STATES",
    "HOST_STATES",
    "KEEP_BACKUPS",
    "LOCAL_MEMCACHED_UNIT",
    "MAX_FILE_BYTES",
    "MAX_SCRIPT_CHARS",
    "SSM_STDOUT_LIMIT",
    "STEP_TIMEOUT_SECONDS",
    "SYSTEMCTL",
    "ApplyOutcome",
    "Copy",
    "Data",
    "FileChange",
    "FileMeta",
    "FileRead",
    "HostPlan",
    "HostPushResult",
    "HostSnapshot",
    "HostState",
    "LocalEndpoints",
    "PlanError",
    "ProtocolError",
    "ReadHeader",
    "RestartFor",
    "Segment",
    "ServiceState",
    "StepLog",
    "StreamChunk",
    "TransferError",
    "apply_segments",
    "assemble_snapshot",
    "backup_timestamp",
    "chunk_offsets",
    "execution_timeout",
    "host_paths",
    "parse_apply_output",
    "parse_chunk_output",
    "parse_hash_output",
    "parse_read_output",
    "plan_push",
    "plan_revert",
    "render_apply_script",
    "render_chunk_script",
    "render_hash_script",
    "render_read_script",
    "splice_segments",
]
