"""Open edX hosts over SSM Run Command, pure: what the host reads, the splices, the plan, the apply, drift.

Roles, one module each: :mod:`.protocol` (bash quoting, the ERC line protocol, limits), :mod:`.read` (the
reader script: the host parses its own files and prints only value nodes), :mod:`.hostside` (the program the
host runs, sent after the engine's ``locate.py``), :mod:`.splice` (byte splices), :mod:`.plan` (what a host
needs), :mod:`.apply` (the script that writes, restarts, verifies and rolls back), :mod:`.drift` (the batched
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
    NodeChange,
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
    host_paths,
)
from edx_remote_cache.domain.hosts.read import (
    EDXAPP_PYTHON,
    FileRead,
    HostSnapshot,
    ServiceState,
    host_program,
    parse_read_output,
    render_read_script,
)
from edx_remote_cache.domain.hosts.result import (
    ERROR_STATES,
    HOST_STATES,
    HostPushResult,
    HostState,
    LocalEndpoints,
)
from edx_remote_cache.domain.hosts.splice import Splice, apply_splices

__all__ = [
    "BACKUP_SUFFIX",
    "EDXAPP_PYTHON",
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
    "FileChange",
    "FileRead",
    "HostPlan",
    "HostPushResult",
    "HostSnapshot",
    "HostState",
    "LocalEndpoints",
    "NodeChange",
    "PlanError",
    "ProtocolError",
    "RestartFor",
    "ServiceState",
    "Splice",
    "StepLog",
    "apply_splices",
    "backup_timestamp",
    "execution_timeout",
    "host_paths",
    "host_program",
    "parse_apply_output",
    "parse_read_output",
    "plan_push",
    "plan_revert",
    "render_apply_script",
    "render_read_script",
]
